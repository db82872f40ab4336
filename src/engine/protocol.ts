import type { CheckpointKey, StageRun, TaskId } from './types.js';

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
    };

/** Where a worker's starting state comes from; `memory` names the state it must hold. */
export type WireRestore =
  | { readonly from: 'memory'; readonly key: CheckpointKey }
  | { readonly from: 'checkpoint'; readonly key: CheckpointKey }
  | { readonly from: 'init' };

/** A task as sent to a worker: checkpoints by key, the restore source, the stages. */
export interface WireTask {
  readonly taskId: TaskId;
  readonly saveFirst: CheckpointKey | null;
  readonly restore: WireRestore;
  readonly runs: readonly StageRun[];
  readonly saveAfter: CheckpointKey | null;
}

export type EngineToWorker =
  | { readonly kind: 'welcome'; readonly checkpointDir: string; readonly heartbeatSeconds: number }
  | { readonly kind: 'run'; readonly task: WireTask }
  | { readonly kind: 'cancel'; readonly taskId: TaskId }
  | { readonly kind: 'shutdown'; readonly reason: string };
