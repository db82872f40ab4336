import type { CheckpointKey, Task, TaskId } from './types.js';

/**
 * The worker protocol in domain terms (the wire form is `proto/stagetree/v1/worker.proto`,
 * converted by `src/rpc/`). Engine-side code and the TypeScript worker runtime speak
 * these; only the RPC layer sees protobuf.
 */

export const PROTOCOL = 'stagetree.v1';

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
    }
  | { readonly kind: 'heartbeat'; readonly taskId: TaskId | null }
  | { readonly kind: 'progress'; readonly taskId: TaskId; readonly step: number }
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

/** What failed: user code, a checkpoint (missing or corrupt), or the worker itself. */
export type FailureReason = 'trainer' | 'checkpoint' | 'worker';

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
  | { readonly kind: 'welcome'; readonly checkpointDir: string; readonly heartbeatSeconds: number }
  | { readonly kind: 'run'; readonly task: WireTask }
  | { readonly kind: 'cancel'; readonly taskId: TaskId }
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
  onMessage(listener: (message: Exclude<WorkerToEngine, { kind: 'register' }>) => void): void;
  onClose(listener: (reason: string) => void): void;
}
