import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Engine, ExecutionMode } from '../../src/engine/index.js';
import type {
  CheckpointKey,
  Commands,
  StageRun,
  Task,
  TaskId,
  WorkerId,
} from '../../src/engine/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { lookupBy, parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { getStage, getTrial, readyStages, stageValues } from '../../src/tree/index.js';
import type { StageId, TrialId } from '../../src/tree/index.js';
import type { MetricEvent, TrialSpec, Tuner, TunerContext } from '../../src/tuner/types.js';
import { SimPool, engineOptions, simCosts, simulate } from '../../src/workers/sim/index.js';
import { EventHeap } from '../../src/workers/sim/heap.js';
import { AloneRun, stateSignature, valuesOf } from '../support/alone.js';
import type { StepValues } from '../support/alone.js';
import { c, scriptedTuner } from '../support/sim-study.js';

/**
 * Model-based test of the engine and its scheduler (fast-check `fc.commands`). The real
 * system is the engine with simulated workers (`SimPool`, which really runs the sim trainer
 * from the state a task restores and refuses states it does not hold) on a virtual clock,
 * driven by a scripted tuner. The model is the simplest possible reference: every trial
 * trained alone from scratch (`AloneRun`), with the values it must see at each step.
 *
 * Commands are tuner decisions (propose over shared prefixes, extend a paused or running
 * trial, stop, PBT-like fork from a trial's state, each applied at once through the
 * context, or by the tuner at its next metric event, acting on that event's trial, or at
 * its next idle moment), the clock advancing to the next task end, trainer and checkpoint
 * failures, states on which the trainer always fails (retries run out, trials fail), and
 * lost workers. The tuner keeps the study alive at idle moments (an SHA-like promotion of
 * the best paused trial, else a new configuration) until the commands are exhausted; then
 * the study drains and finishes.
 *
 * After every command: GPUs within capacity (per GPU, fractional shares, and the engine's
 * own bookkeeping), engine and pool agree on what runs, no stage covered by two tasks, none
 * run without demand, and no ready stage waits while an idle worker or a new process could
 * take it. At every launch: the share from the stage's values, a stage not yet done. At
 * every metric event: a report step of an active trial, once, with `paused` right and
 * exactly the metric it gets alone. At the end: every active trial got exactly its report
 * steps, a trial failed only after its retries and only through the failing stage, every
 * trial through a state the trainer cannot pass failed, and no trial got a metric after it
 * was stopped or failed. Each check counts how often it ran (`CHECKS`), and the test
 * asserts that every one of them, and every fault path, ran.
 */

const STEPS = 60;
const GPUS = 2;
const WORKERS = 5;
const RETRIES = 2;
const EPS = 1e-9;
/**
 * Keep the scripted tuner from changing the tree in `onMetric` while the engine reports
 * already-trained metrics. `Engine.reportTrained` once walked a path it read before the
 * callback and crashed on a stage a callback split (found by this property; fixed, with
 * the regression test below). True only to reproduce runs made before the fix.
 */
const AVOID_STALE_PATH_BUG: boolean = false;
/** More runs for a one-off deeper check: STAGETREE_MODEL_RUNS=1000. */
const RUNS = Number(process.env.STAGETREE_MODEL_RUNS ?? 100);

function makeStudy(checkpointEvery: number | null): Study {
  return parseStudy({
    name: 'model',
    params: { model: 'resnet20' },
    space: { lr: 0.1, batchSize: 128 },
    steps: STEPS,
    tuner: { kind: 'grid' },
    metric: { name: 'accuracy', mode: 'max' },
    trainer: {
      kind: 'sim',
      stepSeconds: 1,
      startSeconds: 3,
      saveSeconds: 0.5,
      loadSeconds: 0.25,
      stepScale: { by: 'batchSize', values: { '64': 0.6, '256': 1.7 }, default: 1 },
    },
    // Shares by hyperparameter: a quarter, a half or a whole GPU.
    resources: {
      gpus: { by: 'batchSize', values: { '64': 0.25, '128': 0.5 }, default: 1 },
      cluster: GPUS,
    },
    workers: WORKERS,
    retries: RETRIES,
    ...(checkpointEvery === null ? {} : { checkpointEvery }),
  });
}
const STUDIES = [makeStudy(null), makeStudy(20)] as const;

/** Learning rates that agree on long prefixes, so trials merge and split. */
const LRS: readonly Canonical[] = [
  0.1,
  { kind: 'piecewise', values: [0.1, 0.01], boundaries: [20] },
  { kind: 'piecewise', values: [0.1, 0.01], boundaries: [30] },
  { kind: 'piecewise', values: [0.1, 0.05, 0.01], boundaries: [20, 40] },
  { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [40] },
  { kind: 'step', init: 0.1, factor: 0.5, every: 25 },
  0.2,
].map(c);
/** Batch sizes (GPU shares 0.5, 0.25, 1, and 0.25 then 0.5 from step 30). */
const BATCHES: readonly Canonical[] = [
  128,
  64,
  256,
  { kind: 'piecewise', values: [64, 128], boundaries: [30] },
].map(c);
/** What a fork continues with (PBT's explore). */
const FORK_LRS: readonly Canonical[] = [0.05, 0.02, 0.12, 0.1].map(c);
const FORK_BATCHES = [null, 64, 256] as const;

// ------------------------------------------------------------------ commands

/** When a tuner decision is taken: at once (from outside), or by the tuner in a callback. */
type Via = 'now' | 'metric' | 'idle';

interface ProposeOp {
  readonly kind: 'propose';
  readonly lr: number;
  readonly bs: number;
  readonly seed: number;
  readonly until: number;
  readonly reports: readonly number[];
  /**
   * Propose again the configuration of an earlier trial (picked by this number; null: a
   * new one from the pools), with its report steps below `until`: a tuner that re-runs a
   * configuration from scratch (a Hyperband bracket) gets the metrics already trained.
   */
  readonly like: number | null;
}
interface ExtendOp {
  readonly kind: 'extend';
  readonly k: number;
  readonly more: number;
  readonly mid: boolean;
  /** Prefer a paused trial (an SHA rung) over a running one. */
  readonly resume: boolean;
}
interface StopOp {
  readonly kind: 'stop';
  readonly k: number;
}
interface ForkOp {
  readonly kind: 'fork';
  readonly k: number;
  /** Picks the fork step: one of the source's report steps, or any step up to its until. */
  readonly at: number;
  readonly lr: number;
  readonly bs: number;
  readonly len: number;
  readonly mid: boolean;
  /** PBT: the fork replaces another member, which is stopped (null: none). */
  readonly replace: number | null;
}
type Decision = ProposeOp | ExtendOp | StopOp | ForkOp;
type Op =
  | (Decision & { readonly via: Via })
  | { readonly kind: 'advance' }
  | { readonly kind: 'fail'; readonly k: number; readonly reason: 'trainer' | 'checkpoint' }
  | { readonly kind: 'poison'; readonly k: number }
  | { readonly kind: 'lose'; readonly k: number; readonly busy: boolean };

/** One executed command and whether it changed anything (set later for queued decisions). */
interface Rec {
  readonly kind: string;
  effective: boolean;
}

// ------------------------------------------------------------------ counters

/**
 * Every check counts how often it was evaluated, over every run of the property (the test
 * asserts at the end that each ran often enough to mean something).
 */
const CHECKS = {
  /** The study goes on until the commands are exhausted (the tuner keeps it alive). */
  alive: 0,
  /** Engine and pool agree on the running tasks. */
  agree: 0,
  /** Per GPU: the running tasks' shares sum to at most 1. */
  capacity: 0,
  /** Per GPU: the engine's own account of its use equals the running tasks' shares. */
  bookkeeping: 0,
  oneTaskPerWorker: 0,
  workers: 0,
  busyFlag: 0,
  /** No stage covered by two running tasks. */
  exclusive: 0,
  /** No task runs a stage nobody demands. */
  demand: 0,
  /** Per ready stage left waiting: no idle worker and no new process could take it. */
  conservation: 0,
  /** A launched task trains a demanded stage that is not done. */
  launchStage: 0,
  launchRestore: 0,
  /** A launched task's GPU share is the one its values ask for. */
  launchShare: 0,
  launchWorker: 0,
  /** No checkpoint that failed to load is loaded again before it is saved anew. */
  corruptCheckpoint: 0,
  cancelRunning: 0,
  retire: 0,
  trialIds: 0,
  /** A metric goes to an active trial, at one of its report steps, once. */
  metricActive: 0,
  metricStep: 0,
  paused: 0,
  /** A metric equals the trial's metric trained alone from scratch. */
  equivalence: 0,
  /** A trial fails only after its retries, and only if it passes through the failing stage. */
  failedLegit: 0,
  /** Once a stage's retries are spent, every active trial through it fails at once. */
  failStage: 0,
  /** At the end: the study drained and finished. */
  drained: 0,
  /** At the end: the tuner saw every logged metric, none after its trial stopped or failed. */
  silentAfterEnd: 0,
  /** At the end: trialFailed exactly for the trials the tuner was told failed, once each. */
  failedLogged: 0,
  until: 0,
  /** At the end: an active trial got exactly its report steps. */
  reportSets: 0,
  /** At the end: every trial through a state the trainer cannot reach failed. */
  poisonedFailed: 0,
};
type CheckName = keyof typeof CHECKS;

function check(name: CheckName, ok: boolean, message: () => string): void {
  CHECKS[name]++;
  if (!ok) throw new Error(`${name}: ${message()}`);
}

/** Paths the commands aim at, counted where they are taken. */
const PATHS = {
  proposals: 0,
  /** Proposals of an earlier trial's configuration. */
  repeats: 0,
  extensions: 0,
  /** Extensions of a paused trial (an SHA rung). */
  resumes: 0,
  stops: 0,
  forks: 0,
  /** Metrics of forked trials (checked for equivalence like the others). */
  forkMetrics: 0,
  metricDecisions: 0,
  idleDecisions: 0,
  keepAlivePromotions: 0,
  keepAliveProposals: 0,
  /** Metrics given at no cost: stages another trial trained (`reportTrained`). */
  alreadyTrained: 0,
  fractionalTasks: 0,
  sharedGpu: 0,
  cancels: 0,
  trainerFailures: 0,
  checkpointFailures: 0,
  poisoned: 0,
  poisonFailures: 0,
  /** Tasks for a state whose training failed before. */
  retried: 0,
  trialsFailed: 0,
  lostBusy: 0,
  lostIdle: 0,
  /** Stages re-computed because their end state was lost. */
  recomputed: 0,
  checkpointRestores: 0,
};
type PathName = keyof typeof PATHS;

function count(name: PathName): void {
  PATHS[name]++;
}

/**
 * The least each check and path must run in 100 runs of the property: about a third of
 * what 100 runs give on average (a quarter for the rarest), measured over 1,000 runs.
 */
const CHECK_LEAST: Readonly<Record<CheckName, number>> = {
  alive: 1000,
  agree: 1000,
  capacity: 2000,
  bookkeeping: 2000,
  oneTaskPerWorker: 2000,
  workers: 1000,
  busyFlag: 2000,
  exclusive: 2000,
  demand: 2000,
  conservation: 250,
  launchStage: 600,
  launchRestore: 600,
  launchShare: 600,
  launchWorker: 600,
  corruptCheckpoint: 150,
  cancelRunning: 20,
  retire: 800,
  trialIds: 250,
  metricActive: 500,
  metricStep: 500,
  paused: 500,
  equivalence: 500,
  failedLegit: 25,
  failStage: 25,
  drained: 100,
  silentAfterEnd: 500,
  failedLogged: 100,
  until: 250,
  reportSets: 150,
  poisonedFailed: 25,
};
const PATH_LEAST: Readonly<Record<PathName, number>> = {
  proposals: 80,
  repeats: 80,
  extensions: 100,
  resumes: 70,
  stops: 90,
  forks: 90,
  forkMetrics: 150,
  metricDecisions: 80,
  idleDecisions: 80,
  keepAlivePromotions: 25,
  keepAliveProposals: 10,
  alreadyTrained: 80,
  fractionalTasks: 500,
  sharedGpu: 400,
  cancels: 20,
  trainerFailures: 50,
  checkpointFailures: 12,
  poisoned: 15,
  poisonFailures: 45,
  retried: 100,
  trialsFailed: 25,
  lostBusy: 45,
  lostIdle: 3,
  recomputed: 230,
  checkpointRestores: 150,
};

/** Commands executed, and those that changed nothing, by kind. */
const COMMANDS = { runs: 0, executed: 0, noop: 0, noopByKind: {} as Record<string, number> };

// ------------------------------------------------------------------ the system

interface ModelTrial {
  readonly id: TrialId;
  readonly params: Readonly<Record<string, unknown>>;
  readonly valuesAt: (step: number) => StepValues;
  readonly alone: AloneRun;
  /** The trial's state signature at each step it was asked about (`stateSignature`). */
  readonly sigs: Map<number, string>;
  readonly forked: boolean;
  until: number;
  readonly reports: Set<number>;
  readonly got: Map<number, number>;
  status: 'active' | 'stopped' | 'failed';
}

interface Live {
  readonly task: Task;
  readonly metric: number;
}

interface Queued {
  readonly op: Decision;
  readonly rec: Rec;
}

const pick = <T>(xs: readonly T[], k: number): T | undefined =>
  xs.length === 0 ? undefined : xs[k % xs.length];

const byId = (a: { id: string }, b: { id: string }): number =>
  Number(a.id.slice(1)) - Number(b.id.slice(1));

/** Memoises a trial's values per step (they never change: extensions keep the schedules). */
function memo(f: (step: number) => StepValues): (step: number) => StepValues {
  const cache: StepValues[] = [];
  return (step) => (cache[step] ??= f(step));
}

function runValues(run: StageRun): (step: number) => StepValues {
  return (step) => valuesOf(run.schedules, step);
}

/**
 * The engine, its pool and clock, the tuner (this class: it is the engine's tuner), and
 * the model: every trial with the values it trains with, its until, its report steps, the
 * metrics it got and its status.
 */
class System implements Tuner {
  readonly engine: Engine;
  readonly pool: SimPool;
  readonly heap = new EventHeap<TaskId>();
  readonly live = new Map<TaskId, Live>();
  readonly trials = new Map<TrialId, ModelTrial>();
  readonly records: Rec[] = [];
  private readonly gpuOf = new Map<WorkerId, number>();
  private readonly lost = new Set<WorkerId>();
  private readonly metricQueue: Queued[] = [];
  private readonly idleQueue: Queued[] = [];
  /** States the trainer always fails to reach (a divergence at that step, say). */
  private readonly poisoned: { readonly sig: string; readonly end: number }[] = [];
  /** Every run of every completed task (the states they passed through exist). */
  private readonly trained: StageRun[] = [];
  /** Checkpoints that failed to load, not saved again since. */
  private readonly corrupt = new Set<CheckpointKey>();
  /** States whose training failed (a later task for one is a retry). */
  private readonly failed = new Set<CheckpointKey>();
  /** Failures and lost workers per stage, counted the way the engine counts them. */
  private readonly stageFailures = new Map<StageId, number>();
  private readonly stageLosses = new Map<StageId, number>();
  /** The failure being reported to the engine: a trial may fail only inside one. */
  private fault: {
    readonly what: string;
    readonly n: number;
    readonly limit: number;
    readonly sig: string;
    readonly end: number;
  } | null = null;
  /** While a task completes: its end step and the trials its stage reports to. */
  private completing: { readonly step: number; readonly trials: Set<TrialId> } | null = null;
  private exhausted = false;
  private now = 0;
  private metricEvents = 0;
  private idleStreak = 0;
  private lastStagesRun = -1;
  private fallbacks = 0;

  constructor(
    readonly study: Study,
    private readonly initial: readonly ProposeOp[],
  ) {
    this.engine = new Engine(study, this, engineOptions(study, ExecutionMode.stageTree));
    this.pool = new SimPool(simCosts(study), study.metric.mode);
  }

  private get ctx(): TunerContext {
    return this.engine.context;
  }

  // ---------------------------------------------------------------- the tuner

  start(): void {
    for (const p of this.initial) this.propose(p);
  }

  onMetric(_ctx: TunerContext, e: MetricEvent): void {
    this.metricEvents++;
    const t = this.trials.get(e.trial);
    if (!t) throw new Error(`metric for unknown trial ${e.trial}`);
    const where = `${e.trial}@${e.step}`;
    check('metricActive', t.status === 'active', () => `metric for a ${t.status} trial (${where})`);
    check('metricStep', t.reports.has(e.step) && !t.got.has(e.step), () =>
      t.got.has(e.step) ? `metric given twice (${where})` : `metric at no report step (${where})`,
    );
    check(
      'paused',
      e.paused === (e.step === t.until),
      () => `paused flag (${where}, until ${t.until})`,
    );
    const alone = t.alone.metricAt(e.step);
    check(
      'equivalence',
      e.value === alone,
      () => `equivalence: ${where} got ${e.value}, trained alone ${alone}`,
    );
    if (t.forked) count('forkMetrics');
    const direct = this.completing?.step === e.step && this.completing.trials.has(e.trial);
    if (!direct) count('alreadyTrained');
    t.got.set(e.step, e.value);
    const q = this.metricQueue[0];
    // Known engine bug (see 'reportTrained and a tuner that splits stages' below): while
    // the engine gives already-trained metrics, a decision that changes the tree crashes
    // it. Until it is fixed, such decisions wait for a metric from a completed stage.
    const deferred = AVOID_STALE_PATH_BUG && !direct && q !== undefined && q.op.kind !== 'stop';
    if (q && !deferred) {
      this.metricQueue.shift();
      count('metricDecisions');
      this.runQueued(q, e);
    }
  }

  onIdle(ctx: TunerContext): void {
    const before = this.engine.log.length;
    for (const q of this.idleQueue.splice(0)) {
      count('idleDecisions');
      this.runQueued(q, null);
    }
    if (this.engine.log.length > before) return;
    if (this.exhausted) {
      ctx.finish();
      return;
    }
    this.keepAlive();
  }

  onTrialFailed(_ctx: TunerContext, trial: TrialId): void {
    const t = this.trials.get(trial);
    if (!t) throw new Error(`unknown trial ${trial} failed`);
    const f = this.fault;
    check(
      'failedLegit',
      f !== null && t.status === 'active' && f.n > f.limit && passesThrough(t, f.sig, f.end),
      () =>
        f === null
          ? `${trial} failed outside a failure`
          : `${trial} (${t.status}) failed after ${f.n} ${f.what} of a stage ending at ${f.end} (limit ${f.limit}; passes through it: ${passesThrough(t, f.sig, f.end)})`,
    );
    t.status = 'failed';
    count('trialsFailed');
  }

  /** At an idle moment before the end: promote the best paused trial, else propose. */
  private keepAlive(): void {
    const ran = this.engine.stats.stagesRun;
    this.idleStreak = ran === this.lastStagesRun ? this.idleStreak + 1 : 0;
    this.lastStagesRun = ran;
    if (this.idleStreak < 3) {
      const paused = [...this.trials.values()]
        .filter((t) => t.status === 'active' && t.until < STEPS && t.got.has(t.until))
        .sort((a, b) => (b.got.get(b.until) ?? 0) - (a.got.get(a.until) ?? 0) || byId(a, b));
      const best = paused[0];
      if (best) {
        count('keepAlivePromotions');
        this.extend(best, best.until, false);
        return;
      }
    }
    // A new configuration; a fresh seed (a new merge key, so surely new work) once
    // proposals keep finding everything trained already.
    const i = this.fallbacks++;
    count('keepAliveProposals');
    this.propose({
      kind: 'propose',
      lr: i % LRS.length,
      bs: i % 3 === 2 ? 1 : 0,
      seed: this.idleStreak < 3 ? i % 2 : 100 + i,
      until: 20 + (i % 3) * 10,
      reports: [10, 20],
      like: null,
    });
  }

  // ---------------------------------------------------------------- decisions

  private addTrial(
    id: TrialId,
    params: Readonly<Record<string, unknown>>,
    valuesAt: (step: number) => StepValues,
    until: number,
    reports: readonly number[],
    forked: boolean,
  ): void {
    check('trialIds', !this.trials.has(id), () => `trial id ${id} given twice`);
    const values = memo(valuesAt);
    this.trials.set(id, {
      id,
      params,
      valuesAt: values,
      alone: new AloneRun(params, values, this.study.metric.mode),
      sigs: new Map(),
      forked,
      until,
      reports: new Set([...reports, until]),
      got: new Map(),
      status: 'active',
    });
  }

  private propose(p: ProposeOp): void {
    const like = p.like === null ? undefined : pick([...this.trials.values()], p.like);
    const below = (xs: Iterable<number>): number[] =>
      [...new Set(xs)].filter((r) => r < p.until).sort((a, b) => a - b);
    const spec: TrialSpec = like
      ? {
          // The engine's canonical schedules of that trial (a fork's are spliced); the
          // model keeps the values it computed for it on its own.
          params: like.params,
          schedules: getTrial(this.engine.stageTree, like.id).schedules,
          until: p.until,
          reports: below([...like.reports, ...p.reports]),
        }
      : {
          params: { model: 'resnet20', seed: p.seed },
          schedules: { lr: LRS[p.lr] as Canonical, batchSize: BATCHES[p.bs] as Canonical },
          until: p.until,
          reports: below(p.reports),
        };
    const id = this.ctx.propose(spec);
    const schedules = spec.schedules;
    this.addTrial(
      id,
      spec.params,
      like ? like.valuesAt : (t) => valuesOf(schedules, t),
      spec.until,
      spec.reports ?? [],
      false,
    );
    count(like ? 'repeats' : 'proposals');
  }

  private extend(t: ModelTrial, more: number, mid: boolean): void {
    const from = t.until;
    const until = Math.min(STEPS, from + Math.max(1, more));
    if (t.status !== 'active' || until <= from) return;
    const half = from + Math.floor((until - from) / 2);
    const reports = mid && half > from && half < until ? [half] : [];
    if (t.got.has(from)) count('resumes');
    t.until = until;
    for (const r of [...reports, until]) t.reports.add(r);
    this.ctx.extend(t.id, until, reports);
    count('extensions');
  }

  private stop(t: ModelTrial): void {
    if (t.status !== 'active') return;
    t.status = 'stopped';
    this.ctx.stop(t.id);
    count('stops');
  }

  private fork(source: ModelTrial, atStep: number, op: ForkOp): void {
    const at = Math.min(atStep, source.until, STEPS - 1);
    const until = Math.min(STEPS, at + op.len);
    if (until <= at) return;
    const lr = FORK_LRS[op.lr] as Canonical;
    const bsValue = FORK_BATCHES[op.bs % FORK_BATCHES.length] ?? null;
    const replacement: Record<string, Canonical> = { lr };
    if (bsValue !== null) replacement.batchSize = c(bsValue);
    const half = at + Math.floor((until - at) / 2);
    const reports = op.mid && half > at && half < until ? [half] : [];
    const id = this.ctx.fork(source.id, at, replacement, until, reports);
    // Alone: the source's values before the fork step, the replacement's from there on.
    const after = (t: number): StepValues => ({
      ...source.valuesAt(t),
      ...valuesOf(replacement, t),
    });
    this.addTrial(
      id,
      source.params,
      (t) => (t < at ? source.valuesAt(t) : after(t)),
      until,
      reports,
      true,
    );
    count('forks');
  }

  /** Takes a decision; `e` is the metric event it reacts to (null: at once or at idle). */
  private decide(op: Decision, e: MetricEvent | null): void {
    const all = [...this.trials.values()];
    const active = all.filter((t) => t.status === 'active');
    const subject = e === null ? undefined : this.trials.get(e.trial);
    switch (op.kind) {
      case 'propose':
        this.propose(op);
        return;
      case 'extend': {
        const open = active.filter((t) => t.until < STEPS);
        const paused = open.filter((t) => t.got.has(t.until));
        const t = subject ?? pick(op.resume && paused.length > 0 ? paused : open, op.k);
        if (t) this.extend(t, op.more, op.mid);
        return;
      }
      case 'stop': {
        const t = subject ?? pick(active, op.k);
        if (t) this.stop(t);
        return;
      }
      case 'fork': {
        // PBT: the source is the trial that just reported, forked at that step; otherwise
        // any trial (a stopped one too) at one of its report steps or any step.
        let source = subject;
        let at = e?.step ?? 0;
        if (!source) {
          source = pick(
            all.filter((t) => t.status !== 'failed'),
            op.k,
          );
          if (!source) return;
          const until = source.until;
          const steps = [...source.reports].filter((r) => r <= until).sort((a, b) => a - b);
          at = op.at < steps.length * 2 ? (pick(steps, op.at) ?? 0) : op.at % (until + 1);
        }
        this.fork(source, at, op);
        if (op.replace !== null) {
          const from = source;
          const loser = pick(
            active.filter((t) => t !== from),
            op.replace,
          );
          if (loser) this.stop(loser);
        }
        return;
      }
    }
  }

  private runQueued(q: Queued, e: MetricEvent | null): void {
    const before = this.engine.log.length;
    this.decide(q.op, e);
    q.rec.effective = this.engine.log.length > before;
  }

  // ---------------------------------------------------------------- commands

  exec(op: Op): void {
    const rec: Rec = { kind: op.kind === 'fail' ? `fail-${op.reason}` : op.kind, effective: false };
    this.records.push(rec);
    const before = this.engine.log.length;
    switch (op.kind) {
      case 'advance':
        this.advance();
        break;
      case 'fail':
        this.fail(op.k, op.reason);
        break;
      case 'poison':
        rec.effective = this.poison(op.k);
        return;
      case 'lose':
        this.lose(op.k, op.busy);
        break;
      case 'propose':
      case 'extend':
      case 'stop':
      case 'fork':
        if (op.via === 'now') {
          this.decide(op, null);
          this.apply(this.engine.poke(this.now));
        } else {
          (op.via === 'metric' ? this.metricQueue : this.idleQueue).push({ op, rec });
          return;
        }
    }
    rec.effective = this.engine.log.length > before;
  }

  /** The next task end (a completion, or a failure where the trainer cannot go on). */
  advance(): boolean {
    for (let ev = this.heap.pop(); ev; ev = this.heap.pop()) {
      const l = this.live.get(ev.value);
      if (!l) continue; // cancelled, failed or lost
      this.live.delete(ev.value);
      this.now = ev.t;
      const task = l.task;
      if (this.poisonHit(task)) {
        this.pool.cancel(task.id);
        count('poisonFailures');
        this.reportFailure(task, 'trainer', 'diverged');
      } else {
        this.pool.finish(task.id);
        if (task.saveAfter !== null) this.corrupt.delete(task.saveAfter);
        this.trained.push(...task.runs);
        // The trials the engine reports to from the completed stage itself (every other
        // metric in this call is one already trained, from `reportTrained`).
        const run = lastRun(task);
        const sig = stateSignature(run.params, runValues(run), run.end);
        const direct = [...this.trials.values()].filter(
          (t) => t.status === 'active' && t.reports.has(run.end) && passesThrough(t, sig, run.end),
        );
        this.completing = { step: run.end, trials: new Set(direct.map((t) => t.id)) };
        this.apply(this.engine.complete(this.now, task.id, { metric: l.metric }));
        this.completing = null;
      }
      return true;
    }
    return false;
  }

  private running(): Live[] {
    return [...this.live.values()].sort((a, b) => a.task.id - b.task.id);
  }

  private fail(k: number, wanted: 'trainer' | 'checkpoint'): void {
    const running = this.running();
    const loading = running.filter((l) => l.task.restore.from === 'checkpoint');
    const reason = wanted === 'checkpoint' && loading.length > 0 ? 'checkpoint' : 'trainer';
    const l = pick(reason === 'checkpoint' ? loading : running, k);
    if (!l) return;
    this.live.delete(l.task.id);
    this.pool.cancel(l.task.id);
    if (reason === 'checkpoint' && l.task.restore.from === 'checkpoint') {
      // The file is corrupt: the engine must not load it again before saving it anew.
      this.corrupt.add(l.task.restore.key);
      count('checkpointFailures');
    } else {
      count('trainerFailures');
    }
    this.reportFailure(l.task, reason, `injected ${reason} failure`);
  }

  private reportFailure(task: Task, reason: 'trainer' | 'checkpoint', message: string): void {
    // A checkpoint that failed to load is re-computed, not counted against the stage.
    const counted = !(reason === 'checkpoint' && task.restore.from === 'checkpoint');
    if (counted) this.failed.add(task.endKey);
    this.reportFault(task, 'failures', counted, () =>
      this.engine.taskFailed(this.now, task.id, { message, reason }),
    );
  }

  /**
   * Tells the engine that a task failed or lost its worker, and checks the retry rule: the
   * engine counts failures (and lost workers) per stage, the one the task ends with now
   * (a checkpoint that failed to load is not counted); when a counted failure brings the
   * count past `retries` (`retries + 3` for lost workers), every active trial through that
   * stage fails at once, and no trial fails otherwise (`onTrialFailed`).
   */
  private reportFault(
    task: Task,
    what: 'failures' | 'lost workers',
    counted: boolean,
    call: () => Commands,
  ): void {
    const stage = this.engine.inspect().running.find((r) => r.task.id === task.id)?.stage;
    if (stage === undefined) throw new Error(`task ${task.id} is not running in the engine`);
    const counts = what === 'failures' ? this.stageFailures : this.stageLosses;
    const n = (counts.get(stage) ?? 0) + (counted ? 1 : 0);
    counts.set(stage, n);
    const limit = what === 'failures' ? RETRIES : RETRIES + 3;
    const run = lastRun(task);
    const sig = stateSignature(run.params, runValues(run), run.end);
    const through = [...this.trials.values()].filter(
      (t) => t.status === 'active' && passesThrough(t, sig, run.end),
    );
    // Only a counted failure can fail trials.
    this.fault = { what, n: counted ? n : 0, limit, sig, end: run.end };
    this.apply(call());
    this.fault = null;
    if (!counted || n <= limit) return;
    for (const t of through) {
      check(
        'failStage',
        t.status === 'failed',
        () =>
          `${t.id} passes through a stage that failed ${n} times (limit ${limit}) but is ${t.status}`,
      );
    }
  }

  /** The trainer will always fail to reach the end state of a running task. */
  private poison(k: number): boolean {
    const l = pick(this.running(), k);
    if (!l) return false;
    const run = lastRun(l.task);
    const sig = stateSignature(run.params, runValues(run), run.end);
    if (this.poisoned.some((p) => p.sig === sig)) return false;
    // Only a state nobody reached yet (a trainer that failed there could not have).
    const reached = this.trained.some(
      (r) =>
        r.start < run.end &&
        run.end <= r.end &&
        stateSignature(r.params, runValues(r), run.end) === sig,
    );
    if (reached) return false;
    this.poisoned.push({ sig, end: run.end });
    count('poisoned');
    return true;
  }

  private poisonHit(task: Task): boolean {
    return task.runs.some((r) =>
      this.poisoned.some(
        (p) =>
          r.start < p.end &&
          p.end <= r.end &&
          stateSignature(r.params, runValues(r), p.end) === p.sig,
      ),
    );
  }

  private lose(k: number, preferBusy: boolean): void {
    const workers = [...this.engine.inspect().workers].sort(byId);
    const busy = workers.filter((w) => w.busy);
    const w = pick(preferBusy && busy.length > 0 ? busy : workers, k);
    if (!w) return;
    this.lost.add(w.id);
    const l = this.running().find((x) => x.task.worker === w.id);
    const lost = (): Commands => this.engine.workerLost(this.now, w.id, 'injected loss');
    if (l) {
      this.live.delete(l.task.id);
      this.pool.cancel(l.task.id);
      count('lostBusy');
      this.reportFault(l.task, 'lost workers', true, lost);
    } else {
      count('lostIdle');
      this.apply(lost());
    }
  }

  /** Carries out the engine's commands on the pool, checking every new task. */
  apply(cmds: Commands): void {
    check(
      'retire',
      cmds.retire.length === 0,
      () => `stage-tree mode retired ${cmds.retire.join()}`,
    );
    // Cancels first (they free their GPU share before new tasks start); a cancel of a
    // task that starts in the same batch, after it.
    const starting = new Set(cmds.start.map((t) => t.id));
    const later: TaskId[] = [];
    for (const id of cmds.cancel) {
      check(
        'cancelRunning',
        this.live.has(id) || starting.has(id),
        () => `cancel of task ${id}, which is not running`,
      );
      if (!this.live.has(id)) {
        later.push(id);
        continue;
      }
      this.live.delete(id);
      this.pool.cancel(id);
      count('cancels');
    }
    for (const task of cmds.start) {
      this.checkLaunch(task);
      if (task.restore.from === 'checkpoint') {
        count('checkpointRestores');
        const key = task.restore.key;
        check(
          'corruptCheckpoint',
          !this.corrupt.has(key),
          () =>
            `task ${task.id} loads checkpoint ${key}, which failed to load and was not saved since`,
        );
      }
      if (task.saveFirst !== null) this.corrupt.delete(task.saveFirst);
      const out = this.pool.execute(task);
      this.live.set(task.id, { task, metric: out.result.metric });
      this.heap.push(this.now + out.duration, task.id);
    }
    for (const id of later) {
      this.live.delete(id);
      this.pool.cancel(id);
      count('cancels');
    }
  }

  private checkLaunch(task: Task): void {
    const tree = this.engine.stageTree;
    const last = lastRun(task);
    const stage = getStage(tree, last.stage);
    check(
      'launchStage',
      !stage.done && stage.refs > 0,
      () => `task ${task.id} trains stage ${stage.id}, done ${stage.done}, refs ${stage.refs}`,
    );
    for (let i = 1; i < task.runs.length; i++) count('recomputed');
    const first = task.runs[0] as StageRun;
    check(
      'launchRestore',
      (task.restore.from === 'init') === (first.start === 0),
      () => `task ${task.id} restores ${task.restore.from} to train from step ${first.start}`,
    );
    const share = lookupBy(this.study.resources.gpus, valuesOf(last.schedules, last.start));
    check(
      'launchShare',
      task.share === share,
      () => `task ${task.id} takes a GPU share of ${task.share}, its values ask for ${share}`,
    );
    if (share < 1) count('fractionalTasks');
    const gpu = this.gpuOf.get(task.worker);
    check(
      'launchWorker',
      !this.lost.has(task.worker) && (task.startProcess ? gpu === undefined : gpu === task.gpu),
      () =>
        `task ${task.id} on worker ${task.worker} (GPU ${task.gpu}, known on ${gpu}, new process ${task.startProcess}, lost ${this.lost.has(task.worker)})`,
    );
    if (task.startProcess) this.gpuOf.set(task.worker, task.gpu);
    if (this.failed.has(task.endKey)) count('retried');
  }

  // ---------------------------------------------------------------- invariants

  checkInvariants(): void {
    const view = this.engine.inspect();
    const tree = this.engine.stageTree;
    check(
      'alive',
      this.exhausted || !this.engine.done,
      () => 'the study ended before the commands',
    );
    const ids = view.running.map((r) => r.task.id).sort((a, b) => a - b);
    const pooled = this.running().map((l) => l.task.id);
    check(
      'agree',
      ids.join() === pooled.join(),
      () => `the engine runs tasks ${ids.join()}, the pool ${pooled.join()}`,
    );

    // Capacity: per GPU, fractional shares; and the engine's own account of it.
    const used = Array.from({ length: GPUS }, () => 0);
    const tasksOn = Array.from({ length: GPUS }, () => 0);
    const busyWorkers = new Set<WorkerId>();
    for (const r of view.running) {
      used[r.task.gpu] = (used[r.task.gpu] ?? 0) + r.task.share;
      tasksOn[r.task.gpu] = (tasksOn[r.task.gpu] ?? 0) + 1;
      check(
        'oneTaskPerWorker',
        !busyWorkers.has(r.task.worker),
        () => `worker ${r.task.worker} runs two tasks`,
      );
      busyWorkers.add(r.task.worker);
    }
    for (let g = 0; g < GPUS; g++) {
      const u = used[g] ?? 0;
      check('capacity', u <= 1 + EPS, () => `GPU ${g} over capacity: ${u}`);
      const booked = view.gpuUsed[g] ?? 0;
      check(
        'bookkeeping',
        Math.abs(booked - u) < EPS,
        () => `GPU ${g}: the engine counts ${booked} in use, the running tasks ${u}`,
      );
      if ((tasksOn[g] ?? 0) > 1) count('sharedGpu');
    }
    check('workers', view.workers.length <= WORKERS, () => `${view.workers.length} workers`);
    for (const w of view.workers) {
      check('busyFlag', w.busy === busyWorkers.has(w.id), () => `worker ${w.id} busy flag`);
    }

    // No stage covered by two running tasks (a task still covers the pieces a new trial
    // split off its stage), and none running without demand. Re-computed ancestors (a
    // task's earlier runs) are not part of this: two tasks may re-compute one lost state
    // at once, a waste the engine does not avoid today, not a wrong result.
    const covered = new Map<StageId, TaskId>();
    for (const r of view.running) {
      const refs = getStage(tree, r.stage).refs;
      check(
        'demand',
        refs > 0,
        () => `task ${r.task.id} runs stage ${r.stage}, which nobody demands`,
      );
      const start = lastRun(r.task).start;
      for (let id = r.stage; ;) {
        const st = getStage(tree, id);
        if (st.parent === null || st.start < start) break;
        const other = covered.get(id);
        check(
          'exclusive',
          other === undefined,
          () => `stage ${id} runs in tasks ${other} and ${r.task.id}`,
        );
        covered.set(id, r.task.id);
        id = st.parent;
      }
    }

    // Work conservation: a ready stage waits only when no idle worker's GPU and no new
    // process (within the worker budget, on a GPU with room) could take it.
    if (!this.engine.done) {
      const idle = view.workers.filter((w) => !w.busy);
      for (const s of readyStages(tree)) {
        if (covered.has(s.id)) continue;
        const share = lookupBy(this.study.resources.gpus, stageValues(tree, s.id));
        const fitsIdle = idle.some(
          (w) => (used[this.gpuOf.get(w.id) ?? -1] ?? 2) + share <= 1 + EPS,
        );
        const fitsNew = view.workers.length < WORKERS && used.some((u) => u + share <= 1 + EPS);
        check(
          'conservation',
          !fitsIdle && !fitsNew,
          () =>
            `work conservation: ready stage ${s.id} (share ${share}) waits; GPUs use ${used.join(', ')}, ${idle.length} idle of ${view.workers.length} workers`,
        );
      }
    }
  }

  // ---------------------------------------------------------------- the end

  /** No more commands: drain, let the tuner finish, and check what every trial got. */
  finish(): void {
    this.exhausted = true;
    while (this.advance()) this.checkInvariants();
    check('drained', this.engine.done && this.live.size === 0, () => 'the study did not finish');

    const ended = new Set<TrialId>();
    const failedLogged: TrialId[] = [];
    let metrics = 0;
    for (const e of this.engine.log) {
      if (e.kind === 'metric') {
        metrics++;
        check('silentAfterEnd', !ended.has(e.trial), () => `metric for ${e.trial} after its end`);
      } else if (e.kind === 'stop') {
        ended.add(e.trial);
      } else if (e.kind === 'trialFailed') {
        failedLogged.push(e.trial);
      }
    }
    check(
      'silentAfterEnd',
      metrics === this.metricEvents,
      () => `${metrics} metrics logged, ${this.metricEvents} given to the tuner`,
    );
    const failed = [...this.trials.values()].filter((t) => t.status === 'failed').map((t) => t.id);
    const engineFailed = [...this.engine.trialFailures.keys()];
    check(
      'failedLogged',
      [failedLogged, engineFailed].every((xs) => xs.sort().join() === failed.sort().join()),
      () =>
        `trialFailed for ${failedLogged.join()}; the engine lists ${engineFailed.join()}; the tuner was told ${failed.join()}`,
    );

    const tree = this.engine.stageTree;
    for (const t of this.trials.values()) {
      const until = getTrial(tree, t.id).until;
      check('until', until === t.until, () => `${t.id}: until ${until}, asked for ${t.until}`);
      if (t.status === 'active') {
        const got = [...t.got.keys()].sort((a, b) => a - b).join();
        const want = [...t.reports].sort((a, b) => a - b).join();
        check('reportSets', got === want, () => `${t.id} got metrics at [${got}], wants [${want}]`);
      }
      if (t.status === 'stopped') continue;
      for (const p of this.poisoned) {
        if (!passesThrough(t, p.sig, p.end)) continue;
        check(
          'poisonedFailed',
          t.status === 'failed',
          () =>
            `${t.id} passes through a state the trainer never reaches (step ${p.end}) but is ${t.status}`,
        );
      }
    }
  }

  tally(): void {
    COMMANDS.runs++;
    for (const r of this.records) {
      COMMANDS.executed++;
      if (r.effective) continue;
      COMMANDS.noop++;
      COMMANDS.noopByKind[r.kind] = (COMMANDS.noopByKind[r.kind] ?? 0) + 1;
    }
  }
}

function lastRun(task: Task): StageRun {
  const r = task.runs[task.runs.length - 1];
  if (!r) throw new Error(`task ${task.id} has no runs`);
  return r;
}

/** Whether trial `t` passes through the state at `end` with signature `sig` (`stateSignature`). */
function passesThrough(t: ModelTrial, sig: string, end: number): boolean {
  if (t.until < end) return false;
  let own = t.sigs.get(end);
  if (own === undefined) {
    own = stateSignature(t.params, t.valuesAt, end);
    t.sigs.set(end, own);
  }
  return own === sig;
}

// ------------------------------------------------------------------ arbitraries

/** Steps, mostly round ones (where other trials report too: stages already trained). */
const roundStep = (min: number, max: number): fc.Arbitrary<number> =>
  fc.oneof(
    {
      weight: 3,
      arbitrary: fc.constantFrom(10, 20, 30, 40, 60).filter((x) => x >= min && x <= max),
    },
    { weight: 1, arbitrary: fc.integer({ min, max }) },
  );

const reportsArb = fc
  .uniqueArray(roundStep(1, STEPS - 1), { maxLength: 2 })
  .map((xs) => [...xs].sort((a, b) => a - b));

const proposeArb: fc.Arbitrary<ProposeOp> = fc.record({
  kind: fc.constant('propose' as const),
  lr: fc.nat({ max: LRS.length - 1 }),
  bs: fc.constantFrom(0, 0, 0, 1, 2, 3),
  seed: fc.constantFrom(0, 0, 0, 1),
  until: roundStep(5, STEPS),
  reports: reportsArb,
  like: fc.option(fc.nat(), { freq: 3 }),
});

const extendArb: fc.Arbitrary<ExtendOp> = fc.record({
  kind: fc.constant('extend' as const),
  k: fc.nat(),
  more: fc.oneof(fc.constantFrom(10, 20), fc.integer({ min: 1, max: 30 })),
  mid: fc.boolean(),
  resume: fc.boolean(),
});

const stopArb: fc.Arbitrary<StopOp> = fc.record({
  kind: fc.constant('stop' as const),
  k: fc.nat(),
});

const forkArb: fc.Arbitrary<ForkOp> = fc.record({
  kind: fc.constant('fork' as const),
  k: fc.nat(),
  at: fc.nat({ max: 11 }),
  lr: fc.nat({ max: FORK_LRS.length - 1 }),
  bs: fc.nat({ max: FORK_BATCHES.length - 1 }),
  len: fc.integer({ min: 5, max: 30 }),
  mid: fc.boolean(),
  replace: fc.option(fc.nat(), { freq: 2 }),
});

const via: fc.Arbitrary<Via> = fc.constantFrom('now', 'now', 'metric', 'idle');

class Step implements fc.Command<System, System> {
  constructor(readonly op: Op) {}
  check = (): boolean => true;
  run(_m: System, s: System): void {
    s.exec(this.op);
    s.checkInvariants();
  }
  toString = (): string => JSON.stringify(this.op);
}

const decision = (arb: fc.Arbitrary<Decision>): fc.Arbitrary<Op> =>
  fc.tuple(arb, via).map(([d, v]) => ({ ...d, via: v }));

const commandArb: fc.Arbitrary<Step> = fc
  .oneof(
    { weight: 34, arbitrary: fc.constant<Op>({ kind: 'advance' }) },
    { weight: 12, arbitrary: decision(proposeArb) },
    { weight: 12, arbitrary: decision(extendArb) },
    { weight: 6, arbitrary: decision(stopArb) },
    { weight: 12, arbitrary: decision(forkArb) },
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant('fail' as const),
        k: fc.nat(),
        reason: fc.constantFrom('trainer' as const, 'checkpoint' as const),
      }),
    },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('poison' as const), k: fc.nat() }) },
    {
      weight: 6,
      arbitrary: fc.record({ kind: fc.constant('lose' as const), k: fc.nat(), busy: fc.boolean() }),
    },
  )
  .map((op) => new Step(op));

// ------------------------------------------------------------------ the property

describe('scheduler (model-based)', () => {
  it('keeps its invariants and gives every trial what it would get alone', () => {
    fc.assert(
      fc.property(
        fc.array(proposeArb, { minLength: 1, maxLength: 3 }),
        fc.boolean(),
        fc.commands([commandArb], { maxCommands: 60, size: 'max' }),
        (initial, safety, cmds) => {
          const s = new System(STUDIES[safety ? 1 : 0], initial);
          s.apply(s.engine.start(0));
          s.checkInvariants();
          fc.modelRun(() => ({ model: s, real: s }), cmds);
          s.finish();
          s.tally();
        },
      ),
      { numRuns: RUNS },
    );

    if (process.env.STAGETREE_MODEL_STATS) {
      console.log(JSON.stringify({ COMMANDS, CHECKS, PATHS }));
    }
    // The commands do something: well under a tenth of them change nothing.
    expect(COMMANDS.executed).toBeGreaterThan(20 * RUNS);
    expect(COMMANDS.noop / COMMANDS.executed).toBeLessThan(0.05);
    // Every check ran, and every path the commands aim at was taken, often enough to mean
    // something (the least counts are a fifth or less of what 100 runs give).
    const scale = RUNS / 100;
    const least: Readonly<Record<CheckName | PathName, number>> = {
      ...CHECK_LEAST,
      ...PATH_LEAST,
    };
    for (const [name, n] of Object.entries(least)) {
      const ran = name in CHECKS ? CHECKS[name as CheckName] : PATHS[name as PathName];
      expect(ran, `${name} ran too rarely`).toBeGreaterThanOrEqual(n * scale);
    }
  });

  // An engine bug the property above found (reportTrained walked a path a tuner callback
  // had split): the regression test.
  it('reportTrained and a tuner that splits stages in onMetric: the metrics come out right', () => {
    const trial = (until: number, reports: number[]): TrialSpec => ({
      params: { model: 'resnet20', seed: 0 },
      schedules: { lr: LRS[0] as Canonical, batchSize: BATCHES[0] as Canonical },
      until,
      reports,
    });
    const tuner = scriptedTuner({
      start: (ctx) => void ctx.propose(trial(40, [20])),
      onMetric: (ctx, e) => {
        // t2 repeats t1 with a report at 30 (splitting t1's done [20, 40)); t1's stages
        // give t2 its metrics at once, and at the first, a third trial splits [30, 40).
        if (e.trial === 't1' && e.step === 40) ctx.propose(trial(40, [20, 30]));
        if (e.trial === 't2' && e.step === 20) ctx.propose(trial(40, [35]));
      },
    });
    const result = simulate(STUDIES[0], ExecutionMode.stageTree, tuner);
    const alone = new AloneRun(
      { model: 'resnet20', seed: 0 },
      (t) => valuesOf(trial(40, []).schedules, t),
      'max',
    );
    const metrics = result.log.filter((e) => e.kind === 'metric');
    expect(metrics.map((e) => `${e.trial}@${e.step}`).sort()).toEqual(
      ['t1@20', 't1@40', 't2@20', 't2@30', 't2@40', 't3@35', 't3@40'].sort(),
    );
    for (const e of metrics) expect(e.value).toBe(alone.metricAt(e.step));
  });
});
