import {
  ConflictError,
  InternalError,
  NotRunningError,
  ResourceFitError,
  ValidationError,
} from '../errors.js';
import { EPS, place, orderReady } from '../scheduler/index.js';
import type { GpuView, WorkerView } from '../scheduler/index.js';
import type { Canonical } from '../schedule/index.js';
import { createRng } from '../study/index.js';
import type { Study } from '../study/index.js';
import {
  childrenOf,
  emptyTree,
  extendTrial,
  forkTrial,
  getStage,
  getTrial,
  hasStage,
  hasTrial,
  insertTrial,
  isDemanded,
  markDone,
  pathOf,
  readyStages,
  reportsAt,
  rootIds,
  splitStage,
  shardValues,
  stageValues,
  stateKey,
  stopTrial,
  trialsThrough,
} from '../tree/index.js';
import type { Stage, StageId, StageTree, TrialId } from '../tree/index.js';
import type { Tuner, TunerContext, TrialSpec } from '../tuner/types.js';
import { ExecutionMode } from './types.js';
import type {
  CheckpointKey,
  CostModel,
  LogEntry,
  Restore,
  StageRun,
  Task,
  TaskId,
  TaskResult,
  WorkerId,
} from './types.js';

/** The static param that gives each trial its own merge key in trial-based mode. */
export const LINEAGE_PARAM = '__trial';

export interface EngineOptions {
  readonly mode: ExecutionMode;
  /** GPUs in the cluster. */
  readonly gpus: number;
  /** The most worker processes alive at once. */
  readonly maxWorkers: number;
  /** GPU share a stage occupies, from its hyperparameter values at its first step. */
  readonly share: (values: Readonly<Record<string, unknown>>) => number;
  /** Estimated step cost, for critical-path priority. */
  readonly cost: CostModel;
  /** Save a safety checkpoint whenever a stage crosses a multiple of this many steps. */
  readonly checkpointEvery: number | null;
  /** Times a stage is retried after its trainer failed before its trials fail. Default 2. */
  readonly retries?: number;
  /**
   * Save every stage end that a later stage may start from (real runs: an engine crash
   * then loses no completed stage). Off: the minimal policy, saving only when a worker
   * moves on from a state still needed.
   */
  readonly durable?: boolean;
  /**
   * The identity of a study's trainer (kind, module and export or image, fingerprint or
   * declared version): when set, it joins every trial's merge key, so trials of different
   * code never share a stage. Unset (a single study): merge keys are the static params.
   */
  readonly identity?: (study: Study) => string;
  /**
   * An executor of several studies: each study holds at most its `workers` tasks at once
   * (`maxWorkers` is then the pool's size). Off (one study): `maxWorkers` alone limits.
   */
  readonly studyCaps?: boolean;
}

/** The static param that carries the trainer's identity into the merge key. */
export const TRAINER_PARAM = '__trainer';

/** A study the engine runs: its tuner and its own trials, demand and end. */
interface Session {
  /** The study's name; '' for the study the engine was made with. */
  readonly name: string;
  readonly study: Study;
  readonly tuner: Tuner;
  ctx: TunerContext;
  /** Trial ids are `${prefix}t${n}`: plain for the first study, `name/` for the others. */
  readonly prefix: string;
  readonly identity: string | null;
  /** Weight in fair share (default 1). */
  readonly priority: number;
  nextTrial: number;
  readonly trials: TrialId[];
  active: number;
  paused: number;
  finished: boolean;
  /** Estimated GPU-seconds of the tasks it demanded (shared tasks split), for fair share. */
  usage: number;
  /** Steps of the tasks it was the earliest study to demand, re-computations included. */
  stepsTrained: number;
  /** Paused (`pauseStudy`): none of its stages starts, its tuner waits. */
  suspended: boolean;
}

/** How a study joins a running engine. */
export interface SubmitOptions {
  /** Weight in fair share between studies (default 1). */
  readonly priority?: number;
}

/** What the engine asks of the worker pool after an event. */
export interface Commands {
  readonly start: readonly Task[];
  readonly cancel: readonly TaskId[];
  /** Worker processes to stop (replaced by a process for another lineage). */
  readonly retire: readonly WorkerId[];
  /**
   * Running tasks to cut short (their studies paused): each worker stops at its next
   * step boundary and answers with the step, given to `cutTask`; or finishes the task.
   */
  readonly cut: readonly TaskId[];
}

export interface EngineStats {
  /** Tasks started (each trains one demanded stage, plus any re-computed ancestors). */
  stagesRun: number;
  /** Done stages trained again because their end state was lost. */
  stagesRecomputed: number;
  checkpointsSaved: number;
  checkpointsLoaded: number;
  processStarts: number;
  tasksCancelled: number;
  /** Training steps run, re-computations included. */
  stepsTrained: number;
  /** Stages marked done from an offered checkpoint (trained by an earlier run), not trained. */
  stagesReused: number;
}

interface WorkerState {
  readonly id: WorkerId;
  readonly gpu: number;
  busy: TaskId | null;
  /** Stage whose end state the process holds in memory. */
  holds: StageId | null;
  lineage: string | null;
}

interface Running {
  /** The task as started; a cut (`cutTask`) makes it end earlier, saving its end state. */
  task: Task;
  readonly startedAt: number;
  /** The demanded stage the task trains (its last run). */
  readonly stage: StageId;
  readonly start: number;
  /** Where its last stage ends (where it was cut, after `cutTask`). */
  end: number;
  readonly rep: TrialId;
  /** The studies that demanded it when it started (each holds its slot, for `workers` caps). */
  readonly owners: readonly Session[];
}

/**
 * The event loop joining a tuner, the stage tree, the scheduler and a worker pool. It
 * never reads a clock or does I/O: the pool (simulated or real) tells it what happened
 * and when (`start`, `complete`), and it answers with commands. Every decision is
 * appended to `log`.
 *
 * Checkpoint policy (minimal): a worker keeps the state it ends with in memory. It saves
 * that state only when it is about to move on (run anything else, or continue into one
 * child) while the state is still needed: another demanded child has not started yet,
 * or a trial pauses there and may be extended. In trial-based mode a trial's state is
 * saved when it pauses, as today's systems do.
 */
export class Engine {
  private tree: StageTree = emptyTree();
  readonly log: LogEntry[] = [];
  readonly stats: EngineStats = {
    stagesRun: 0,
    stagesRecomputed: 0,
    checkpointsSaved: 0,
    checkpointsLoaded: 0,
    processStarts: 0,
    tasksCancelled: 0,
    stepsTrained: 0,
    stagesReused: 0,
  };
  private now = 0;
  private nextTrial = 1;
  private nextTask = 1;
  private nextWorker = 1;
  private readonly workers = new Map<WorkerId, WorkerState>();
  /** Ids of alive workers with no task. */
  private readonly idle = new Set<WorkerId>();
  private readonly gpuUsed: number[];
  private readonly running = new Map<TaskId, Running>();
  private readonly runningStages = new Map<StageId, TaskId>();
  /** Keys of saved states (see `stateKey`). */
  private readonly checkpoints = new Set<CheckpointKey>();
  private readonly keys = new Map<StageId, CheckpointKey>();
  private readonly costs = new Map<StageId, number>();
  /** The metric at each trained state (by state key). */
  private readonly metricAt = new Map<CheckpointKey, number>();
  /** States trained before this engine existed (checkpoints of an earlier run), with their metric. */
  private readonly offered = new Map<CheckpointKey, number>();
  /** `trial@step` of every metric event given to the tuner. */
  private readonly delivered = new Set<string>();
  /** Trials added or extended since the last check for already-trained report points. */
  private readonly unreported: TrialId[] = [];
  private readonly paused = new Set<TrialId>();
  /** Running tasks whose stage was split by a trial added while they ran. */
  private readonly stale = new Set<Running>();
  private readonly stateOf = new Map<StageId, { rep: TrialId; end: number }>();
  private seenSplits = 0;
  private readonly failures = new Map<StageId, number>();
  private readonly losses = new Map<StageId, number>();
  private readonly failedTrials = new Map<TrialId, string>();
  /** Every study the engine runs, the first one (the constructor's) first. */
  private readonly sessions: Session[] = [];
  private readonly sessionOfTrial = new Map<TrialId, Session>();
  private finished = false;
  private startedTasks: Task[] = [];
  private cancelledTasks: TaskId[] = [];
  private retiredWorkers: WorkerId[] = [];
  private cutRequests: TaskId[] = [];
  /** Tasks a cut was asked of (once each). */
  private readonly cutAsked = new Set<TaskId>();

  constructor(
    readonly study: Study,
    tuner: Tuner,
    private readonly options: EngineOptions,
  ) {
    this.gpuUsed = Array.from({ length: options.gpus }, () => 0);
    this.addSession('', study, tuner, 1);
  }

  private addSession(name: string, study: Study, tuner: Tuner, priority: number): Session {
    const session: Session = {
      name,
      study,
      tuner,
      ctx: undefined as unknown as TunerContext,
      prefix: name === '' ? '' : `${name}/`,
      identity: this.options.identity ? this.options.identity(study) : null,
      priority,
      nextTrial: 1,
      trials: [],
      active: 0,
      paused: 0,
      finished: false,
      usage: 0,
      stepsTrained: 0,
      suspended: false,
    };
    session.ctx = this.makeContext(session);
    this.sessions.push(session);
    return session;
  }

  /** The first study's session (the engine's own). */
  private get primary(): Session {
    return this.sessions[0] as Session;
  }

  private sessionOf(trial: TrialId): Session {
    return this.sessionOfTrial.get(trial) ?? this.primary;
  }

  /**
   * Adds a study to the running engine at `now` (logged as `submit`): its tuner starts, its
   * trials join the same stage forest, so a stage another study trained or is training
   * is not trained again, and it finishes on its own. Studies share the GPUs by fair
   * share (weighted by `priority`) on top of critical-path order. Its name must be new.
   */
  submit(now: number, study: Study, tuner: Tuner, options: SubmitOptions = {}): Commands {
    this.now = now;
    const name = study.name;
    if (name === '' || this.sessions.some((x) => x.name === name || x.study.name === name)) {
      throw new ConflictError(`a study named ${JSON.stringify(name)} runs on this engine already`);
    }
    if (study.metric.name !== this.study.metric.name) {
      throw new ConflictError(
        `study ${name} reports metric ${JSON.stringify(study.metric.name)}, this engine's studies ${JSON.stringify(this.study.metric.name)}`,
      );
    }
    const priority = options.priority ?? 1;
    if (!(Number.isFinite(priority) && priority > 0)) {
      throw new ValidationError('priority', 'a number > 0', priority);
    }
    const session = this.addSession(name, study, tuner, priority);
    this.finished = false;
    this.log.push({ t: now, kind: 'submit', study: name, priority: session.priority });
    session.tuner.start(session.ctx);
    return this.flush();
  }

  /** Each study's estimated GPU-seconds so far, by name ('' for the first): fair share's measure. */
  sessionUsage(): ReadonlyMap<string, number> {
    return new Map(this.sessions.map((x) => [x.name, x.usage]));
  }

  /**
   * What each study (by name, '' for the first) trained and reused: `trained`, the steps
   * of the tasks it was the earliest-submitted study to demand when they started
   * (re-computations count); `demanded`, the unique steps of its trials' paths;
   * `reused`, what of that another study trained or was training.
   */
  sessionSteps(): ReadonlyMap<
    string,
    { readonly trained: number; readonly demanded: number; readonly reused: number }
  > {
    const out = new Map<string, { trained: number; demanded: number; reused: number }>();
    for (const x of this.sessions) {
      const seen = new Set<StageId>();
      let demanded = 0;
      for (const t of x.trials) {
        if (!hasTrial(this.tree, t)) continue;
        for (const st of pathOf(this.tree, t)) {
          if (seen.has(st.id)) continue;
          seen.add(st.id);
          demanded += st.end - st.start;
        }
      }
      const trained = x.stepsTrained;
      out.set(x.name, { trained, demanded, reused: Math.max(0, demanded - trained) });
    }
    return out;
  }

  /**
   * Cancels a study (by its study name) at `now`: its active trials stop, withdrawing only
   * its own demand (a stage another study still demands goes on), its tuner hears nothing
   * more, and its `finish` entry says `cancelled`. A finished or unknown study: nothing.
   */
  cancelStudy(now: number, name: string): Commands {
    this.now = now;
    const session = this.sessions.find((x) => x.study.name === name);
    if (session && !session.finished) this.finishSession(session, true);
    return this.flush();
  }

  /**
   * Pauses a study (by its study name) at `now`, logged as `pause`: none of its stages
   * starts (a stage another, running study demands still does), its tasks that run go
   * on to their end (nothing trained is lost), its tuner hears nothing until `resumeStudy`.
   * A paused study is never finished for want of work. An unknown, finished or paused
   * study: nothing.
   */
  pauseStudy(now: number, name: string): Commands {
    this.now = now;
    const x = this.sessions.find((y) => y.study.name === name);
    if (x && !x.finished && !x.suspended) {
      x.suspended = true;
      this.log.push({ t: now, kind: 'pause', study: name });
      this.askCuts();
    }
    return this.flush();
  }

  /**
   * Asks running tasks that only paused studies demand to stop at a checkpoint
   * (`Commands.cut`): a long stage then frees its slot without losing what it trained.
   */
  private askCuts(): void {
    for (const r of this.running.values()) {
      if (this.cutAsked.has(r.task.id)) continue;
      const owners = this.ownersOf(getStage(this.tree, this.currentStage(r)));
      if (owners.length > 0 && owners.every((x) => x.suspended)) {
        this.cutAsked.add(r.task.id);
        this.cutRequests.push(r.task.id);
      }
    }
  }

  /**
   * Where task `taskId` may be cut: steps strictly between these (its last stage's start
   * and end); null when it is not running. For checking a worker's `cutAt`.
   */
  cutRange(taskId: TaskId): { readonly start: number; readonly end: number } | null {
    const r = this.running.get(taskId);
    return r ? { start: r.start, end: r.end } : null;
  }

  /**
   * A task cut short at `now`: its worker stopped at `step`, strictly inside its last
   * stage (see `cutRange`). Logged as `cut` (an input replay gives again). The stage is
   * split at `step`; the task now trains the upper piece and saves its end state under
   * the returned key (the worker is told so); the lower piece waits to be placed like any
   * stage, once its study resumes.
   */
  cutTask(now: number, taskId: TaskId, step: number): { key: CheckpointKey; commands: Commands } {
    this.now = now;
    const r = this.running.get(taskId);
    if (!r) throw new NotRunningError(taskId);
    if (!(Number.isInteger(step) && r.start < step && step < r.end))
      throw new ValidationError(
        'cutAt.step',
        `a step strictly between ${r.start} and ${r.end} (task ${taskId}'s last stage)`,
        step,
      );
    const pieces = pathOf(this.tree, r.rep).filter((p) => p.start >= r.start && p.end <= r.end);
    let top: StageId;
    const boundary = pieces.find((p) => p.end === step);
    if (boundary) top = boundary.id;
    else {
      const piece = pieces.find((p) => p.start < step && step < p.end) as Stage;
      ({ tree: this.tree, top } = splitStage(this.tree, piece.id, step));
      this.noteSplits();
    }
    const key = this.keyOf(top);
    const dropped = r.end - step;
    r.end = step;
    r.task = { ...r.task, saveAfter: key, endKey: key };
    this.stats.stepsTrained -= dropped;
    const first = r.owners[0];
    if (first) first.stepsTrained -= dropped;
    this.log.push({ t: now, kind: 'cut', task: taskId, step, stage: top, key });
    return { key, commands: this.flush() };
  }

  /** Resumes a paused study at `now` (logged as `resume`): its stages are placed again. */
  resumeStudy(now: number, name: string): Commands {
    this.now = now;
    const x = this.sessions.find((y) => y.study.name === name);
    if (x && !x.finished && x.suspended) {
      x.suspended = false;
      this.log.push({ t: now, kind: 'resume', study: name });
    }
    return this.flush();
  }

  /** Whether a study (by its study name) is paused. */
  studyPaused(name: string): boolean {
    return this.sessions.find((y) => y.study.name === name)?.suspended ?? false;
  }

  /** A study the engine runs, by its study name. */
  studyNamed(name: string): Study | undefined {
    return this.sessions.find((x) => x.study.name === name)?.study;
  }

  /** Whether a study (by name, '' for the first) has finished. */
  sessionFinished(name: string): boolean {
    return this.sessions.find((x) => x.name === name)?.finished ?? false;
  }

  /** The current stage tree (immutable). */
  get stageTree(): StageTree {
    return this.tree;
  }

  private isFinished(): boolean {
    return this.finished;
  }

  /** True when the study is over and nothing runs. */
  get done(): boolean {
    return this.finished && this.running.size === 0;
  }

  /**
   * Offers a state trained before this engine existed (a checkpoint an earlier run of the
   * study left, and the metric it gave there). A stage whose end state is offered is
   * marked done when it becomes ready, without training (logged as `reuse`), and its
   * children restore from the checkpoint. Offer before `start`; replay offers exactly the
   * logged reuses, so the decisions come out the same.
   */
  offer(key: CheckpointKey, metric: number): void {
    this.offered.set(key, metric);
  }

  /** Whether task `taskId` is running on worker `workerId` (a result from anyone else is stale or forged). */
  isRunningOn(taskId: TaskId, workerId: WorkerId): boolean {
    return this.running.get(taskId)?.task.worker === workerId;
  }

  /** Starts the study at time `now`: the tuner proposes, the scheduler places. */
  start(now: number): Commands {
    this.now = now;
    this.primary.tuner.start(this.primary.ctx);
    return this.flush();
  }

  /** Something changed outside a callback (a trial proposed through the API): schedule at `now`. */
  poke(now: number): Commands {
    this.now = now;
    return this.flush();
  }

  /** A read-only view of what runs where, for tests and status displays. */
  inspect(): {
    readonly running: readonly { readonly task: Task; readonly stage: StageId }[];
    readonly gpuUsed: readonly number[];
    readonly workers: readonly {
      readonly id: WorkerId;
      readonly busy: boolean;
      readonly holds: StageId | null;
    }[];
    readonly checkpoints: readonly CheckpointKey[];
  } {
    return {
      running: [...this.running.values()].map((r) => ({
        task: r.task,
        stage: this.currentStage(r),
      })),
      gpuUsed: [...this.gpuUsed],
      workers: [...this.workers.values()].map((w) => ({
        id: w.id,
        busy: w.busy !== null,
        holds: w.holds,
      })),
      checkpoints: [...this.checkpoints],
    };
  }

  /** The tuner context the engine gives its tuner (for callers that drive a study from outside). */
  get context(): TunerContext {
    return this.primary.ctx;
  }

  /**
   * A task failed at `now`. A missing or corrupt checkpoint is forgotten and re-computed
   * from the nearest state there is; a trainer error is retried up to `retries` times,
   * then every active trial through the stage fails with the trainer's message.
   */
  taskFailed(
    now: number,
    taskId: TaskId,
    failure: { readonly message: string; readonly reason: 'trainer' | 'checkpoint' | 'worker' },
  ): Commands {
    this.now = now;
    const r = this.running.get(taskId);
    if (!r) return this.flush();
    this.release(r);
    const worker = this.workers.get(r.task.worker);
    if (worker) worker.holds = null;
    this.log.push({
      t: now,
      kind: 'fail',
      task: taskId,
      message: failure.message,
      reason: failure.reason,
    });
    if (failure.reason === 'checkpoint' && r.task.restore.from === 'checkpoint') {
      this.checkpoints.delete(r.task.restore.key);
    } else {
      const stage = this.currentStage(r);
      const n = (this.failures.get(stage) ?? 0) + 1;
      this.failures.set(stage, n);
      if (n > (this.options.retries ?? 2)) this.failStage(stage, failure.message);
    }
    return this.flush();
  }

  /**
   * A worker is gone (its process died, or it stopped heart-beating). Its running task is
   * rescheduled from the last state that exists; what it held in memory is lost.
   */
  workerLost(now: number, workerId: WorkerId, reason: string): Commands {
    this.now = now;
    const w = this.workers.get(workerId);
    if (!w) return this.flush();
    this.log.push({ t: now, kind: 'lost', worker: workerId, reason });
    if (w.busy !== null) {
      const r = this.running.get(w.busy);
      if (r) {
        this.release(r);
        const stage = this.currentStage(r);
        const n = (this.losses.get(stage) ?? 0) + 1;
        this.losses.set(stage, n);
        if (n > (this.options.retries ?? 2) + 3)
          this.failStage(stage, `its worker died ${n} times (${reason})`);
      }
    }
    this.workers.delete(workerId);
    this.idle.delete(workerId);
    return this.flush();
  }

  /** Messages of trials that failed, by trial. */
  get trialFailures(): ReadonlyMap<TrialId, string> {
    return this.failedTrials;
  }

  private failStage(stage: StageId, message: string): void {
    for (const t of trialsThrough(this.tree, stage)) {
      if (getTrial(this.tree, t).status !== 'active') continue;
      this.failedTrials.set(t, message);
      this.log.push({ t: this.now, kind: 'trialFailed', trial: t, message });
      this.stop(t);
      const session = this.sessionOf(t);
      if (!session.finished) session.tuner.onTrialFailed?.(session.ctx, t, message);
    }
  }

  /** A task finished at `now` with `result`. */
  complete(now: number, taskId: TaskId, result: TaskResult): Commands {
    this.now = now;
    const r = this.running.get(taskId);
    if (!r) throw new NotRunningError(taskId);
    this.release(r);
    const worker = this.workers.get(r.task.worker) as WorkerState;
    this.log.push({ t: now, kind: 'done', task: taskId, metric: result.metric });
    const done = this.markTrained(r);
    this.noteState(done);
    worker.holds = done;
    if (r.task.saveAfter !== null) this.checkpoints.add(r.task.saveAfter);
    this.deliver(done, result.metric);
    return this.flush();
  }

  // ------------------------------------------------------------------ tuner context

  private makeContext(session: Session): TunerContext {
    const tunerSeed = 'seed' in session.study.tuner ? session.study.tuner.seed : 0;
    return {
      study: session.study,
      rng: createRng(tunerSeed),
      propose: (spec) => this.propose(session, spec),
      extend: (trial, until, reports) => {
        this.extend(trial, until, reports ?? []);
      },
      stop: (trial) => {
        this.stop(trial);
      },
      fork: (source, at, schedules, until, reports) =>
        this.fork(session, source, at, schedules, until, reports ?? []),
      finish: () => {
        this.finishSession(session);
      },
      running: () => session.active - session.paused,
    };
  }

  /** A new trial of `session`: its id, recorded as its. */
  private newTrial(session: Session): TrialId {
    const id = `${session.prefix}t${session.nextTrial++}`;
    if (!session.finished) {
      this.sessionOfTrial.set(id, session);
      session.trials.push(id);
    }
    return id;
  }

  private pause(t: TrialId): void {
    if (this.paused.has(t)) return;
    this.paused.add(t);
    this.sessionOf(t).paused++;
  }

  private unpause(t: TrialId): void {
    if (this.paused.delete(t)) this.sessionOf(t).paused--;
  }

  private propose(session: Session, spec: TrialSpec): TrialId {
    const id = this.newTrial(session);
    if (session.finished) return id;
    let params = spec.params;
    if (session.identity !== null) params = { ...params, [TRAINER_PARAM]: session.identity };
    if (this.options.mode === ExecutionMode.trialBased) params = { ...params, [LINEAGE_PARAM]: id };
    this.tree = insertTrial(this.tree, {
      id,
      params,
      schedules: spec.schedules,
      until: spec.until,
      reports: spec.reports ?? [],
    });
    session.active++;
    this.noteSplits();
    this.unreported.push(id);
    this.log.push({ t: this.now, kind: 'propose', trial: id, spec });
    return id;
  }

  private fork(
    session: Session,
    source: TrialId,
    at: number,
    schedules: Readonly<Record<string, Canonical>>,
    until: number,
    reports: readonly number[],
  ): TrialId {
    const id = this.newTrial(session);
    if (session.finished) return id;
    this.tree = forkTrial(this.tree, { id, source, at, schedules, until, reports });
    session.active++;
    this.noteSplits();
    this.unreported.push(id);
    this.log.push({ t: this.now, kind: 'fork', trial: id, source, at, schedules, until, reports });
    return id;
  }

  private extend(trial: TrialId, until: number, reports: readonly number[]): void {
    if (this.sessionOf(trial).finished) return;
    this.tree = extendTrial(this.tree, trial, until, reports);
    this.unpause(trial);
    this.noteSplits();
    this.unreported.push(trial);
    this.log.push({ t: this.now, kind: 'extend', trial, until, reports });
  }

  private stop(trial: TrialId): void {
    if (!hasTrial(this.tree, trial) || getTrial(this.tree, trial).status === 'stopped') return;
    this.tree = stopTrial(this.tree, trial);
    this.sessionOf(trial).active--;
    this.unpause(trial);
    this.log.push({ t: this.now, kind: 'stop', trial });
    this.cancelUndemanded();
  }

  /**
   * Ends a study: its active trials stop (withdrawing only its own demand) and its tuner
   * hears nothing more. The engine is finished when every study is.
   */
  private finishSession(session: Session, cancelled = false): void {
    if (session.finished) return;
    for (const id of session.trials) {
      if (hasTrial(this.tree, id) && getTrial(this.tree, id).status === 'active') this.stop(id);
    }
    session.finished = true;
    this.log.push({
      t: this.now,
      kind: 'finish',
      ...(session.name === '' ? {} : { study: session.name }),
      ...(cancelled ? { cancelled: true as const } : {}),
    });
    if (this.sessions.every((x) => x.finished)) this.finished = true;
  }

  // ------------------------------------------------------------------ scheduling

  private flush(): Commands {
    this.schedule();
    const out = {
      start: this.startedTasks,
      cancel: this.cancelledTasks,
      retire: this.retiredWorkers,
      cut: this.cutRequests,
    };
    this.startedTasks = [];
    this.cancelledTasks = [];
    this.retiredWorkers = [];
    this.cutRequests = [];
    return out;
  }

  /** Places ready stages; when nothing runs or is ready, asks the tuner, else ends. */
  private schedule(): void {
    for (let idle = 0; ;) {
      if (this.finished) return;
      this.reportTrained();
      // A tuner may finish the study from a metric callback.
      if (this.isFinished()) return;
      const stuck = this.placeReady();
      if (this.sessions.length > 1 && this.idleSessions() && ++idle <= 10_000) continue;
      if (this.running.size > 0) return;
      if (stuck) throw this.stuckError(stuck);
      const before = this.log.length;
      // Paused studies wait: no onIdle, never finished for want of work.
      const open = this.sessions.filter((x) => !x.finished && !x.suspended);
      if (open.length === 0) return;
      for (const x of open) if (!x.finished) x.tuner.onIdle(x.ctx);
      if (this.log.length === before || ++idle > 10_000) {
        for (const x of open) this.finishSession(x);
        return;
      }
    }
  }

  /**
   * With several studies, a study with nothing left to train (no active trial short of
   * its demanded end) hears `onIdle` while others still train, and ends if it adds
   * nothing. True when that changed something (schedule again).
   */
  private idleSessions(): boolean {
    let changed = false;
    for (const x of this.sessions) {
      if (x.finished || x.suspended || this.sessionBusy(x)) continue;
      const before = this.log.length;
      x.tuner.onIdle(x.ctx);
      if (this.log.length === before) this.finishSession(x);
      changed = true;
    }
    return changed && !this.finished;
  }

  /** Whether a study has an active trial that is not paused and not yet at its end. */
  private sessionBusy(x: Session): boolean {
    for (const t of x.trials) {
      if (this.paused.has(t) || !hasTrial(this.tree, t)) continue;
      const trial = getTrial(this.tree, t);
      if (trial.status === 'active' && !getStage(this.tree, trial.leaf).done) return true;
    }
    return false;
  }

  /** Estimated seconds of a stage (cached: a stage's range and values never change). */
  private stepCost(s: Stage): number {
    let c = this.costs.get(s.id);
    if (c === undefined) {
      c = (s.end - s.start) * this.options.cost.stepSeconds(stageValues(this.tree, s.id));
      this.costs.set(s.id, c);
    }
    return c;
  }

  /**
   * Places what it can. Returns the first ready stage in placement order when ready stages
   * exist but none could be placed and nothing runs (the cluster is idle), else null.
   */
  private placeReady(): Stage | null {
    this.reuseOffered();
    if (this.finished || !this.hasRoom()) return null;
    const ready = readyStages(this.tree, { sorted: false }).filter(
      (s) => !this.isRunning(s) && !this.suspendedStage(s),
    );
    if (ready.length === 0) return null;
    const held = new Set<StageId>();
    for (const id of this.idle) {
      const h = (this.workers.get(id) as WorkerState).holds;
      if (h !== null) held.add(h);
    }
    const ordered = this.fairShare(
      orderReady(
        this.tree,
        ready,
        (s) => this.stepCost(s),
        (s) => s.parent !== null && held.has(s.parent),
        this.options.mode === ExecutionMode.trialBased,
      ),
    );
    let placedAny = false;
    for (const s of ordered) {
      if (!this.hasRoom()) break;
      if (this.options.studyCaps === true && this.capped(s)) continue;
      if (this.launch(s)) placedAny = true;
    }
    return placedAny || this.running.size > 0 ? null : (ordered[0] ?? null);
  }

  /**
   * Why a ready stage could not be placed on an idle cluster: its share fits on no GPU (a
   * `ResourceFitError`), or, when it would fit, a bug in placement (an `InternalError`).
   */
  private stuckError(s: Stage): Error {
    const share = this.options.share(stageValues(this.tree, s.id));
    const capacity = 1;
    if (share > capacity + EPS || this.options.gpus === 0) {
      return new ResourceFitError(s.id, share, capacity, this.options.gpus);
    }
    return new InternalError(
      `stage ${s.id} (GPU share ${share}) could not be placed on an idle cluster of ` +
        `${this.options.gpus} GPUs and ${this.workers.size} of ${this.options.maxWorkers} workers`,
    );
  }

  /**
   * Marks ready stages whose end state was offered (trained by an earlier run) done
   * without training them, in id order, until none is left: their metrics reach the
   * tuner as if trained now, and their children restore from the checkpoint.
   */
  private reuseOffered(): void {
    if (this.offered.size === 0) return;
    for (;;) {
      if (this.finished) return;
      const reusable = readyStages(this.tree, { sorted: true }).filter(
        (s) => !this.isRunning(s) && this.offered.has(this.keyOf(s.id)),
      );
      const s = reusable[0];
      if (!s) return;
      const key = this.keyOf(s.id);
      const metric = this.offered.get(key) as number;
      this.tree = markDone(this.tree, s.id);
      this.noteState(s.id);
      this.checkpoints.add(key);
      this.stats.stagesReused++;
      this.log.push({ t: this.now, kind: 'reuse', stage: s.id, key, metric });
      this.deliver(s.id, metric);
      this.reportTrained();
    }
  }

  /** Whether every study that demands a stage is paused (then it waits). */
  private suspendedStage(s: Stage): boolean {
    if (!this.sessions.some((x) => x.suspended)) return false;
    const owners = this.sessions.length === 1 ? [this.primary] : this.ownersOf(s);
    return owners.length > 0 && owners.every((x) => x.suspended);
  }

  /** The unfinished studies whose active trials pass through a stage, earliest submitted first. */
  private ownersOf(s: Stage): Session[] {
    const owners = new Set<Session>();
    for (const t of trialsThrough(this.tree, s.id)) {
      if (getTrial(this.tree, t).status !== 'active') continue;
      const session = this.sessionOf(t);
      if (!session.finished) owners.add(session);
    }
    return owners.size < 2 ? [...owners] : this.sessions.filter((x) => owners.has(x));
  }

  /**
   * Fair share between studies: ready stages of the study furthest below its share
   * (estimated GPU-seconds over priority) first, critical-path order within one
   * (a stable sort). A stage several studies demand counts for the neediest of them.
   * With one study, the order is untouched.
   */
  private fairShare(ordered: Stage[]): Stage[] {
    if (this.sessions.length < 2) return ordered;
    const need = (s: Stage): number => {
      let least = Number.POSITIVE_INFINITY;
      for (const x of this.ownersOf(s)) least = Math.min(least, x.usage / x.priority);
      return least;
    };
    return ordered
      .map((s, i) => ({ s, i, need: need(s) }))
      .sort((a, b) => a.need - b.need || a.i - b.i)
      .map((x) => x.s);
  }

  /**
   * With several studies, a study's `workers` is the most tasks it may hold at once: a
   * stage waits while every study that demands it is at its cap (a task several studies
   * demand counts for each of them).
   */
  private capped(s: Stage): boolean {
    if (this.sessions.length === 1) return this.running.size >= this.primary.study.workers;
    const owners = this.ownersOf(s);
    if (owners.length === 0) return false;
    const held = new Map<Session, number>();
    for (const r of this.running.values())
      for (const x of r.owners) held.set(x, (held.get(x) ?? 0) + 1);
    return owners.every((x) => (held.get(x) ?? 0) >= x.study.workers);
  }

  /**
   * Charges a launched stage: its estimated GPU-seconds to the studies that demand it,
   * split (fair share's measure); its steps to the earliest of them, the study that
   * trains it (the later ones reuse it, as they would had it finished before they came).
   */
  private charge(owners: readonly Session[], cost: number, steps: number): void {
    for (const x of owners) x.usage += cost / owners.length;
    const first = owners[0];
    if (first) first.stepsTrained += steps;
  }

  private hasRoom(): boolean {
    return this.workers.size < this.options.maxWorkers || this.idle.size > 0;
  }

  private isRunning(s: Stage): boolean {
    if (this.runningStages.has(s.id)) return true;
    // A running stage that a new trial split: its task still covers the pieces.
    for (const r of this.stale) {
      if (
        r.start <= s.start &&
        s.end <= r.end &&
        pathOf(this.tree, r.rep).some((p) => p.id === s.id)
      ) {
        return true;
      }
    }
    return false;
  }

  /** Remembers which path and step a kept state belongs to, to find it again after splits. */
  private noteState(id: StageId): void {
    if (!this.stateOf.has(id)) {
      const s = getStage(this.tree, id);
      this.stateOf.set(id, { rep: s.rep, end: s.end });
    }
  }

  /** The stage whose end is the kept state `id` (the lower piece, if `id` was split). */
  private resolve(id: StageId): StageId {
    if (this.stageExists(id)) return id;
    const info = this.stateOf.get(id);
    if (!info) throw new InternalError(`no record of state ${id}`);
    const found = pathOf(this.tree, info.rep).find((p) => p.end === info.end);
    if (!found) throw new InternalError(`state ${id} lost its stage`);
    this.stateOf.set(found.id, info);
    return found.id;
  }

  /**
   * After the tree grew: if stages were split, re-resolve the states workers hold (the
   * state at the same step of the same path), and note running tasks whose stage was
   * split. Checkpoints are keyed by state, not stage, and need nothing.
   */
  private noteSplits(): void {
    if (this.tree.counts.splits === this.seenSplits) return;
    this.seenSplits = this.tree.counts.splits;
    for (const w of this.workers.values()) if (w.holds !== null) w.holds = this.resolve(w.holds);
    for (const r of this.running.values()) {
      if (!this.stale.has(r) && !this.stageExists(r.stage)) this.stale.add(r);
    }
  }

  private stageExists(id: StageId): boolean {
    return hasStage(this.tree, id);
  }

  /** Whether the end state of `id` is still needed by someone other than child `except`. */
  private stateNeeded(id: StageId, except: StageId | null): boolean {
    const s = getStage(this.tree, id);
    if (s.parent === null) return false;
    for (const c of childrenOf(this.tree, id)) {
      if (c.id !== except && c.refs > 0 && !c.done && !this.runningStages.has(c.id)) return true;
    }
    return this.pausedAt(s);
  }

  /** Whether an active trial pauses at the stage's end and may still be extended. */
  private pausedAt(s: Stage): boolean {
    return s.ends.some((t) => {
      const trial = getTrial(this.tree, t);
      return trial.status === 'active' && trial.until < this.sessionOf(t).study.steps;
    });
  }

  private keyOf(id: StageId): CheckpointKey {
    let k = this.keys.get(id);
    if (k === undefined) {
      k = stateKey(this.tree, id);
      this.keys.set(id, k);
    }
    return k;
  }

  private saved(id: StageId): boolean {
    return this.checkpoints.has(this.keyOf(id));
  }

  /** Views of the idle workers (the only ones placement can choose). */
  /** Whether a trial finishes its whole study at this stage's end (its final state). */
  private finalOf(s: Stage): boolean {
    return s.ends.some((t) => {
      const study = this.sessionOf(t).study;
      return study.keepBest && s.end === study.steps;
    });
  }

  /**
   * Checkpoints nobody can need any more: their keys, forgotten by the engine (the
   * caller deletes the files). A saved state is still needed while anything below it
   * in the tree is demanded and not trained (a lost descendant state is re-computed from
   * it), while a trial paused below it may be extended, or, with `keepBest`, while it is
   * a trial's final state (the study's end keeps only the best one).
   */
  collectCheckpoints(): CheckpointKey[] {
    const needed = new Set<CheckpointKey>();
    const visit = (id: StageId): boolean => {
      const s = getStage(this.tree, id);
      let below = false;
      for (const c of shardValues(s.children)) if (visit(c)) below = true;
      const paused = this.pausedAt(s);
      if (s.parent !== null && (below || paused || this.finalOf(s))) {
        needed.add(this.keyOf(s.id));
      }
      return below || paused || (s.refs > 0 && !s.done);
    };
    for (const root of rootIds(this.tree)) visit(root);
    const out: CheckpointKey[] = [];
    for (const key of this.checkpoints) {
      if (!needed.has(key)) {
        this.checkpoints.delete(key);
        out.push(key);
      }
    }
    return out.sort();
  }

  /** The checkpoint key of a trial's final state (the end of its last stage). */
  finalStateKey(trial: TrialId): CheckpointKey {
    return this.keyOf(getTrial(this.tree, trial).leaf);
  }

  /** Whether a stage's end state will be a starting point: a demanded child, or a paused trial. */
  private neededLater(s: Stage): boolean {
    for (const c of childrenOf(this.tree, s.id)) if (c.refs > 0 && !c.done) return true;
    return this.pausedAt(s);
  }

  private workerViews(): WorkerView[] {
    const out: WorkerView[] = [];
    for (const id of this.idle) {
      const w = this.workers.get(id) as WorkerState;
      out.push({
        id: w.id,
        gpu: w.gpu,
        busy: w.busy !== null,
        holds: w.holds,
        holdsNeeded: () =>
          w.holds !== null && !this.saved(w.holds) && this.stateNeeded(w.holds, null),
        lineage: w.lineage,
      });
    }
    return out;
  }

  private gpuViews(): GpuView[] {
    return this.gpuUsed.map((used, index) => ({ index, used }));
  }

  /**
   * The processes a stage may run in: with trainer identities (several studies), only a
   * process of its own trainer; in trial-based mode, only its own trial's.
   */
  private lineageOf(s: Stage): string | null {
    const runtime = this.runtimeOf(s);
    if (this.options.mode === ExecutionMode.trialBased)
      return runtime === null ? s.rep : `${runtime}\u0000${s.rep}`;
    return runtime;
  }

  /** The trainer identity of a stage (its merge key's), or null without identities. */
  private runtimeOf(s: Stage): string | null {
    if (!this.options.identity) return null;
    const v = getTrial(this.tree, s.rep).params[TRAINER_PARAM];
    return typeof v === 'string' ? v : null;
  }

  private launch(s: Stage): boolean {
    const values = stageValues(this.tree, s.id);
    const share = this.options.share(values);
    const lineage = this.lineageOf(s);
    const parent = s.parent as StageId;
    const placement = place({ parent, share, lineage }, this.workerViews(), this.gpuViews(), {
      maxWorkers: this.options.maxWorkers,
      liveWorkers: this.workers.size,
    });
    if (!placement) return false;

    let worker: WorkerState;
    let startProcess = false;
    if (placement.kind === 'cold') {
      if (placement.replace !== null) {
        this.workers.delete(placement.replace);
        this.retiredWorkers.push(placement.replace);
        this.idle.delete(placement.replace);
      }
      worker = {
        id: `w${this.nextWorker++}`,
        gpu: placement.gpu,
        busy: null,
        holds: null,
        lineage,
      };
      this.workers.set(worker.id, worker);
      startProcess = true;
      this.stats.processStarts++;
    } else {
      worker = this.workers.get(placement.worker) as WorkerState;
    }

    // Save what the worker holds if it is about to be lost and someone still needs it.
    let saveFirst: CheckpointKey | null = null;
    const held = worker.holds;
    if (
      held !== null &&
      !this.saved(held) &&
      this.stateNeeded(held, held === parent ? s.id : null)
    ) {
      saveFirst = this.keyOf(held);
      this.checkpoints.add(saveFirst);
      this.stats.checkpointsSaved++;
    }

    // Where the starting state comes from; re-compute lost ancestors if need be.
    const chain: Stage[] = [s];
    let restore: Restore;
    for (;;) {
      const from = (chain[0] as Stage).parent as StageId;
      const p = getStage(this.tree, from);
      if (p.parent === null) {
        restore = { from: 'init' };
        break;
      }
      if (held === from) {
        restore = { from: 'memory', key: this.keyOf(from) };
        break;
      }
      if (this.saved(from)) {
        restore = { from: 'checkpoint', stage: from, key: this.keyOf(from) };
        this.stats.checkpointsLoaded++;
        break;
      }
      chain.unshift(p);
    }

    const trialBasedPause = this.options.mode === ExecutionMode.trialBased && this.pausedAt(s);
    const every = this.options.checkpointEvery;
    const safety = every !== null && Math.floor(s.end / every) > Math.floor(s.start / every);
    // Durable runs keep every state a later stage may start from, so that a crash of the
    // engine (which takes its workers' memory with it) loses no completed stage.
    const durable = this.options.durable === true && (this.neededLater(s) || this.finalOf(s));
    const saveAfter =
      (trialBasedPause || safety || durable) && !this.saved(s.id) ? this.keyOf(s.id) : null;
    if (saveAfter !== null) this.stats.checkpointsSaved++;

    const runs: StageRun[] = chain.map((c) => this.stageRun(c));
    let task: Task = {
      id: this.nextTask++,
      worker: worker.id,
      gpu: worker.gpu,
      startProcess,
      saveFirst,
      restore,
      runs,
      saveAfter,
      endKey: this.keyOf(s.id),
      share,
    };
    const runtime = this.runtimeOf(s);
    if (runtime !== null) task = { ...task, runtime };
    worker.busy = task.id;
    this.idle.delete(worker.id);
    worker.holds = null;
    worker.lineage = lineage;
    this.gpuUsed[worker.gpu] = (this.gpuUsed[worker.gpu] ?? 0) + share;
    // One study owns everything (and trialsThrough would cost O(trials) per launch).
    const owners = this.sessions.length === 1 ? [this.primary] : this.ownersOf(s);
    this.running.set(task.id, {
      task,
      startedAt: this.now,
      stage: s.id,
      start: s.start,
      end: s.end,
      rep: s.rep,
      owners,
    });
    this.runningStages.set(s.id, task.id);
    this.stats.stagesRun++;
    this.stats.stagesRecomputed += chain.length - 1;
    for (const c of chain) this.stats.stepsTrained += c.end - c.start;
    // With several studies, the log says which studies demanded the task (GPU-time credit).
    this.log.push(
      this.sessions.length > 1
        ? { t: this.now, kind: 'task', task, studies: owners.map((x) => x.study.name) }
        : { t: this.now, kind: 'task', task },
    );
    this.charge(
      owners,
      this.stepCost(s) * share,
      chain.reduce((n, c) => n + c.end - c.start, 0),
    );
    this.startedTasks.push(task);
    return true;
  }

  private stageRun(s: Stage): StageRun {
    const rep = getTrial(this.tree, s.rep);
    const params = Object.fromEntries(
      Object.entries(rep.params).filter(([k]) => k !== LINEAGE_PARAM && k !== TRAINER_PARAM),
    );
    return { stage: s.id, start: s.start, end: s.end, params, schedules: rep.schedules };
  }

  private release(r: Running): void {
    this.running.delete(r.task.id);
    this.stale.delete(r);
    if (this.runningStages.get(r.stage) === r.task.id) this.runningStages.delete(r.stage);
    const worker = this.workers.get(r.task.worker);
    if (worker) {
      worker.busy = null;
      this.idle.add(worker.id);
    }
    this.gpuUsed[r.task.gpu] = Math.max(0, (this.gpuUsed[r.task.gpu] ?? 0) - r.task.share);
  }

  /** The stage a running task ends with now (its lower piece if a new trial split it). */
  private currentStage(r: Running): StageId {
    if (this.stageExists(r.stage)) return r.stage;
    const pieces = pathOf(this.tree, r.rep).filter((p) => p.start >= r.start && p.end <= r.end);
    return (pieces[pieces.length - 1] as Stage).id;
  }

  /** Marks the task's stage done; returns the stage whose end state the worker now holds. */
  private markTrained(r: Running): StageId {
    if (this.stageExists(r.stage)) {
      const s = getStage(this.tree, r.stage);
      if (!s.done) this.tree = markDone(this.tree, r.stage);
      return r.stage;
    }
    // A new trial split the stage while it ran. Its last piece is trained; the earlier
    // pieces' end states were passed through, not kept, so they stay to be re-run if a
    // branch needs them.
    const last = this.currentStage(r);
    if (!getStage(this.tree, last).done) this.tree = markDone(this.tree, last, { force: true });
    return last;
  }

  private deliver(stage: StageId, metric: number): void {
    this.metricAt.set(this.keyOf(stage), metric);
    const end = getStage(this.tree, stage).end;
    for (const t of reportsAt(this.tree, stage)) this.report(t, end, metric);
  }

  /** Gives the tuner one metric event (once per trial and step). */
  private report(t: TrialId, step: number, metric: number): void {
    const session = this.sessionOf(t);
    if (session.finished) return;
    const trial = getTrial(this.tree, t);
    const key = `${t}@${step}`;
    if (trial.status !== 'active' || this.delivered.has(key)) return;
    this.delivered.add(key);
    const paused = trial.until === step;
    if (paused) this.pause(t);
    this.log.push({ t: this.now, kind: 'metric', trial: t, step, value: metric });
    session.tuner.onMetric(session.ctx, { trial: t, step, value: metric, paused });
  }

  /**
   * Trials added or extended over stages that are already trained (another trial with the
   * same prefix got there first) get those metrics at once, at no cost: the merge at work.
   */
  private reportTrained(): void {
    while (this.unreported.length > 0 && !this.finished) {
      const t = this.unreported.shift() as TrialId;
      const trial = getTrial(this.tree, t);
      if (trial.status !== 'active') continue;
      const wanted = new Set(trial.reports);
      // Read every metric first: a tuner's callback may grow the tree and split the path.
      const found: { step: number; metric: number }[] = [];
      for (const s of pathOf(this.tree, t)) {
        if (!wanted.has(s.end) || !s.done) continue;
        const metric = this.metricAt.get(this.keyOf(s.id));
        if (metric !== undefined) found.push({ step: s.end, metric });
      }
      for (const { step, metric } of found) this.report(t, step, metric);
    }
  }

  private cancelUndemanded(): void {
    for (const r of [...this.running.values()]) {
      // A task is worth finishing only if its last stage is demanded (upper pieces of a
      // split stage are scheduled on their own if they are).
      const demanded = isDemanded(this.tree, this.currentStage(r));
      if (demanded) continue;
      this.release(r);
      const worker = this.workers.get(r.task.worker);
      if (worker) worker.holds = null;
      this.stats.tasksCancelled++;
      this.log.push({ t: this.now, kind: 'cancel', task: r.task.id });
      this.cancelledTasks.push(r.task.id);
    }
  }
}
