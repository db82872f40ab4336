import type { ExecutionMode } from '../engine/index.js';
import type { EngineOptions, LogEntry } from '../engine/index.js';
import { defaultPaths, Executor } from '../executor/index.js';
import type { ExecutorOptions, RunPaths, StudyOutcome, StudySource } from '../executor/index.js';
import type { StudyStatus } from '../store/index.js';
import type { Study } from '../study/index.js';
import type { ProcessPool, RunStop } from '../workers/index.js';

export { baselinePaths, checkTrainer, defaultPaths } from '../executor/index.js';
export type { RunPaths } from '../executor/index.js';

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
  /** The study's outcome on the executor (steps trained and reused, how it ended). */
  readonly study: StudyOutcome;
  /** The engine options it ran with (what a replay of its log needs). */
  readonly engineOptions: EngineOptions;
}

export interface RunStudyOptions {
  readonly log?: (worker: string, line: string) => void;
  readonly heartbeatTimeout?: number;
  /** `trial-based` runs the baseline (each trial alone) for comparisons. */
  readonly mode?: ExecutionMode;
  /** Every stage on a whole slot (`ExecutorOptions.wholeSlots`): the one-GPU-per-trial baseline. */
  readonly wholeSlots?: boolean;
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
  /** The most worker processes alive at once (default: the largest study's `workers`). */
  readonly workers?: number;
  /** Which checkpoints outlive the studies (`ExecutorOptions.retain`). */
  readonly retain?: 'best' | 'all';
}

function executorOptions(paths: RunPaths, options: RunStudyOptions): ExecutorOptions {
  const { onEvent } = options;
  return {
    db: paths.db,
    checkpoints: paths.checkpoints,
    ...(options.mode !== undefined ? { mode: options.mode } : {}),
    ...(options.wholeSlots === true ? { wholeSlots: true } : {}),
    ...(options.log ? { log: options.log } : {}),
    ...(options.heartbeatTimeout !== undefined
      ? { heartbeatTimeout: options.heartbeatTimeout }
      : {}),
    // The embedded executor's pool is local processes (executor.localProcessPool).
    ...(onEvent
      ? { onEvent: (e: LogEntry, pool: unknown) => onEvent(e, pool as ProcessPool) }
      : {}),
    ...(options.restart ? { restart: true } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.workers !== undefined ? { workers: options.workers } : {}),
    ...(options.retain !== undefined ? { retain: options.retain } : {}),
  };
}

/**
 * Runs a study for real on local worker processes: one study on an embedded executor
 * (SQLite store, checkpoints on local disk, the executor's gRPC hub on an owner-only
 * Unix socket). Running it again on the same store resumes it: the stored event log is
 * replayed and no completed stage runs again.
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
  const executor = await Executor.open(executorOptions(paths, options), [
    { study, file: studyFile },
  ]);
  const outcome = await executor.finish();
  const s = outcome.studies.find((x) => x.name === study.name) as StudyOutcome;
  return {
    status: s.status,
    resumed: s.resumed,
    seconds: outcome.seconds,
    paths,
    bestCheckpoint: s.bestCheckpoint,
    stopped: outcome.stopped,
    reused: outcome.reused,
    study: s,
    engineOptions: outcome.engineOptions as EngineOptions,
  };
}

export interface RunStudiesOutcome {
  readonly studies: readonly StudyOutcome[];
  readonly stopped: RunStop | null;
  readonly seconds: number;
  readonly paths: RunPaths;
}

/**
 * Runs several studies at once on one embedded executor and one pool of local worker
 * processes: each study is capped by its `workers`, `options.workers` sizes the pool, and
 * studies of the same trainer code and static params share their stages. The store
 * (default `.stagetree/executor.db` beside the first study file) holds them all; running
 * again resumes every unfinished one.
 */
export async function runStudies(
  sources: readonly StudySource[],
  given: Partial<RunPaths> = {},
  options: RunStudyOptions = {},
): Promise<RunStudiesOutcome> {
  const first = sources[0] as StudySource;
  const paths = defaultPaths(first.file, { ...first.study, name: 'executor' }, given);
  const executor = await Executor.open(executorOptions(paths, options), sources);
  const outcome = await executor.finish();
  return { studies: outcome.studies, stopped: outcome.stopped, seconds: outcome.seconds, paths };
}
