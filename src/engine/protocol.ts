import type { CheckpointKey, Task, TaskId } from './types.js';

/**
 * The worker protocol in domain terms (the wire form is `proto/stagetree/v1/worker.proto`,
 * converted by `src/rpc/`). Engine-side code and the TypeScript worker runtime speak
 * these; only the RPC layer sees protobuf.
 */

export const PROTOCOL = 'stagetree.v1';

/** The largest message either side sends or accepts, in bytes (both directions, every language). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** A failure's message is cut to this many characters (the rest is counted, not kept). */
export const MAX_ERROR_MESSAGE_CHARS = 4096;
/** A failure's detail (stack, traceback) is cut to this many characters. */
export const MAX_ERROR_DETAIL_CHARS = 65536;

/** `text` cut to `max` characters, saying how many were dropped. */
export function truncateText(text: string, max: number): string {
  if (text.length <= max) return text;
  const note = ` ... [${text.length - max} more characters cut]`;
  return text.slice(0, Math.max(0, max - note.length)) + note;
}

/** The environment variable that hands a worker its secret (see `Register.secret`). */
export const WORKER_SECRET_ENV = 'STAGETREE_WORKER_SECRET';

export type WorkerToEngine =
  | {
      readonly kind: 'register';
      readonly workerId: string;
      readonly language: 'typescript' | 'python';
      readonly protocol: string;
      readonly pid: number;
      readonly gpus: readonly number[];
      readonly gpuShare: number;
      /** Checkpoint key of the state held in memory, or null. */
      readonly holds: CheckpointKey | null;
      /** Proof that this engine started the worker (STAGETREE_WORKER_SECRET). */
      readonly secret: string;
    }
  | { readonly kind: 'heartbeat'; readonly taskId: TaskId | null }
  | { readonly kind: 'progress'; readonly taskId: TaskId; readonly step: number }
  /**
   * The answer to `cut`: the worker stopped the task's last run at `step` (a boundary
   * strictly inside it) and waits, holding the state, for `saveCut`.
   */
  | { readonly kind: 'cutAt'; readonly taskId: TaskId; readonly step: number }
  | {
      readonly kind: 'done';
      readonly taskId: TaskId;
      readonly metrics: Readonly<Record<string, number>>;
      readonly seconds: Readonly<Record<string, number>>;
    }
  | {
      readonly kind: 'failed';
      readonly taskId: TaskId;
      readonly message: string;
      readonly detail: string;
      readonly reason: FailureReason;
    };

/**
 * What failed: user code, a checkpoint (missing or corrupt), the machine (checkpoint
 * folder not writable, disk full: the run stops, resumable), or the worker itself.
 */
export type FailureReason = 'trainer' | 'checkpoint' | 'environment' | 'worker';

/** Where a worker's starting state comes from, by checkpoint key. */
export type WireRestore =
  | { readonly from: 'memory'; readonly key: CheckpointKey }
  | { readonly from: 'checkpoint'; readonly key: CheckpointKey }
  | { readonly from: 'init' };

/** A task as sent to a worker (the engine's `Task` without placement details). */
export type WireTask = Pick<Task, 'saveFirst' | 'runs' | 'saveAfter' | 'endKey'> & {
  readonly taskId: TaskId;
  readonly restore: WireRestore;
};

/** The wire form of an engine task. */
export function toWireTask(task: Task): WireTask {
  return {
    taskId: task.id,
    saveFirst: task.saveFirst,
    restore:
      task.restore.from === 'checkpoint'
        ? { from: 'checkpoint', key: task.restore.key }
        : task.restore,
    runs: task.runs,
    saveAfter: task.saveAfter,
    endKey: task.endKey,
  };
}

export type EngineToWorker =
  | {
      readonly kind: 'welcome';
      readonly checkpointDir: string;
      readonly heartbeatSeconds: number;
      /** The id the engine knows the worker by. */
      readonly workerId: string;
    }
  | { readonly kind: 'run'; readonly task: WireTask }
  | { readonly kind: 'cancel'; readonly taskId: TaskId }
  /**
   * Stop the task early (its study paused, its slot about to be taken back): answer
   * `cutAt` at the next step boundary inside its last run, or finish it if that run is in
   * its last chunk.
   */
  | { readonly kind: 'cut'; readonly taskId: TaskId }
  /** The answer to `cutAt`: save the state under `key`, then evaluate and answer `done`. */
  | { readonly kind: 'saveCut'; readonly taskId: TaskId; readonly key: CheckpointKey }
  | { readonly kind: 'shutdown'; readonly reason: string };

/** A worker's end of its stream to the engine (implemented over gRPC by src/rpc). */
export interface EnginePort {
  send(message: WorkerToEngine): void;
  onMessage(listener: (message: EngineToWorker) => void): void;
  /** The stream ended; `error` is set when it ended abnormally. */
  onClose(listener: (error: string | null) => void): void;
  close(): void;
}

/** The engine's end of one worker's stream (implemented over gRPC by src/rpc). */
export interface WorkerPort {
  readonly registration: Extract<WorkerToEngine, { kind: 'register' }>;
  send(message: EngineToWorker): void;
  close(): void;
  /** Ends the stream for a protocol violation (FAILED_PRECONDITION on the wire), saying why. */
  abort(message: string): void;
  onMessage(listener: (message: Exclude<WorkerToEngine, { kind: 'register' }>) => void): void;
  onClose(listener: (reason: string) => void): void;
}
