import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConflictError } from '../errors.js';
import { ExecutionMode } from '../engine/index.js';
import type { LogEntry } from '../engine/index.js';
import { startWorkerHub } from '../rpc/index.js';
import { CheckpointStore, StudyStore } from '../store/index.js';
import type { StudyStatus } from '../store/index.js';
import type { Study } from '../study/index.js';
import { createTuner } from '../tuner/index.js';
import { ProcessPool, runWithPool } from '../workers/index.js';
import type { WorkerCommand } from '../workers/index.js';
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

function workerCommand(studyFile: string, study: Study): (workerId: string) => WorkerCommand {
  const base = dirname(resolve(studyFile));
  const trainer = study.trainer;
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
    case 'sim':
      throw new Error('internal: a sim trainer has no worker process');
  }
}

/** Keeps the store's attempt table (timings and failures) in step with the event log. */
class AttemptLog {
  private readonly open = new Map<number, { attempt: number; worker: string }>();

  constructor(private readonly store: StudyStore) {}

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
        case 'finish':
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
    this.store.finishAttempt(o.attempt, { endedAt: now, ...end });
  }
}

/**
 * Whether to give workers GPUs (CUDA_VISIBLE_DEVICES): STAGETREE_GPUS=1 or 0 decides;
 * otherwise, whether `nvidia-smi -L` lists any.
 */
function gpusPresent(): boolean {
  const forced = process.env.STAGETREE_GPUS;
  if (forced === '1' || forced === '0') return forced === '1';
  const r = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('GPU');
}

/** The Python runtime's generated stubs (python/stagetree/gen, not committed). */
function ensurePythonStubs(python: string): void {
  if (existsSync(join(ROOT, 'python', 'stagetree', 'gen', 'worker_pb2.py'))) return;
  const r = spawnSync('bash', [join(ROOT, 'python', 'gen.sh')], {
    env: { ...process.env, PYTHON: python },
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new ConflictError(
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
}

/**
 * Runs a study for real on local worker processes: SQLite store, checkpoints on local
 * disk, the engine's gRPC hub on 127.0.0.1. Running it again on the same store resumes
 * it: the stored event log is replayed and no completed stage runs again.
 */
export async function runStudy(
  studyFile: string,
  study: Study,
  given: Partial<RunPaths> = {},
  options: {
    readonly log?: (worker: string, line: string) => void;
    readonly heartbeatTimeout?: number;
    /** `trial-based` runs the baseline (each trial alone) for comparisons. */
    readonly mode?: ExecutionMode;
    /** Sees every new log entry with the pool (tests kill workers from here). */
    readonly onEvent?: (entry: LogEntry, pool: ProcessPool) => void;
  } = {},
): Promise<RunOutcome> {
  const paths = defaultPaths(studyFile, study, given);
  mkdirSync(dirname(paths.db), { recursive: true });
  mkdirSync(paths.checkpoints, { recursive: true });
  const store = StudyStore.open(paths.db);
  try {
    const wall = (): number => Date.now() / 1000;
    const resumed = store.initStudy(study.name, study, wall()) === 'resumed';
    const resumeFrom = resumed ? store.events() : [];
    if (resumed && store.status().finished) {
      return { status: store.status(), resumed, seconds: 0, paths, bestCheckpoint: null };
    }
    const checkpoints = new CheckpointStore(paths.checkpoints);
    store.loseOpenAttempts(wall(), 'the engine stopped while it ran');
    const attempts = new AttemptLog(store);
    let pool: ProcessPool | null = null;
    const hub = await startWorkerHub({
      onConnect: (connection) => {
        if (pool) pool.attach(connection);
        else connection.close();
      },
    });
    try {
      pool = new ProcessPool({
        command: workerCommand(studyFile, study),
        engineAddress: hub.address,
        gpus: gpusPresent(),
        welcome: { kind: 'welcome', checkpointDir: paths.checkpoints, heartbeatSeconds: 1 },
        ...(options.log ? { log: options.log } : {}),
      });
      // Ctrl-C / SIGTERM: stop the workers cleanly and leave; the store holds everything
      // completed, and running the study again resumes it.
      const running = pool;
      const interrupt = (signal: NodeJS.Signals): void => {
        process.stderr.write(`stagetree: ${signal}, stopping workers; run again to resume\n`);
        void running.shutdown(`the engine got ${signal}`).finally(() => {
          store.close();
          process.exit(130);
        });
      };
      process.once('SIGINT', interrupt);
      process.once('SIGTERM', interrupt);
      const result = await runWithPool({
        study,
        tuner: createTuner(study),
        engine: { ...engineOptions(study, options.mode ?? ExecutionMode.stageTree), durable: true },
        pool,
        clock: () => performance.now() / 1000,
        sink: (entries) => {
          store.append(entries, wall());
          attempts.record(entries, wall());
          const p = pool;
          if (options.onEvent && p) for (const e of entries) options.onEvent(e, p);
        },
        resumeFrom,
        discard: (keys) => {
          for (const k of keys) checkpoints.delete(k);
        },
        ...(options.heartbeatTimeout !== undefined
          ? { heartbeatTimeout: options.heartbeatTimeout }
          : {}),
      });
      process.off('SIGINT', interrupt);
      process.off('SIGTERM', interrupt);
      // The study is over: only the best trial's final state may still be wanted.
      const status = store.status();
      const keep = new Set<string>();
      if (study.keepBest && status.best) {
        const key = result.engine.finalStateKey(status.best.trial);
        if (checkpoints.has(key)) keep.add(key);
      }
      checkpoints.collect(keep, { temporary: true });
      return {
        status,
        resumed,
        seconds: result.seconds,
        paths,
        bestCheckpoint: keep.size > 0 ? checkpoints.fileOf([...keep][0] as string) : null,
      };
    } finally {
      await hub.close();
    }
  } finally {
    store.close();
  }
}
