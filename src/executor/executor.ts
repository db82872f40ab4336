import { mkdtempSync, rmSync, statSync } from 'node:fs';
import stringify from 'fast-json-stable-stringify';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  describeError,
  EnvironmentError,
  ExecutorClosedError,
  IoError,
  NotFoundError,
  ResumeError,
  StagetreeError,
  ValidationError,
} from '../errors.js';
import { Engine, entryStudy, ExecutionMode, replay } from '../engine/index.js';
import type { EngineOptions, LogEntry, SubmitOptions } from '../engine/index.js';
import { startWorkerHub } from '../rpc/index.js';
import { CheckpointStore, StudyStore } from '../store/index.js';
import type { StudyStatus } from '../store/index.js';
import type { Study } from '../study/index.js';
import { createTuner } from '../tuner/index.js';
import { Execution, fitsInventory, gpuList, ProcessPool } from '../workers/index.js';
import type { RunStop, WorkerCommand, WorkerPool } from '../workers/index.js';
import { engineOptions } from '../workers/sim/index.js';
import { AttemptLog } from './attempts.js';
import { checkTrainer, gpusPresent, workerCommand } from './local.js';

/**
 * The checkpoint store port: where trained states live. A local folder now (workers are
 * given its path; a container gets it mounted); shared storage across hosts later.
 */
export interface Checkpoints {
  /** The path workers read and write checkpoints under. */
  readonly dir: string;
  checkWritable(): void;
  has(key: string): boolean;
  delete(key: string): boolean;
  fileOf(key: string): string;
  /** Deletes every checkpoint not in `keep` (and, with `temporary`, half-written files). */
  collect(keep: ReadonlySet<string>, options?: { readonly temporary?: boolean }): unknown;
}

/** A study given to an executor: the parsed study and the file its trainer paths are relative to. */
export interface StudySource {
  readonly study: Study;
  /** The study file (a trainer's relative module and path resolve against its folder). */
  readonly file: string;
  /** Weight in fair share between studies (default 1). */
  readonly priority?: number;
}

/** What a pool backend is given to start workers. */
export interface PoolEnvironment {
  /** The command that runs a worker of `runtime` (a trainer identity, `Task.runtime`). */
  readonly command: (workerId: string, runtime: string | null) => WorkerCommand;
  readonly checkpointDir: string;
  /** Whether workers get GPUs. */
  readonly gpus: boolean;
  readonly log?: (worker: string, line: string) => void;
}

/** A started pool and how to release what it needed (a hub, a socket folder). */
export interface PoolHandle {
  readonly pool: WorkerPool;
  close(): Promise<void>;
}

/** Makes the executor's pool: local processes by default (`localProcessPool`). */
export type PoolFactory = (env: PoolEnvironment) => Promise<PoolHandle>;

export interface ExecutorOptions {
  /** The store file: one SQLite file holds every study of the executor and its log. */
  readonly db: string;
  readonly checkpoints: string | Checkpoints;
  /** The most worker processes alive at once (the pool's size). Default: the largest study's `workers`. */
  readonly workers?: number;
  /** `trial-based` runs the baseline (each trial alone) for comparisons. */
  readonly mode?: ExecutionMode;
  /**
   * Every stage takes a whole slot (GPU), whatever the study's `resources.gpus`: with
   * `mode: trial-based`, the one-GPU-per-trial baseline of `run --baseline trial-based`.
   */
  readonly wholeSlots?: boolean;
  readonly pool?: PoolFactory;
  readonly log?: (worker: string, line: string) => void;
  readonly heartbeatTimeout?: number;
  /** Sees every new log entry with the pool (tests kill workers from here). */
  readonly onEvent?: (entry: LogEntry, pool: WorkerPool) => void;
  /**
   * Start the log afresh (the old one is archived in the store) while reusing every
   * trained state whose checkpoint is still there: the way on when a stored log no longer
   * replays.
   */
  readonly restart?: boolean;
  /** Aborting it stops the executor cleanly (the CLI aborts it on SIGINT / SIGTERM). */
  readonly signal?: AbortSignal;
  /** Keep running when every study has finished, for studies submitted later. */
  readonly stayOpen?: boolean;
  /**
   * Which checkpoints outlive the studies: `best`, each study's best final state (the
   * default for a store of one study); `all`, every trained state, so that a study
   * submitted later (next week's re-tune) starts from them (the default for a store of
   * several studies).
   */
  readonly retain?: 'best' | 'all';
  /**
   * Resume the unfinished studies the store holds even when they are not given, from
   * their stored JSON (the engine server stores trainer paths made absolute). Off: such
   * a study is an error asking for its file.
   */
  readonly resumeStored?: boolean;
}

/** How a study ended on this executor. */
export type StudyEnd = 'finished' | 'cancelled' | 'stopped';

export interface StudyOutcome {
  readonly name: string;
  /** `stopped`: the executor stopped first (interrupted, an environment failure); resumable. */
  readonly end: StudyEnd;
  readonly status: StudyStatus;
  /** The study was in the store already (this run resumed or reported it). */
  readonly resumed: boolean;
  /** Steps its own tasks trained (a task several studies demanded is split between them). */
  readonly stepsTrained: number;
  /** Steps its trials needed that another study had trained or was training. */
  readonly stepsReused: number;
  /** The best trial's final state, kept when the study sets `keepBest` (the default). */
  readonly bestCheckpoint: string | null;
}

/** A study on an executor: await its outcome, or cancel it. */
export interface StudyHandle {
  readonly name: string;
  result(): Promise<StudyOutcome>;
  cancel(): void;
}

/** The executor's outcome when it closes. */
export interface ExecutorOutcome {
  readonly studies: readonly StudyOutcome[];
  /** Null when every study ended; else why the executor stopped (the studies are resumable). */
  readonly stopped: RunStop | null;
  readonly seconds: number;
  /** Stages marked done from checkpoints an earlier log left (`restart`). */
  readonly reused: number;
  /** The engine options it ran with (what a replay of its log needs); null: it never ran. */
  readonly engineOptions: EngineOptions | null;
}

/** Throws an `IoError` unless `db` can be a study store file (its folder is creatable). */
function checkDbPath(db: string): void {
  let st;
  try {
    st = statSync(db);
  } catch {
    return; // does not exist yet: StudyStore.open reports folder problems
  }
  if (!st.isFile()) {
    throw new IoError(
      db,
      `is ${st.isDirectory() ? 'a directory' : 'not a regular file'}; --db must name a study store file`,
    );
  }
}

/** The states an earlier log trained, with the metric each gave: what a restart may reuse. */
function trainedStates(entries: readonly LogEntry[]): Map<string, number> {
  const endKey = new Map<number, string>();
  const out = new Map<string, number>();
  for (const e of entries) {
    if (e.kind === 'task') endKey.set(e.task.id, e.task.endKey);
    else if (e.kind === 'cut') endKey.set(e.task, e.key);
    else if (e.kind === 'done') {
      const key = endKey.get(e.task);
      if (key !== undefined) out.set(key, e.metric);
    } else if (e.kind === 'reuse') out.set(e.key, e.metric);
  }
  return out;
}

const HOW_TO_RESTART =
  'run it again with --restart to start its log afresh: the tuners run from the beginning and ' +
  'every trained state whose checkpoint is still there is reused, not trained again';

/** Shortens a log entry for an error message. */
function show(e: LogEntry | undefined): string {
  if (e === undefined) return 'nothing';
  const text = JSON.stringify(e);
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

/**
 * The identity of a study's trainer in merge keys: its kind, module and export (or image)
 * and the fingerprint of its code (or its declared version). Different code never
 * shares a stage.
 */
export function trainerIdentity(study: Study, fingerprint: string): string {
  const t = study.trainer;
  switch (t.kind) {
    case 'node':
      return `node:${t.module}#${t.export}@${fingerprint}`;
    case 'python':
      return `python:${t.module}@${fingerprint}`;
    case 'sim':
      return `sim@${fingerprint}`;
  }
}

/** Local worker processes dialling the executor's gRPC hub on an owner-only Unix socket. */
export const localProcessPool: PoolFactory = async (env) => {
  let pool: ProcessPool | null = null;
  // An owner-only folder for the hub's socket: only this user's processes can dial it.
  const socketDir = mkdtempSync(join(tmpdir(), 'stagetree-hub-'));
  const hub = await startWorkerHub({
    socket: join(socketDir, 'hub.sock'),
    admit: (registration) =>
      pool
        ? pool.admit(registration)
        : { code: 'unauthenticated', message: 'no workers are expected yet' },
    onConnect: (connection) => {
      if (pool) pool.attach(connection);
      else connection.close();
    },
  });
  pool = new ProcessPool({
    command: env.command,
    engineAddress: hub.address,
    gpus: env.gpus,
    welcome: { kind: 'welcome', checkpointDir: env.checkpointDir, heartbeatSeconds: 1 },
    ...(env.log ? { log: env.log } : {}),
  });
  return {
    pool,
    close: async () => {
      await hub.close();
      rmSync(socketDir, { recursive: true, force: true });
    },
  };
};

interface Member {
  readonly study: Study;
  readonly file: string | null;
  readonly resumed: boolean;
  settled: StudyOutcome | null;
  readonly waiters: ((o: StudyOutcome) => void)[];
  cancelled: boolean;
  /** The checkpoint key of its best trial's final state, when kept. */
  bestKey: string | null;
}

/**
 * One executor, many studies: a store (one SQLite file for all its studies and its event
 * log), a checkpoint store, a worker pool and one engine whose stage forest the studies
 * share. Studies of the same trainer code and static params share stages: a stage one
 * study trained or is training is not trained again for another, whose tuner hears of it
 * at once; each study is capped by its `workers`, and studies share the pool by fair
 * share (weighted by `priority`).
 *
 * Opening an executor on a store that holds a log resumes it: the log is replayed
 * through a fresh engine and fresh tuners, checked against what they decide, and every
 * unfinished study goes on; no completed stage trains again.
 */
export class Executor {
  private readonly members = new Map<string, Member>();
  private readonly runtimes = new Map<string, (workerId: string) => WorkerCommand>();
  private readonly fingerprints = new Map<string, string>();
  private readonly listeners: ((entries: readonly LogEntry[]) => void)[] = [];
  private closed: Promise<ExecutorOutcome> | null = null;
  private engineOptionsUsed: EngineOptions | null = null;
  private startedAt = 0;

  private constructor(
    private readonly options: ExecutorOptions,
    private readonly store: StudyStore,
    private readonly checkpoints: Checkpoints,
    private readonly shared: boolean,
    private execution: Execution | null,
    private poolHandle: PoolHandle | null,
  ) {}

  /** The studies on this executor, in the order they joined. */
  get studyNames(): readonly string[] {
    return [...this.members.keys()];
  }

  /** The engine (read-only use: tests and status displays). */
  get engine(): Engine {
    if (!this.execution) throw new ExecutorClosedError('-', 'the executor has not started');
    return this.execution.engine;
  }

  /**
   * Opens an executor on `options.db` and starts `sources` (new ones are added; ones the
   * store holds already are resumed, or reported when they finished). A study the store
   * holds unfinished must be among `sources` (its trainer's files are found from its
   * study file). Checks first that the store is free, the checkpoint folder writable and
   * every trainer loads (and is the code its study started with).
   */
  static async open(options: ExecutorOptions, sources: readonly StudySource[]): Promise<Executor> {
    if (sources.length === 0 && !options.stayOpen)
      throw new ValidationError('studies', 'at least one study', []);
    const names = new Set<string>();
    for (const [i, s] of sources.entries()) {
      if (names.has(s.study.name)) {
        throw new ValidationError(
          ['studies', i, 'name'],
          'a name no other study given has',
          s.study.name,
        );
      }
      names.add(s.study.name);
      const metric = (sources[0] as StudySource).study.metric.name;
      if (s.study.metric.name !== metric)
        throw sameMetric(['studies', i, 'metric', 'name'], metric, s);
    }
    checkDbPath(options.db);
    const checkpoints =
      typeof options.checkpoints === 'string'
        ? new CheckpointStore(options.checkpoints)
        : options.checkpoints;
    checkpoints.checkWritable();
    const store = StudyStore.open(options.db);
    const wall = (): number => Date.now() / 1000;
    try {
      store.acquire(wall());
      const before = new Set(store.studyNames());
      for (const s of sources) store.initStudy(s.study.name, s.study, wall());
      const events = store.events();
      // A log an earlier release wrote (tasks without a trainer identity) ran one study alone.
      const legacy = events.some((e) => e.kind === 'task' && e.task.runtime === undefined);
      const all = store.studyNames();
      if (legacy && all.length > 1) {
        throw new ResumeError(
          `the store ${store.file} holds study ${all[0] ?? ''}, run alone by an earlier release; ` +
            `studies that share an executor need a store of their own (--db NEW.db)`,
        );
      }
      const executor = new Executor(options, store, checkpoints, !legacy, null, null);
      try {
        await executor.start(sources, before, events);
      } catch (e) {
        // Nothing may outlive a failed start: the workers and the hub go too.
        if (executor.execution) {
          executor.execution.stop({ kind: 'interrupted', reason: describeError(e) });
          await executor.execution.close();
        }
        await executor.poolHandle?.close();
        throw e;
      }
      return executor;
    } catch (e) {
      store.close();
      throw e;
    }
  }

  private async start(
    sources: readonly StudySource[],
    before: ReadonlySet<string>,
    stored: readonly LogEntry[],
  ): Promise<void> {
    const { store, options } = this;
    const wall = (): number => Date.now() / 1000;
    const given = new Map(sources.map((s) => [s.study.name, s]));
    const names = store.studyNames();
    const unfinished = new Set(store.unfinished());
    const cancelled = new Set(
      stored.flatMap((e) =>
        e.kind === 'finish' && e.cancelled === true ? [entryStudy(e, names[0] ?? '')] : [],
      ),
    );
    // Every study of the store joins: the given ones from their files, the others from the store.
    for (const name of names) {
      const source = given.get(name);
      const finished = !unfinished.has(name);
      const study = source?.study ?? storedStudy(store, name);
      if (!source && !finished && !options.restart && !options.resumeStored) {
        throw new ResumeError(
          `the store ${store.file} holds study ${name}, unfinished; give its study file too so ` +
            `that it can resume (its trainer is found from the file's folder)`,
        );
      }
      this.members.set(name, {
        study,
        // A stored study resumed without its file: its trainer paths are absolute.
        file:
          source?.file ??
          (options.resumeStored && !finished ? join(dirname(store.file), `${name}.json`) : null),
        resumed: before.has(name),
        settled: null,
        waiters: [],
        cancelled: cancelled.has(name),
        bestKey: null,
      });
    }
    // Trainers: each unfinished study's must load and be the code its log was made with.
    for (const [name, m] of this.members) {
      const stored = store.trainerFingerprint(name);
      if (m.file === null || (!unfinished.has(name) && !options.restart)) {
        if (stored !== null) this.fingerprints.set(name, stored);
        continue;
      }
      this.fingerprints.set(name, this.loadTrainer(m.study, m.file, stored));
    }
    if (options.restart && store.eventCount() > 0) store.restartLog(wall());
    // An engine server on an empty store starts its engine with the first study submitted.
    if (this.members.size === 0) return;
    await this.launch(options.restart ? [] : stored, given);
  }

  /** Makes the engine (replaying `log`), the pool and the execution, and begins. */
  private async launch(
    log: readonly LogEntry[],
    given: ReadonlyMap<string, StudySource>,
  ): Promise<void> {
    const { store, options } = this;
    const wall = (): number => Date.now() / 1000;
    const primary = [...this.members.values()][0] as Member;
    const engineOpts = this.engineOptions(primary.study);
    this.engineOptionsUsed = engineOpts;
    // After a restart, the states the archived log trained (and whose files are still
    // here) are offered: a stage that reaches one is marked done, not trained again.
    const offers = new Map<string, number>();
    for (const [key, metric] of trainedStates(store.archivedEvents()))
      if (this.checkpoints.has(key)) offers.set(key, metric);
    const engine =
      log.length > 0
        ? this.checkReplay(primary.study, log, engineOpts)
        : new Engine(primary.study, createTuner(primary.study), engineOpts);
    for (const name of this.members.keys()) {
      store.setProblem(null, wall(), name);
    }
    store.loseOpenAttempts(wall(), 'the engine stopped while it ran');
    const attempts = new AttemptLog(store);
    const pool = await (options.pool ?? localProcessPool)({
      command: (workerId, runtime) => this.commandFor(workerId, runtime),
      checkpointDir: this.checkpoints.dir,
      gpus: [...this.members.values()].some((m) => m.file !== null && gpusPresent(m.study)),
      ...(options.log ? { log: options.log } : {}),
    });
    this.poolHandle = pool;
    const inventory = pool.pool.inventory();
    if (!fitsInventory(inventory, engineOpts.gpus)) {
      throw new EnvironmentError(
        `the studies plan for ${engineOpts.gpus} GPUs (resources.cluster of study ${primary.study.name}), ` +
          `and the pool has only ${gpuList(inventory).length} (${gpuList(inventory)
            .map((g) => `${g.host}:${g.device}`)
            .join(', ')})`,
      );
    }
    let discardWarned = false;
    const execution = new Execution({
      engine,
      pool: pool.pool,
      clock: () => performance.now() / 1000,
      sink: (entries) => {
        store.append(entries, wall());
        attempts.record(entries, wall());
        if (options.onEvent) for (const e of entries) options.onEvent(e, pool.pool);
        for (const l of [...this.listeners]) l(entries);
      },
      onResult: (task, info) => attempts.report(task, info),
      onChange: () => this.settle(),
      ...(options.heartbeatTimeout !== undefined
        ? { heartbeatTimeout: options.heartbeatTimeout }
        : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.stayOpen ? { stayOpen: true } : {}),
      // Kept states wait for the studies that come next; else unneeded ones go at once.
      ...(this.retain() === 'all'
        ? {}
        : {
            discard: (keys: readonly string[]) => {
              for (const k of keys) {
                try {
                  this.checkpoints.delete(k);
                } catch (e) {
                  // A checkpoint that cannot be deleted costs disk space, not correctness.
                  if (!discardWarned)
                    process.stderr.write(`stagetree: warning: ${describeError(e)}\n`);
                  discardWarned = true;
                }
              }
            },
          }),
    });
    this.execution = execution;
    this.startedAt = performance.now() / 1000;
    execution.begin(log, offers);
    // Studies the log has not submitted yet join now, in the order given.
    for (const [name, m] of this.members) {
      if (engine.studyNamed(name) !== undefined) continue;
      const priority = given.get(name)?.priority;
      execution.submit(
        m.study,
        createTuner(m.study),
        priority !== undefined ? { priority } : ({} satisfies SubmitOptions),
      );
    }
    void execution.ended.then(() => this.settle());
    this.settle();
  }

  /** Loads a study's trainer (`worker --check`) and checks it is the code its log was made with. */
  private loadTrainer(study: Study, file: string, stored: string | null): string {
    const wall = Date.now() / 1000;
    let fingerprint: string;
    if (study.trainer.kind === 'sim') {
      // The simulated trainer is its settings.
      fingerprint = stringify(study.trainer);
    } else {
      try {
        fingerprint = checkTrainer(file, study);
      } catch (e) {
        if (e instanceof StagetreeError) this.store.setProblem(e.message, wall, study.name);
        throw e;
      }
    }
    if (stored !== null && stored !== fingerprint && this.store.events(study.name).length > 0) {
      throw new ResumeError(
        `the trainer of study ${study.name} changed since it started (${stored} then, ` +
          `${fingerprint} now), and its trained stages came from the old code; restore the ` +
          `code it started with to resume, or start the study afresh in a new store ` +
          `(--db NEW.db --checkpoints NEW_DIR). A trainer that declares "version" in the ` +
          `study is identified by it instead of its file`,
      );
    }
    this.store.setTrainerFingerprint(fingerprint, study.name);
    if (study.trainer.kind !== 'sim') {
      this.runtimes.set(trainerIdentity(study, fingerprint), workerCommand(file, study));
    }
    return fingerprint;
  }

  private commandFor(workerId: string, runtime: string | null): WorkerCommand {
    const make =
      runtime !== null
        ? this.runtimes.get(runtime)
        : this.runtimes.size === 1
          ? [...this.runtimes.values()][0]
          : undefined;
    if (!make) {
      throw new ExecutorClosedError(
        '-',
        `no trainer is known for worker ${workerId} (runtime ${runtime ?? 'none'})`,
      );
    }
    return make(workerId);
  }

  private engineOptions(primary: Study): EngineOptions {
    const base = engineOptions(primary, this.options.mode ?? ExecutionMode.stageTree);
    const workers =
      this.options.workers ?? Math.max(...[...this.members.values()].map((m) => m.study.workers));
    return {
      ...base,
      ...(this.options.wholeSlots === true ? { share: () => 1 } : {}),
      maxWorkers: workers,
      durable: true,
      ...(this.shared
        ? {
            studyCaps: true,
            identity: (study: Study) =>
              trainerIdentity(study, this.fingerprints.get(study.name) ?? 'unknown'),
          }
        : {}),
    };
  }

  /** Replays the stored log through a fresh engine and tuners; the engine goes on from it. */
  private checkReplay(primary: Study, log: readonly LogEntry[], options: EngineOptions): Engine {
    const names = [...this.members.keys()];
    const whose =
      names.length === 1
        ? `study ${names[0] ?? ''}`
        : `the studies ${names.join(', ')} (${this.store.file})`;
    let result;
    try {
      result = replay(primary, log, createTuner(primary), options, (name) => {
        const m = this.members.get(name);
        if (!m)
          throw new ResumeError(`the log submits study ${name}, which the store does not hold`);
        return { study: m.study, tuner: createTuner(m.study) };
      });
    } catch (e) {
      throw new ResumeError(
        `the stored log of ${whose} does not replay (${describeError(e)}); ${HOW_TO_RESTART}`,
      );
    }
    const i = result.firstDifference;
    if (i === null) return result.engine;
    throw new ResumeError(
      `the stored log of ${whose} does not replay: at event ${i + 1} the log has ` +
        `${show(log[i])} but the engine now decides ${show(result.engine.log[i])}; ${HOW_TO_RESTART}`,
    );
  }

  /**
   * Adds a study to the running executor (its trainer is checked first). A study of the
   * same trainer code and static params as another shares its stages.
   */
  async submit(source: StudySource): Promise<StudyHandle> {
    const execution = this.execution;
    const name = source.study.name;
    if (this.closed || execution?.stopped) {
      throw new ExecutorClosedError(name, 'the executor is closed');
    }
    if (!this.shared) {
      throw new ExecutorClosedError(
        name,
        `the store ${this.store.file} holds a study an earlier release ran alone; ` +
          'studies that share an executor need a store of their own',
      );
    }
    if (this.members.has(name)) {
      throw new ValidationError('name', 'a study name not on this executor yet', name);
    }
    const first = [...this.members.values()][0];
    const metric = first?.study.metric.name ?? source.study.metric.name;
    if (source.study.metric.name !== metric) throw sameMetric(['metric', 'name'], metric, source);
    const wall = Date.now() / 1000;
    const created = this.store.initStudy(name, source.study, wall) === 'created';
    this.fingerprints.set(
      name,
      this.loadTrainer(source.study, source.file, this.store.trainerFingerprint(name)),
    );
    this.members.set(name, {
      study: source.study,
      file: source.file,
      resumed: !created,
      settled: null,
      waiters: [],
      cancelled: false,
      bestKey: null,
    });
    if (execution) {
      execution.submit(
        source.study,
        createTuner(source.study),
        source.priority !== undefined ? { priority: source.priority } : {},
      );
    } else {
      // The first study of an empty executor starts its engine.
      await this.launch([], new Map([[name, source]]));
    }
    this.settle();
    return this.handle(name);
  }

  /** Pauses a study: none of its stages starts until `resume`; what runs goes on to its end. */
  pause(name: string): void {
    this.requireMember(name);
    this.execution?.pause(name);
  }

  /** Resumes a paused study. */
  resume(name: string): void {
    this.requireMember(name);
    this.execution?.resume(name);
  }

  /** Where a study stands: running, paused, or how it ended. */
  state(name: string): StudyEnd | 'running' | 'paused' {
    const m = this.requireMember(name);
    if (m.settled) return m.settled.end;
    return this.execution?.engine.studyPaused(name) === true ? 'paused' : 'running';
  }

  /** Every new log entry, as it is stored; the returned function unsubscribes. */
  subscribe(listener: (entries: readonly LogEntry[]) => void): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** The store's view of a study (trials, best, GPU time, problem). */
  status(name: string): StudyStatus {
    this.requireMember(name);
    return this.store.status(name);
  }

  /** Steps a study's own tasks trained and steps it reused (see `StudyOutcome`). */
  steps(name: string): { readonly trained: number; readonly reused: number } {
    const m = this.requireMember(name);
    if (m.settled) return { trained: m.settled.stepsTrained, reused: m.settled.stepsReused };
    const engine = this.execution?.engine;
    if (!engine) return { trained: 0, reused: 0 };
    const s = engine.sessionSteps().get(name === engine.study.name ? '' : name);
    return { trained: s?.trained ?? 0, reused: s?.reused ?? 0 };
  }

  private requireMember(name: string): Member {
    const m = this.members.get(name);
    if (!m)
      throw new NotFoundError(
        'study',
        name,
        `the executor runs ${this.studyNames.join(', ') || 'no study'}`,
      );
    return m;
  }

  /** The handle of a study on this executor. */
  handle(name: string): StudyHandle {
    if (!this.members.has(name)) {
      throw new ValidationError('name', `one of ${this.studyNames.join(', ')}`, name);
    }
    return {
      name,
      result: () => this.result(name),
      cancel: () => this.cancel(name),
    };
  }

  /** Waits until a study has ended (finished, cancelled, or the executor stopped). */
  result(name: string): Promise<StudyOutcome> {
    const m = this.members.get(name);
    if (!m) return Promise.reject(new ValidationError('name', 'a study on this executor', name));
    if (m.settled) return Promise.resolve(m.settled);
    return new Promise((resolve) => m.waiters.push(resolve));
  }

  /** Cancels a study: its trials stop; a stage another study still demands goes on. */
  cancel(name: string): void {
    const m = this.members.get(name);
    if (!m || m.settled || !this.execution) return;
    m.cancelled = true;
    this.execution.cancel(name);
  }

  /** Resolves the handles of studies that ended. */
  private settle(): void {
    const execution = this.execution;
    if (!execution) return;
    const engine = execution.engine;
    const stopped = execution.stopped;
    let steps: ReturnType<Engine['sessionSteps']> | null = null;
    for (const [name, m] of this.members) {
      if (m.settled) continue;
      const finished = this.isFinished(engine, name);
      if (!finished && stopped === null) continue;
      steps ??= engine.sessionSteps();
      const session = name === engine.study.name ? '' : name;
      const s = steps.get(session);
      const end: StudyEnd = finished ? (m.cancelled ? 'cancelled' : 'finished') : 'stopped';
      if (end === 'stopped' && stopped) {
        const why =
          stopped.kind === 'interrupted'
            ? `interrupted (${stopped.reason}); run it again to resume`
            : `${stopped.message}; fix it and run again to resume`;
        this.store.setProblem(why, Date.now() / 1000, name);
      }
      const status = this.store.status(name);
      m.bestKey = this.bestKey(engine, m.study, status);
      m.settled = {
        name,
        end,
        status,
        resumed: m.resumed,
        stepsTrained: s?.trained ?? 0,
        stepsReused: s?.reused ?? 0,
        bestCheckpoint: m.bestKey === null ? null : this.checkpoints.fileOf(m.bestKey),
      };
      for (const w of m.waiters.splice(0)) w(m.settled);
    }
  }

  private isFinished(engine: Engine, name: string): boolean {
    if (engine.studyNamed(name) === undefined) return !this.store.unfinished().includes(name);
    return engine.sessionFinished(name === engine.study.name ? '' : name);
  }

  private bestKey(engine: Engine, study: Study, status: StudyStatus): string | null {
    if (!study.keepBest || !status.best) return null;
    try {
      const key = engine.finalStateKey(status.best.trial);
      return this.checkpoints.has(key) ? key : null;
    } catch {
      return null; // a trial an earlier log knew, which this engine never saw
    }
  }

  /**
   * Stops taking work when studies still run (they stay resumable), shuts the pool down,
   * keeps the checkpoints a later study or user may want (`retain`) and releases the
   * store.
   */
  close(): Promise<ExecutorOutcome> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  /** Waits until every study on the executor has ended, then closes it. */
  async finish(): Promise<ExecutorOutcome> {
    // Studies submitted while it waits are waited for too.
    for (;;) {
      const open = this.studyNames.filter((n) => this.members.get(n)?.settled === null);
      if (open.length === 0) break;
      await Promise.all(open.map((n) => this.result(n)));
    }
    return this.close();
  }

  private async shutdown(): Promise<ExecutorOutcome> {
    const execution = this.execution;
    try {
      if (!execution) {
        // An engine server that never got a study.
        return { studies: [], stopped: null, seconds: 0, reused: 0, engineOptions: null };
      }
      const open = this.studyNames.some((n) => this.members.get(n)?.settled === null);
      // An executor waiting for more studies, all of its own ended, closes without a stop.
      let idle = false;
      if (open) execution.stop({ kind: 'interrupted', reason: 'the executor was closed' });
      else if (this.options.stayOpen && execution.stopped === null) {
        execution.stop({ kind: 'interrupted', reason: 'closed' });
        idle = true;
      }
      const result = await execution.close();
      this.settle();
      const stopped = idle ? null : result.stopped;
      if (stopped === null) this.collect(execution.engine);
      return {
        studies: this.studyNames.map((n) => this.members.get(n)?.settled as StudyOutcome),
        stopped,
        seconds: performance.now() / 1000 - this.startedAt,
        reused: execution.engine.stats.stagesReused,
        engineOptions: this.engineOptionsUsed,
      };
    } finally {
      try {
        await this.poolHandle?.close();
      } finally {
        this.store.close();
      }
    }
  }

  private retain(): 'best' | 'all' {
    return this.options.retain ?? (this.members.size > 1 ? 'all' : 'best');
  }

  /** Deletes the checkpoints nobody will want (see `retain`). */
  private collect(engine: Engine): void {
    const keep = new Set<string>();
    if (this.retain() === 'all') for (const k of engine.inspect().checkpoints) keep.add(k);
    for (const m of this.members.values()) if (m.bestKey !== null) keep.add(m.bestKey);
    try {
      this.checkpoints.collect(keep, { temporary: true });
    } catch (e) {
      process.stderr.write(`stagetree: warning: ${describeError(e)}\n`);
    }
  }
}

/** Studies on one executor report one metric (a shared stage has one value at its end). */
function sameMetric(path: (string | number)[], metric: string, s: StudySource): ValidationError {
  return new ValidationError(
    path,
    `${JSON.stringify(metric)}, the metric of the executor's studies (a stage they share has one value)`,
    s.study.metric.name,
  );
}

/** A study the store holds (its stored JSON is the parsed study, plain data). */
function storedStudy(store: StudyStore, name: string): Study {
  const json = store.study(name).json;
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (e) {
    throw new ResumeError(
      `the store ${store.file} holds study ${name} unreadably: ${describeError(e)}`,
    );
  }
  if (typeof value !== 'object' || value === null || (value as { name?: unknown }).name !== name) {
    throw new ResumeError(`the store ${store.file} holds study ${name} unreadably`);
  }
  return value as Study;
}
