import { accountLog } from '../engine/index.js';
import type { LogEntry, TaskId } from '../engine/index.js';
import type { Canonical, Piece } from '../schedule/index.js';
import type { AttemptRow, MetricRow, TrialRow } from '../store/index.js';
import type { Study } from '../study/index.js';
import {
  emptyTree,
  forkTrial,
  hasTrial,
  insertTrial,
  treeSteps as treeStepCount,
} from '../tree/index.js';
import type { TrialSpec } from '../tuner/index.js';

/**
 * The savings report of one study, computed from its store alone (pure: the caller reads
 * the store). GPU time has one definition everywhere: share x wall time of every attempt
 * (`accountLog`). The stage-tree run's numbers are measured. The baselines are measured
 * where a trial-based run of the same study is stored beside it, else estimated from the
 * costs the stage-tree run measured, and say which.
 */

/** What a study's store holds, as the report reads it. */
export interface ReportInput {
  readonly study: Study;
  /** The store's whole log (every study's and the executor's entries). */
  readonly log: readonly LogEntry[];
  /** The store's first study (a log of one study names no study on its entries). */
  readonly primary: string;
  readonly finished: boolean;
  /** This study's trials and metrics. */
  readonly trials: readonly TrialRow[];
  readonly metrics: readonly MetricRow[];
  /** Every attempt of the store (the workers' seconds by phase). */
  readonly attempts: readonly AttemptRow[];
  /**
   * A trial-based run of the same study (`stagetree run --baseline trial-based`): each
   * trial alone in its own processes on a whole slot, from step 0. Null when none.
   */
  readonly baseline: { readonly log: readonly LogEntry[]; readonly finished: boolean } | null;
}

export interface TrialReport {
  readonly id: string;
  /** Each hyperparameter's value, or a short form of its schedule (`shortSchedule`). */
  readonly params: Readonly<Record<string, string | number>>;
  readonly status: TrialRow['status'];
  /** Its last reported step (null: none yet), and the metric there. */
  readonly step: number | null;
  readonly metric: number | null;
  readonly best: { readonly step: number; readonly value: number } | null;
  /** Steps it trains when run alone (from 0, or from its fork point). */
  readonly steps: number;
  readonly forkOf: { readonly trial: string; readonly at: number } | null;
}

export interface Baseline {
  readonly gpuHours: number;
  /** Its wall time, where measured. */
  readonly wallSeconds: number | null;
  readonly estimated: boolean;
  /** How the number was obtained, for the reader. */
  readonly how: string;
  /** Where it is measured: what the cost model estimated for it (the model's check). */
  readonly modelGpuHours?: number;
}

/** The costs the stage-tree run measured, per unit (seconds). */
export interface MeasuredCosts {
  /** Training seconds per step (as run, on its share). */
  readonly trainPerStep: number;
  readonly evaluate: number;
  /** Process start-up (until the engine welcomed it) and `init`, per process. */
  readonly start: number;
  readonly init: number;
  /** Engine-side time per task beyond the worker's phases (dispatch, messages). */
  readonly overheadPerTask: number;
  /** The mean GPU share of its tasks. */
  readonly share: number;
  /** Done tasks the means come from. */
  readonly tasks: number;
}

/** The measured costs and the factor that makes the model give the run's measured GPU time. */
export interface CostModel extends MeasuredCosts {
  readonly calibration: number;
}

export interface StudyReport {
  readonly study: string;
  readonly metric: { readonly name: string; readonly mode: 'min' | 'max' };
  readonly finished: boolean;
  readonly best: { readonly trial: string; readonly step: number; readonly value: number } | null;
  readonly trials: readonly TrialReport[];
  readonly stageTree: {
    /** Steps of the tasks credited to this study, re-computations included. */
    readonly stepsTrained: number;
    /** Unique steps of the stages its trials went through (each once). */
    readonly treeSteps: number;
    /** Steps its trials needed that another study's tasks had trained. */
    readonly stepsReused: number;
    readonly gpuHours: number;
    readonly wallSeconds: number;
    readonly tasks: number;
    readonly processStarts: number;
  };
  /** What the trials train when each runs alone: the sum of their steps. */
  readonly trialSteps: number;
  readonly baselines: { readonly trialBased: Baseline; readonly strongest: Baseline };
  /** trialSteps / treeSteps: the savings if steps were all that cost. */
  readonly idealSavings: number;
  /** One GPU per trial's GPU-hours / the stage-tree run's: the headline. */
  readonly savings: number;
  /** The strongest trial-based execution's GPU-hours / the stage-tree run's. */
  readonly savingsVsStrongest: number;
  /**
   * Where the GPU-hours saved against one-GPU-per-trial came from (estimated from the
   * measured costs; `other` is what the estimate does not explain).
   */
  readonly sources: {
    readonly sharedPrefixes: number;
    readonly otherStudies: number;
    readonly processReuse: number;
    readonly packing: number;
    readonly rightSizing: number;
    readonly other: number;
  };
  readonly costs: CostModel;
}

const PHASE_KEYS = ['start', 'init', 'load', 'save', 'train', 'evaluate'] as const;

/** A short, readable form of a canonical schedule: `0.1`, `0.1, 0.01@30`, `cos(0.1→0)@5`. */
export function shortSchedule(c: Canonical): string | number {
  const parts = c.segments.map((s) => {
    const at = s.start === 0 ? '' : `@${s.start}`;
    return `${shortPiece(s.piece)}${at}`;
  });
  const only = c.segments[0];
  if (parts.length === 1 && only && only.piece.f === 'const') return only.piece.v;
  return parts.join(', ');
}

function shortPiece(p: Piece): string {
  switch (p.f) {
    case 'const':
      return String(p.v);
    case 'stair':
      return `${p.init}×${p.factor}/${p.every}`;
    case 'exp':
      return `${p.init}×${p.gamma}^t`;
    case 'cos':
      return `cos(${p.max}→${p.min}/${p.period})`;
    case 'lin':
      return `lin(${p.from}→${p.to}/${p.w})`;
    case 'tri':
      return `tri(${p.low}↔${p.high}/${p.h})`;
  }
}

/** Where each task stands in the log: its steps (a cut task's up to its cut), share, credit. */
interface TaskInfo {
  steps: number;
  end: number;
  readonly share: number;
  readonly credited: string;
  readonly startProcess: boolean;
  stages: readonly { readonly stage: string; readonly start: number; readonly end: number }[];
  done: boolean;
}

function taskInfos(log: readonly LogEntry[], primary: string): Map<TaskId, TaskInfo> {
  const out = new Map<TaskId, TaskInfo>();
  for (const e of log) {
    if (e.kind === 'task') {
      const runs = e.task.runs;
      out.set(e.task.id, {
        steps: runs.reduce((n, r) => n + r.end - r.start, 0),
        end: runs[runs.length - 1]?.end ?? 0,
        share: e.task.share,
        credited: e.studies?.[0] ?? primary,
        startProcess: e.task.startProcess,
        stages: runs.map((r) => ({ stage: r.stage, start: r.start, end: r.end })),
        done: false,
      });
    } else if (e.kind === 'cut') {
      const t = out.get(e.task);
      if (t) {
        t.steps -= t.end - e.step;
        t.end = e.step;
        const last = t.stages[t.stages.length - 1];
        if (last) t.stages = [...t.stages.slice(0, -1), { ...last, stage: e.stage, end: e.step }];
      }
    } else if (e.kind === 'done') {
      const t = out.get(e.task);
      if (t) t.done = true;
    }
  }
  return out;
}

/** The stage-tree run's costs per unit, from its done attempts. */
function measureCosts(
  attempts: readonly AttemptRow[],
  tasks: ReadonlyMap<TaskId, TaskInfo>,
): MeasuredCosts {
  let steps = 0;
  let train = 0;
  let evaluate = 0;
  let starts = 0;
  let start = 0;
  let inits = 0;
  let init = 0;
  let overhead = 0;
  let share = 0;
  let n = 0;
  for (const a of attempts) {
    const t = tasks.get(a.task);
    if (a.outcome !== 'done' || a.endedAt === null || !t) continue;
    n++;
    steps += t.steps;
    share += t.share;
    const s = a.seconds;
    train += s.train ?? 0;
    evaluate += s.evaluate ?? 0;
    if ((s.start ?? 0) > 0) {
      starts++;
      start += s.start ?? 0;
    }
    if ((s.init ?? 0) > 0) {
      inits++;
      init += s.init ?? 0;
    }
    const phases = PHASE_KEYS.reduce((x, k) => x + (k === 'start' ? 0 : (s[k] ?? 0)), 0);
    overhead += Math.max(0, a.endedAt - a.startedAt - phases - (s.start ?? 0));
  }
  return {
    trainPerStep: steps > 0 ? train / steps : 0,
    evaluate: n > 0 ? evaluate / n : 0,
    start: starts > 0 ? start / starts : 0,
    init: inits > 0 ? init / inits : 0,
    overheadPerTask: n > 0 ? overhead / n : 0,
    share: n > 0 ? share / n : 1,
    tasks: n,
  };
}

/**
 * The unique steps of the stage tree of these trials, each to where it got (its last
 * metric, else its demanded step): what the study needs trained once.
 */
function ownTreeSteps(log: readonly LogEntry[], trials: readonly TrialRow[]): number {
  const reach = new Map(trials.map((t) => [t.id, t.lastStep ?? t.until]));
  let tree = emptyTree();
  for (const e of log) {
    const until = e.kind === 'propose' || e.kind === 'fork' ? reach.get(e.trial) : undefined;
    if (until === undefined || until <= 0) continue;
    if (e.kind === 'propose')
      tree = insertTrial(tree, { ...e.spec, id: e.trial, until, reports: [] });
    else if (e.kind === 'fork' && until > e.at && hasTrial(tree, e.source))
      tree = forkTrial(tree, {
        id: e.trial,
        source: e.source,
        at: e.at,
        schedules: e.schedules,
        until,
      });
  }
  return treeStepCount(tree);
}

/** The trial ids' specs (`propose`) and forks of a log. */
function trialSpecs(log: readonly LogEntry[]): Map<string, TrialSpec> {
  const out = new Map<string, TrialSpec>();
  for (const e of log) if (e.kind === 'propose') out.set(e.trial, e.spec);
  return out;
}

const hours = (seconds: number): number => seconds / 3600;
const ratio = (a: number, b: number): number => (b > 0 ? a / b : 1);

/** The report of `input.study`. */
export function buildReport(input: ReportInput): StudyReport {
  const { study, log, primary } = input;
  const name = study.name;
  const mode = study.metric.mode;
  const better = (a: number, b: number): boolean => (mode === 'max' ? a > b : a < b);
  const tasks = taskInfos(log, primary);
  const costs = measureCosts(input.attempts, tasks);

  // The trials: parameters (short forms), status, last and best metrics, steps alone.
  const specs = trialSpecs(log);
  const byTrial = new Map<string, MetricRow[]>();
  for (const m of input.metrics) {
    const list = byTrial.get(m.trial) ?? [];
    list.push(m);
    byTrial.set(m.trial, list);
  }
  const reportsBetween = (from: number, to: number): number => {
    let n = 0;
    for (
      let s = Math.ceil((from + 1) / study.evalEvery) * study.evalEvery;
      s < to;
      s += study.evalEvery
    )
      n++;
    return n + (to > from ? 1 : 0);
  };
  let trialSteps = 0;
  let reports = 0;
  const trials: TrialReport[] = input.trials.map((t) => {
    const spec = specs.get(t.id);
    const params: Record<string, string | number> = {};
    if (spec)
      for (const h of Object.keys(spec.schedules).sort())
        params[h] = shortSchedule(spec.schedules[h] as Canonical);
    const ms = (byTrial.get(t.id) ?? []).sort((a, b) => a.step - b.step);
    const last = ms[ms.length - 1];
    const from = t.forkOf?.at ?? 0;
    const steps = Math.max(0, (t.lastStep ?? t.until) - from);
    trialSteps += steps;
    reports += reportsBetween(from, from + steps);
    return {
      id: t.id,
      params,
      status: t.status,
      step: last?.step ?? null,
      metric: last?.value ?? null,
      best: t.best,
      steps,
      forkOf: t.forkOf,
    };
  });
  let best: StudyReport['best'] = null;
  for (const t of trials)
    if (t.best && (best === null || better(t.best.value, best.value)))
      best = { trial: t.id, step: t.best.step, value: t.best.value };

  // The stage-tree run, measured: GPU time and steps of the tasks credited to the study.
  const account = accountLog(log, { study: name, primary });
  let stepsTrained = 0;
  let processStarts = 0;
  for (const t of tasks.values()) {
    if (t.credited !== name) continue;
    stepsTrained += t.steps;
    if (t.startProcess) processStarts++;
  }
  // Its own stage tree, rebuilt from its trials (each to where it got): unique steps.
  const treeSteps = ownTreeSteps(log, input.trials);
  // Steps of it that its own tasks did not train: another study's, or an earlier run's.
  const own = new Map<string, number>();
  for (const t of tasks.values())
    if (t.done && t.credited === name) for (const s of t.stages) own.set(s.stage, s.end - s.start);
  const ownSteps = [...own.values()].reduce((a, b) => a + b, 0);
  const stepsReused = Math.max(0, treeSteps - ownSteps);

  const stageTreeGpu = account.gpuSeconds;
  const c = costs;
  // The cost model: process starts, training steps and tasks (one per report when trials
  // run alone), each at the stage-tree run's measured cost; calibrated so that it gives
  // the stage-tree run's measured GPU time for what that run did.
  const model = (starts: number, steps: number, taskCount: number): number =>
    starts * (c.start + c.init) +
    steps * c.trainPerStep +
    taskCount * (c.evaluate + c.overheadPerTask);
  const treeModel = model(processStarts, stepsTrained, account.tasks) * c.share;
  const calibration = treeModel > 0 && stageTreeGpu > 0 ? stageTreeGpu / treeModel : 1;
  // One GPU per trial: each trial alone in its own process on a whole GPU.
  const oneGpuPerTrial = model(trials.length, trialSteps, reports) * calibration;
  // The strongest trial-based execution: the same packing and process reuse, no merging.
  const strongest = model(processStarts, trialSteps, reports) * c.share * calibration;
  const estimatedHow =
    `estimated from the stage-tree run's measured costs (${c.trainPerStep.toPrecision(3)} s a step, ` +
    `${c.evaluate.toPrecision(3)} s an evaluation, ${(c.start + c.init).toPrecision(3)} s a process start, ` +
    `${c.overheadPerTask.toPrecision(3)} s of dispatch a task, over ${c.tasks} tasks; calibrated by ` +
    `${calibration.toPrecision(3)} to the run's measured GPU time) for ${trialSteps} trial steps in ${reports} tasks`;
  let trialBased: Baseline;
  if (input.baseline) {
    const b = accountLog(input.baseline.log);
    trialBased = {
      gpuHours: hours(b.gpuSeconds),
      wallSeconds: b.makespanSeconds,
      estimated: false,
      modelGpuHours: hours(oneGpuPerTrial),
      how: `measured: a trial-based run of the same study (each trial alone in its own processes on a whole slot)${input.baseline.finished ? '' : ', not finished'}`,
    };
  } else {
    trialBased = {
      gpuHours: hours(oneGpuPerTrial),
      wallSeconds: null,
      estimated: true,
      how: `one GPU per trial, each in its own process, ${estimatedHow}`,
    };
  }
  const strongestBaseline: Baseline = {
    gpuHours: hours(strongest),
    wallSeconds: null,
    estimated: true,
    how: `the same packing (mean share ${c.share.toPrecision(3)}) and process reuse (${processStarts} process starts), no merging, ${estimatedHow}`,
  };

  // Where the savings against one GPU per trial came from (estimated, in GPU-hours).
  const stepGpu = c.trainPerStep * c.share * calibration;
  const saved = trialBased.gpuHours - hours(stageTreeGpu);
  const sharedPrefixes = hours(Math.max(0, trialSteps - stepsReused - treeSteps) * stepGpu);
  const otherStudies = hours(stepsReused * stepGpu);
  const processReuse = hours(
    Math.max(0, trials.length - processStarts) * (c.start + c.init) * c.share * calibration,
  );
  const packing = hours(oneGpuPerTrial * (1 - c.share));
  const explained = sharedPrefixes + otherStudies + processReuse + packing;

  return {
    study: name,
    metric: { name: study.metric.name, mode },
    finished: input.finished,
    best,
    trials,
    stageTree: {
      stepsTrained,
      treeSteps,
      stepsReused,
      gpuHours: hours(stageTreeGpu),
      wallSeconds: account.makespanSeconds,
      tasks: account.tasks,
      processStarts,
    },
    trialSteps,
    baselines: { trialBased, strongest: strongestBaseline },
    idealSavings: ratio(trialSteps, treeSteps),
    savings: ratio(trialBased.gpuHours, hours(stageTreeGpu)),
    savingsVsStrongest: ratio(strongestBaseline.gpuHours, hours(stageTreeGpu)),
    sources: {
      sharedPrefixes,
      otherStudies,
      processReuse,
      packing,
      rightSizing: 0,
      other: saved - explained,
    },
    costs: { ...costs, calibration },
  };
}
