import stringify from 'fast-json-stable-stringify';
import { Engine, ExecutionMode } from '../../engine/index.js';
import type { EngineOptions, EngineStats, LogEntry, Task, TaskId } from '../../engine/index.js';
import { InternalError, ValidationError } from '../../errors.js';
import { lookupBy } from '../../study/index.js';
import type { Study } from '../../study/index.js';
import { allStages, getStage, stageValues } from '../../tree/index.js';
import type { StageTree } from '../../tree/index.js';
import { createTuner } from '../../tuner/index.js';
import type { Tuner } from '../../tuner/index.js';
import { EventHeap } from './heap.js';
import { SimPool } from './pool.js';
import type { SimCosts } from './pool.js';

export interface SimulationResult {
  readonly mode: ExecutionMode;
  /** GPU-seconds: every task's duration times its GPU share (cancelled tasks up to the cancel). */
  readonly gpuSeconds: number;
  readonly makespanSeconds: number;
  readonly stats: EngineStats;
  /** The best metric any trial reported, and which trial. */
  readonly best: { readonly trial: string; readonly step: number; readonly metric: number } | null;
  readonly log: readonly LogEntry[];
  readonly tree: StageTree;
  readonly gpus: number;
  /** What each study (by name, '' for the first) trained and reused (`Engine.sessionSteps`). */
  readonly studies: ReturnType<Engine['sessionSteps']>;
}

/** The costs of a study's `sim` trainer (a study with a real trainer cannot be simulated). */
export function simCosts(study: Study): SimCosts {
  const trainer = study.trainer;
  if (trainer.kind !== 'sim') {
    throw new ValidationError(
      'trainer.kind',
      '"sim" to simulate (`stagetree run` runs node and python trainers)',
      trainer.kind,
    );
  }
  const scale = trainer.stepScale;
  return {
    stepSeconds: (values) => trainer.stepSeconds * (scale ? lookupBy(scale, values) : 1),
    startSeconds: trainer.startSeconds,
    saveSeconds: trainer.saveSeconds,
    loadSeconds: trainer.loadSeconds,
    sharing: trainer.sharing,
  };
}

/** GPUs of the simulated cluster (`resources.cluster`). */
export function clusterGpus(study: Study): number {
  // A CPU-only study claims no GPU: it has one slot per worker, each stage a whole slot.
  return study.cpuOnly ? study.workers : study.resources.cluster;
}

/** The GPU share of a stage with these values (a CPU-only study's stages take a whole slot). */
export function stageShare(study: Study, values: Readonly<Record<string, unknown>>): number {
  return study.cpuOnly ? 1 : lookupBy(study.resources.gpus, values);
}

/** The engine options of a study: its cluster, worker budget, GPU shares and step costs. */
export function engineOptions(study: Study, mode: ExecutionMode): EngineOptions {
  // A real trainer's step cost is not known before it runs: order by steps.
  const costs = study.trainer.kind === 'sim' ? simCosts(study) : { stepSeconds: () => 1 };
  return {
    mode,
    gpus: clusterGpus(study),
    maxWorkers: study.workers,
    share: (values) => stageShare(study, values),
    cost: { stepSeconds: (values) => costs.stepSeconds(values) },
    checkpointEvery: study.checkpointEvery,
    retries: study.retries,
  };
}

/**
 * Runs a study on simulated workers with a virtual clock: the same engine, tuner, tree
 * and scheduler as a real run, with the sim trainer's costs. Deterministic.
 */
export function simulate(
  study: Study,
  mode: ExecutionMode,
  tuner: Tuner = createTuner(study),
): SimulationResult {
  return simulateStudies([{ study, at: 0, tuner }], { mode });
}

/** A study in a multi-study simulation: when it is submitted, and with what. */
export interface Submission {
  readonly study: Study;
  /** Virtual seconds at which it is submitted (the first study starts the engine). */
  readonly at: number;
  readonly tuner?: Tuner;
  /** Its weight in fair share (default 1). */
  readonly priority?: number;
  /** Virtual seconds at which it is cancelled (`Engine.cancelStudy`), if ever. */
  readonly cancelAt?: number;
  /** Virtual seconds at which it is paused and resumed (`Engine.pauseStudy`), if ever. */
  readonly pauseAt?: number;
  readonly resumeAt?: number;
}

/** The identity of a study's trainer, for the merge key when several studies share an engine. */
export function trainerIdentity(study: Study): string {
  return stringify(study.trainer);
}

/**
 * Runs several studies on one engine and one simulated cluster: the first starts the
 * engine at its `at`, each other one is submitted at its `at` (`Engine.submit`), and the
 * studies share one stage forest (trials of the same trainer and static params share
 * stages) and the GPUs (fair share). The cluster and worker budget are the first study's
 * unless given. Every trial's metrics equal training it alone, as in a single study.
 */
export function simulateStudies(
  submissions: readonly Submission[],
  options: {
    readonly mode?: ExecutionMode;
    readonly gpus?: number;
    readonly workers?: number;
  } = {},
): SimulationResult {
  const [first, ...rest] = [...submissions].sort((a, b) => a.at - b.at);
  if (!first) throw new InternalError('simulateStudies needs at least one study');
  const study = first.study;
  const mode = options.mode ?? ExecutionMode.stageTree;
  const costs = simCosts(study);
  const gpus = options.gpus ?? clusterGpus(study);
  const engine = new Engine(study, first.tuner ?? createTuner(study), {
    ...engineOptions(study, mode),
    gpus,
    maxWorkers: options.workers ?? study.workers,
    ...(rest.length > 0 ? { identity: trainerIdentity, studyCaps: true } : {}),
  });
  const pool = new SimPool(costs, study.metric.mode);
  const heap = new EventHeap<TaskId>();
  const live = new Map<TaskId, { task: Task; started: number; duration: number; metric: number }>();
  const cuts: TaskId[] = [];
  let gpuSeconds = 0;
  let now = first.at;

  const apply = (cmds: {
    start: readonly Task[];
    cancel: readonly TaskId[];
    cut?: readonly TaskId[];
  }): void => {
    cuts.push(...(cmds.cut ?? []));
    for (const id of cmds.cancel) {
      const l = live.get(id);
      if (!l) continue;
      live.delete(id);
      pool.cancel(id);
      gpuSeconds += (now - l.started) * l.task.share;
    }
    for (const task of cmds.start) {
      const out = pool.execute(task);
      live.set(task.id, { task, started: now, duration: out.duration, metric: out.result.metric });
      heap.push(now + out.duration, task.id);
    }
  };
  // A cut stops a task at the step after the one it trains (a simulated chunk of one step);
  // one in its last step finishes. The task's end moves to when the cut state is saved.
  const cutTasks = (): void => {
    while (cuts.length > 0) {
      const id = cuts.shift() as TaskId;
      const l = live.get(id);
      if (!l) continue;
      const step = pool.cutPoint(id, now - l.started);
      if (step === null) continue;
      const { key, commands } = engine.cutTask(now, id, step);
      const out = pool.cut(id, step, key);
      l.duration = Math.max(out.duration, now - l.started);
      l.metric = out.result.metric;
      heap.push(l.started + l.duration, id);
      apply(commands);
    }
  };

  // Submissions, pauses, resumes and cancellations, in time order (in that order at equal times).
  const ORDER = { submit: 0, pause: 1, resume: 2, cancel: 3 } as const;
  type Outside = { at: number; sub: Submission; what: keyof typeof ORDER };
  const at = (sub: Submission, what: keyof typeof ORDER, t: number | undefined): Outside[] =>
    t === undefined ? [] : [{ at: t, sub, what }];
  const outside = [
    ...rest.flatMap((sub) => at(sub, 'submit', sub.at)),
    ...submissions.flatMap((sub) => [
      ...at(sub, 'pause', sub.pauseAt),
      ...at(sub, 'resume', sub.resumeAt),
      ...at(sub, 'cancel', sub.cancelAt),
    ]),
  ].sort((x, y) => x.at - y.at || ORDER[x.what] - ORDER[y.what]);
  apply(engine.start(now));
  let next = 0;
  for (;;) {
    const due = heap.peekTime();
    const o = outside[next];
    if (o && (due === undefined || o.at <= due)) {
      next++;
      now = Math.max(now, o.at);
      const { sub } = o;
      const name = sub.study.name;
      switch (o.what) {
        case 'submit':
          apply(
            engine.submit(now, sub.study, sub.tuner ?? createTuner(sub.study), {
              priority: sub.priority ?? 1,
            }),
          );
          break;
        case 'pause':
          apply(engine.pauseStudy(now, name));
          cutTasks();
          break;
        case 'resume':
          apply(engine.resumeStudy(now, name));
          break;
        case 'cancel':
          apply(engine.cancelStudy(now, name));
          break;
      }
      continue;
    }
    const ev = heap.pop();
    if (!ev) break;
    const l = live.get(ev.value);
    if (!l) continue; // cancelled
    if (ev.t !== l.started + l.duration) continue; // cut: it ends at its new time
    live.delete(ev.value);
    now = ev.t;
    pool.finish(ev.value);
    gpuSeconds += l.duration * l.task.share;
    apply(engine.complete(now, ev.value, { metric: l.metric }));
  }
  if (!engine.done) throw new InternalError('simulation ended with the engine still waiting');

  let best: SimulationResult['best'] = null;
  for (const e of engine.log) {
    if (e.kind !== 'metric') continue;
    const better =
      best === null ||
      (study.metric.mode === 'max' ? e.value > best.metric : e.value < best.metric);
    if (better) best = { trial: e.trial, step: e.step, metric: e.value };
  }
  return {
    mode,
    gpuSeconds,
    makespanSeconds: now,
    stats: engine.stats,
    best,
    log: engine.log,
    tree: engine.stageTree,
    gpus,
    studies: engine.sessionSteps(),
  };
}

/**
 * The makespan lower bound of what a run trained: max(total stage work / GPUs, the
 * longest chain of trained stages), in seconds of pure training (no starts, saves or
 * loads, no sharing slowdown).
 */
export function makespanLowerBound(study: Study, tree: StageTree, gpus: number): number {
  const costs = simCosts(study);
  const seconds = new Map<string, number>();
  let total = 0;
  for (const s of allStages(tree)) {
    if (!s.done) continue;
    const sec = (s.end - s.start) * costs.stepSeconds(stageValues(tree, s.id));
    seconds.set(s.id, sec);
    total += sec * stageShare(study, stageValues(tree, s.id));
  }
  let longest = 0;
  const chain = (id: string): number => {
    let sum = 0;
    for (let s = getStage(tree, id); s.parent !== null; s = getStage(tree, s.parent))
      sum += seconds.get(s.id) ?? 0;
    return sum;
  };
  for (const s of allStages(tree)) if (s.done) longest = Math.max(longest, chain(s.id));
  return Math.max(total / gpus, longest);
}

/**
 * A lower bound on the makespan that respects precedence: a step at depth d (d seconds of
 * training from the root along its path) cannot start before time d, so for every t the
 * work lying deeper than t needs at least (that work / GPUs) after t:
 * makespan >= max over t of (t + work deeper than t / GPUs). Combined with
 * `makespanLowerBound` (a chain cannot be split), it is much tighter for trees whose
 * shared prefix leaves GPUs idle. Pure training time, like `makespanLowerBound`.
 */
export function precedenceLowerBound(study: Study, tree: StageTree, gpus: number): number {
  const costs = simCosts(study);
  const spans: { from: number; to: number; share: number }[] = [];
  const depth = new Map<string, number>();
  const depthOf = (id: string): number => {
    const known = depth.get(id);
    if (known !== undefined) return known;
    const s = getStage(tree, id);
    const d =
      s.parent === null
        ? 0
        : depthOf(s.parent) + (s.end - s.start) * costs.stepSeconds(stageValues(tree, s.id));
    depth.set(id, d);
    return d;
  };
  for (const s of allStages(tree)) {
    if (!s.done) continue;
    const to = depthOf(s.id);
    const from = depthOf(s.parent as string);
    spans.push({ from, to, share: stageShare(study, stageValues(tree, s.id)) });
  }
  let best = makespanLowerBound(study, tree, gpus);
  const points = [...new Set(spans.map((x) => x.from))].sort((a, b) => a - b);
  for (const t of points) {
    let deeper = 0;
    for (const x of spans) if (x.to > t) deeper += (x.to - Math.max(x.from, t)) * x.share;
    best = Math.max(best, t + deeper / gpus);
  }
  return best;
}
