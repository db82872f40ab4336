import type { EngineToWorker, WorkerId, WorkerToEngine } from '../engine/index.js';
import type { SlotState } from './slot.js';

/** A message a worker sent after registering. */
export type WorkerMessage = Exclude<WorkerToEngine, { kind: 'register' }>;

/** What a pool knows of a worker that is gone. */
export interface GoneInfo {
  /** Whether it ever registered (a worker that dies before is an environment problem). */
  readonly registered: boolean;
  /** Its last lines of output, oldest first. */
  readonly output: readonly string[];
}

/** Removes the listener it was returned for. */
export type Unsubscribe = () => void;

/**
 * The worker-pool port: how workers come to exist, whatever the backend (local
 * processes now; containers and cluster allocations next). The runner drives the
 * engine against it and never learns which backend it has. Each slot follows the
 * lifecycle of `slot.ts` (starting, idle, busy, draining, gone); every backend passes
 * the same contract tests (`test/workers/`).
 */
export interface WorkerPool {
  /**
   * Starts worker `id` on `gpu` with `share` of it (a slot in `starting`), running
   * `runtime`: the trainer identity of the stages it will run (`Task.runtime`), or null
   * when the pool serves one trainer.
   */
  start(id: WorkerId, gpu: number, share: number, runtime?: string | null): void;
  /** Sends a message; a task sent to a slot still starting waits until it registers. */
  send(id: WorkerId, message: EngineToWorker): void;
  /** Asks a worker to exit after its task; kills it after `grace` seconds. */
  stop(id: WorkerId, reason: string, grace?: number): void;
  /** Kills a worker now (its slot drains until the exit is seen). */
  kill(id: WorkerId): void;
  /** Ends a worker's stream for a protocol violation, saying why, and kills it. */
  abort(id: WorkerId, message: string): void;
  /** A slot's lifecycle state, or null for one this pool never started. */
  state(id: WorkerId): SlotState | null;
  /** Whether a worker has registered and is not gone. */
  registered(id: WorkerId): boolean;
  onMessage(listener: (worker: WorkerId, message: WorkerMessage) => void): Unsubscribe;
  onGone(listener: (worker: WorkerId, reason: string, info: GoneInfo) => void): Unsubscribe;
  onRegistered(listener: (worker: WorkerId) => void): Unsubscribe;
  /** Stops every worker, kills stragglers after `grace` seconds, waits until all are gone. */
  shutdown(reason: string, grace?: number): Promise<void>;
}

/** Adds `listener` to `list`; the returned function removes it again. */
export function subscribe<T>(list: T[], listener: T): Unsubscribe {
  list.push(listener);
  return () => {
    const i = list.indexOf(listener);
    if (i >= 0) list.splice(i, 1);
  };
}
