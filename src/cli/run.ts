import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  describeError,
  EnvironmentError,
  InternalError,
  IoError,
  ResumeError,
  StagetreeError,
} from '../errors.js';
import { ExecutionMode, replay } from '../engine/index.js';
import type { Engine, EngineOptions, LogEntry } from '../engine/index.js';
import { startWorkerHub } from '../rpc/index.js';
import { CheckpointStore, StudyStore } from '../store/index.js';
import type { StudyStatus } from '../store/index.js';
import type { Study } from '../study/index.js';
import { createTuner } from '../tuner/index.js';
import { ProcessPool, runWithPool } from '../workers/index.js';
import type { RunStop, WorkerCommand } from '../workers/index.js';
import { engineOptions } from '../workers/sim/index.js';

/** The repository root (dist/cli/.. or src/cli/..): where the worker entry points live. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface RunPaths {
  readonly db: string;
  readonly checkpoints: string;
}

/** Default places: `.stagetree/<name>.db` and `.stagetree/<name>-checkpoints/` beside the study file. */
export function defaultPaths(studyFile: string, study: Study, given: Partial<RunPaths>): RunPaths {
  const dir = join(dirname(resolve(studyFile)), '.stagetree');
  const slug = study.name.replace(/[^A-Za-z0-9._-]+/g, '_');
  return {
    db: given.db ?? join(dir, `${slug}.db`),
    checkpoints: given.checkpoints ?? join(dir, `${slug}-checkpoints`),
  };
}

type RealTrainer = Exclude<Study['trainer'], { kind: 'sim' }>;

function realTrainer(study: Study): RealTrainer {
  if (study.trainer.kind === 'sim') throw new InternalError('a sim trainer has no worker process');
  return study.trainer;
}

function workerCommand(studyFile: string, study: Study): (workerId: string) => WorkerCommand {
  const base = dirname(resolve(studyFile));
  const trainer = realTrainer(study);
  switch (trainer.kind) {
    case 'node':
      return () => ({
        file: process.execPath,
        args: [join(ROOT, 'dist', 'cli', 'worker.js')],
        env: {
          STAGETREE_TRAINER_MODULE: trainer.module.startsWith('.')
            ? resolve(base, trainer.module)
            : trainer.module,
          STAGETREE_TRAINER_EXPORT: trainer.export,
        },
      });
    case 'python':
      ensurePythonStubs(trainer.python);
      return () => ({
        file: trainer.python,
        args: ['-m', 'stagetree.worker'],
        env: {
          PYTHONPATH: [
            join(ROOT, 'python'),
            ...trainer.path.map((p) => resolve(base, p)),
            process.env.PYTHONPATH ?? '',
          ]
            .filter((p) => p !== '')
            .join(':'),
          STAGETREE_TRAINER: trainer.module,
        },
      });
  }
}

/**
 * Loads the trainer the way a worker will (`worker --check`) before anything starts, and
 * returns its identity for the store: the declared `trainer.version`, else the SHA-256
 * of the file that defines it. A trainer that does not load is an `EnvironmentError`
 * with the worker's own explanation.
 */
export function checkTrainer(studyFile: string, study: Study): string {
  const cmd = workerCommand(studyFile, study)('check');
  const r = spawnSync(cmd.file, [...cmd.args, '--check'], {
    env: { ...process.env, ...cmd.env },
    cwd: cmd.cwd,
    encoding: 'utf8',
    timeout: 120_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  const trainer = realTrainer(study);
  const what =
    trainer.kind === 'node'
      ? `node trainer ${trainer.module} (export ${JSON.stringify(trainer.export)})`
      : `python trainer ${trainer.module}`;
  const answer = checkAnswer(r.stdout);
  if (answer?.ok === true && typeof answer.fingerprint === 'string') {
    return trainer.version !== null ? `version:${trainer.version}` : answer.fingerprint;
  }
  const why =
    typeof answer?.error === 'string'
      ? answer.error
      : r.error
        ? describeError(r.error)
        : `${cmd.file} exited with ${r.status ?? r.signal}: ${tail(r.stderr || r.stdout)}`;
  throw new EnvironmentError(`the ${what} cannot be loaded: ${why}`);
}

/** The JSON line `worker --check` prints last, or null. */
function checkAnswer(
  stdout: string | null,
): { ok?: unknown; fingerprint?: unknown; error?: unknown } | null {
  const line = (stdout ?? '').trim().split('\n').pop() ?? '';
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === 'object' && v !== null ? v : null;
  } catch {
    return null;
  }
}

function tail(text: string | null, lines = 8): string {
  return (text ?? '').trim().split('\n').slice(-lines).join('\n') || '(no output)';
}

/** Keeps the store's attempt table (timings, failures, tracebacks) in step with the event log. */
class AttemptLog {
  private readonly open = new Map<number, { attempt: number; worker: string }>();
  private readonly reported = new Map<
    number,
    { readonly seconds: Readonly<Record<string, number>>; readonly detail: string }
  >();

  constructor(private readonly store: StudyStore) {}

  /** What a worker sent with a task's result (the next entry for the task ends its attempt). */
  report(
    task: number,
    info: { readonly seconds: Readonly<Record<string, number>>; readonly detail: string },
  ): void {
    this.reported.set(task, info);
  }

  record(entries: readonly LogEntry[], now: number): void {
    for (const e of entries) {
      switch (e.kind) {
        case 'task': {
          const last = e.task.runs[e.task.runs.length - 1];
          const attempt = this.store.recordAttempt({
            task: e.task.id,
            worker: e.task.worker,
            stage: last?.stage ?? '',
            startedAt: now,
          });
          this.open.set(e.task.id, { attempt, worker: e.task.worker });
          break;
        }
        case 'done':
          this.finish(e.task, now, { outcome: 'done' });
          break;
        case 'fail':
          this.finish(e.task, now, { outcome: 'failed', error: e.message });
          break;
        case 'cancel':
          this.finish(e.task, now, { outcome: 'cancelled' });
          break;
        case 'lost':
          for (const [task, o] of this.open) {
            if (o.worker === e.worker) this.finish(task, now, { outcome: 'lost', error: e.reason });
          }
          break;
        case 'propose':
        case 'fork':
        case 'extend':
        case 'stop':
        case 'metric':
        case 'trialFailed':
        case 'reuse':
        case 'finish':
        case 'submit':
          break;
      }
    }
  }

  private finish(
    task: number,
    now: number,
    end: { outcome: 'done' | 'failed' | 'cancelled' | 'lost'; error?: string },
  ): void {
    const o = this.open.get(task);
    if (!o) return;
    this.open.delete(task);
    const info = this.reported.get(task);
    this.reported.delete(task);
    this.store.finishAttempt(o.attempt, {
      endedAt: now,
      ...end,
      ...(info ? { seconds: info.seconds } : {}),
      ...(info && info.detail !== '' ? { detail: info.detail } : {}),
    });
  }
}

/**
 * Whether to give workers GPUs (CUDA_VISIBLE_DEVICES): never for a CPU-only study;
 * STAGETREE_GPUS=1 or 0 decides; otherwise, whether `nvidia-smi -L` lists any.
 */
function gpusPresent(study: Study): boolean {
  if (study.cpuOnly) return false;
  const forced = process.env.STAGETREE_GPUS;
  if (forced === '1' || forced === '0') return forced === '1';
  const r = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('GPU');
}

/** The Python runtime's generated stubs (python/stagetree/gen, not committed), made anew when the proto changed. */
function ensurePythonStubs(python: string): void {
  const stub = join(ROOT, 'python', 'stagetree', 'gen', 'worker_pb2.py');
  const proto = join(ROOT, 'proto', 'stagetree', 'v1', 'worker.proto');
  if (existsSync(stub) && (!existsSync(proto) || statSync(proto).mtimeMs <= statSync(stub).mtimeMs))
    return;
  const r = spawnSync('bash', [join(ROOT, 'python', 'gen.sh')], {
    env: { ...process.env, PYTHON: python },
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new EnvironmentError(
      `cannot generate the Python worker's protocol stubs: ${(r.stderr || r.stdout).trim()}`,
    );
  }
}

export interface RunOutcome {
  readonly status: StudyStatus;
  /** The best trial's final state, kept when the study sets `keepBest` (the default). */
  readonly bestCheckpoint: string | null;
  readonly resumed: boolean;
  readonly seconds: number;
  readonly paths: RunPaths;
  /** Null when the study finished; else why this run stopped (the study is resumable). */
  readonly stopped: RunStop | null;
  /** Stages marked done from checkpoints an earlier run left (`restart`). */
  readonly reused: number;
}

export interface RunStudyOptions {
  readonly log?: (worker: string, line: string) => void;
  readonly heartbeatTimeout?: number;
  /** `trial-based` runs the baseline (each trial alone) for comparisons. */
  readonly mode?: ExecutionMode;
  /** Sees every new log entry with the pool (tests kill workers from here). */
  readonly onEvent?: (entry: LogEntry, pool: ProcessPool) => void;
  /**
   * Start the study's log afresh (the old one is archived in the store) while reusing
   * every trained state whose checkpoint is still there: the way on when a stored log no
   * longer replays.
   */
  readonly restart?: boolean;
  /** Aborting it stops the run cleanly (the CLI aborts it on SIGINT / SIGTERM). */
  readonly signal?: AbortSignal;
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

/**
 * Compares a stored log with what a fresh engine and tuner decide from it; returns that
 * engine, ready to go on from the log's end.
 */
function checkReplay(study: Study, log: readonly LogEntry[], options: EngineOptions): Engine {
  const how =
    'run it again with --restart to start its log afresh: the tuner runs from the beginning and ' +
    'every trained state whose checkpoint is still there is reused, not trained again';
  let result;
  try {
    result = replay(study, log, createTuner(study), options);
  } catch (e) {
    throw new ResumeError(
      `the stored log of study ${study.name} does not replay (${describeError(e)}); ${how}`,
    );
  }
  const i = result.firstDifference;
  if (i === null) return result.engine;
  const show = (e: LogEntry | undefined): string => {
    if (e === undefined) return 'nothing';
    const text = JSON.stringify(e);
    return text.length > 200 ? `${text.slice(0, 197)}...` : text;
  };
  throw new ResumeError(
    `the stored log of study ${study.name} does not replay: at event ${i + 1} the log has ` +
      `${show(log[i])} but the engine now decides ${show(result.engine.log[i])}; ${how}`,
  );
}

/** The states an earlier log trained, with the metric each gave: what a restart may reuse. */
function trainedStates(entries: readonly LogEntry[]): Map<string, number> {
  const endKey = new Map<number, string>();
  const out = new Map<string, number>();
  for (const e of entries) {
    if (e.kind === 'task') endKey.set(e.task.id, e.task.endKey);
    else if (e.kind === 'done') {
      const key = endKey.get(e.task);
      if (key !== undefined) out.set(key, e.metric);
    } else if (e.kind === 'reuse') out.set(e.key, e.metric);
  }
  return out;
}

/**
 * Runs a study for real on local worker processes: SQLite store, checkpoints on local
 * disk, the engine's gRPC hub on an owner-only Unix socket. Running it again on the same
 * store resumes it: the stored event log is replayed and no completed stage runs again.
 *
 * Before anything starts it checks that the store is free (one engine per store), that
 * the checkpoint folder is writable and that the trainer loads, and, on a resume, that
 * the trainer is the one the study started with and that the log replays. A run that
 * cannot go on (interrupted, or a failure of the environment) leaves the study
 * resumable and says why in `stopped` (and in the store, for `status`).
 */
export async function runStudy(
  studyFile: string,
  study: Study,
  given: Partial<RunPaths> = {},
  options: RunStudyOptions = {},
): Promise<RunOutcome> {
  const paths = defaultPaths(studyFile, study, given);
  checkDbPath(paths.db);
  const checkpoints = new CheckpointStore(paths.checkpoints);
  checkpoints.checkWritable();
  const store = StudyStore.open(paths.db);
  const wall = (): number => Date.now() / 1000;
  try {
    store.acquire(wall());
    const resumed = store.initStudy(study.name, study, wall()) === 'resumed';
    if (resumed && store.status().finished && !options.restart) {
      return {
        status: store.status(),
        resumed,
        seconds: 0,
        paths,
        bestCheckpoint: null,
        stopped: null,
        reused: 0,
      };
    }
    let fingerprint: string;
    try {
      fingerprint = checkTrainer(studyFile, study);
    } catch (e) {
      if (e instanceof StagetreeError) store.setProblem(e.message, wall());
      throw e;
    }
    const stored = store.trainerFingerprint();
    if (stored !== null && stored !== fingerprint && store.eventCount() > 0) {
      throw new ResumeError(
        `the trainer of study ${study.name} changed since it started (${stored} then, ` +
          `${fingerprint} now), and its trained stages came from the old code; restore the ` +
          `code it started with to resume, or start the study afresh in a new store ` +
          `(--db NEW.db --checkpoints NEW_DIR). A trainer that declares "version" in the ` +
          `study is identified by it instead of its file`,
      );
    }
    store.setTrainerFingerprint(fingerprint);
    const engine: EngineOptions = {
      ...engineOptions(study, options.mode ?? ExecutionMode.stageTree),
      durable: true,
    };
    if (options.restart && store.eventCount() > 0) store.restartLog(wall());
    // After a restart, the states the archived log trained (and whose files are still
    // here) are offered: a stage that reaches one is marked done, not trained again.
    const offers = new Map<string, number>();
    for (const [key, metric] of trainedStates(store.archivedEvents()))
      if (checkpoints.has(key)) offers.set(key, metric);
    const resumeFrom = store.events();
    const replayed = resumeFrom.length > 0 ? checkReplay(study, resumeFrom, engine) : null;
    store.loseOpenAttempts(wall(), 'the engine stopped while it ran');
    store.setProblem(null, wall());
    const attempts = new AttemptLog(store);
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
    try {
      pool = new ProcessPool({
        command: workerCommand(studyFile, study),
        engineAddress: hub.address,
        gpus: gpusPresent(study),
        welcome: { kind: 'welcome', checkpointDir: paths.checkpoints, heartbeatSeconds: 1 },
        ...(options.log ? { log: options.log } : {}),
      });
      let discardWarned = false;
      const result = await runWithPool({
        study,
        tuner: createTuner(study),
        engine,
        pool,
        clock: () => performance.now() / 1000,
        sink: (entries) => {
          store.append(entries, wall());
          attempts.record(entries, wall());
          const p = pool;
          if (options.onEvent && p) for (const e of entries) options.onEvent(e, p);
        },
        onResult: (task, info) => attempts.report(task, info),
        resumeFrom,
        ...(replayed ? { replayed } : {}),
        offers,
        discard: (keys) => {
          for (const k of keys) {
            try {
              checkpoints.delete(k);
            } catch (e) {
              // A checkpoint that cannot be deleted costs disk space, not correctness.
              if (!discardWarned) process.stderr.write(`stagetree: warning: ${describeError(e)}\n`);
              discardWarned = true;
            }
          }
        },
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.heartbeatTimeout !== undefined
          ? { heartbeatTimeout: options.heartbeatTimeout }
          : {}),
      });
      if (result.stopped !== null) {
        const why =
          result.stopped.kind === 'interrupted'
            ? `interrupted (${result.stopped.reason}); run it again to resume`
            : `${result.stopped.message}; fix it and run again to resume`;
        store.setProblem(why, wall());
        return {
          status: store.status(),
          resumed,
          seconds: result.seconds,
          paths,
          bestCheckpoint: null,
          stopped: result.stopped,
          reused: result.engine.stats.stagesReused,
        };
      }
      // The study is over: only the best trial's final state may still be wanted.
      const status = store.status();
      const keep = new Set<string>();
      if (study.keepBest && status.best) {
        const key = result.engine.finalStateKey(status.best.trial);
        if (checkpoints.has(key)) keep.add(key);
      }
      try {
        checkpoints.collect(keep, { temporary: true });
      } catch (e) {
        process.stderr.write(`stagetree: warning: ${describeError(e)}\n`);
      }
      return {
        status,
        resumed,
        seconds: result.seconds,
        paths,
        bestCheckpoint: keep.size > 0 ? checkpoints.fileOf([...keep][0] as string) : null,
        stopped: null,
        reused: result.engine.stats.stagesReused,
      };
    } finally {
      await hub.close();
      rmSync(socketDir, { recursive: true, force: true });
    }
  } finally {
    store.close();
  }
}
