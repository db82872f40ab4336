import type { EngineToWorker, WorkerId, WorkerToEngine } from '../engine/index.js';
import { ErrorCode, StagetreeError } from '../errors.js';
import type { SlotState } from './slot.js';

/** One GPU a pool can place workers on. */
export interface Gpu {
  /** The host it is on (`Inventory.hosts[].name`). */
  readonly host: string;
  /** Its device number on that host (what CUDA_VISIBLE_DEVICES names there). */
  readonly device: number;
  /** Its memory, or null when the pool does not know it. */
  readonly memoryBytes: number | null;
}

/**
 * What a pool can place workers on: its hosts, in order, each with its GPU devices, in
 * order. The engine numbers GPUs 0, 1, ... in `gpuList` order: `Task.gpu` and the `gpu`
 * of `WorkerPool.start` are indices into that list, and the pool maps an index to its
 * host and device (`gpuAt`).
 *
 * A pool without GPUs (CPU only) has hosts with empty `gpus`. The engine then counts
 * worker slots instead of GPUs (a CPU-only study's `gpus` is its number of workers, each
 * stage a whole slot), its GPU indices name no device, and the pool starts every worker
 * without one: `gpuAt` is null for every index.
 */
export interface Inventory {
  readonly hosts: readonly { readonly name: string; readonly gpus: readonly Gpu[] }[];
}

/** Every GPU of an inventory, hosts in order, each host's devices in order: index = `Task.gpu`. */
export function gpuList(inv: Inventory): Gpu[] {
  return inv.hosts.flatMap((h) => h.gpus);
}

/** A GPU index that is not in a pool's inventory (a bug: the engine and the pool disagree). */
export class UnknownGpuError extends StagetreeError {
  readonly index: number;
  readonly count: number;

  constructor(index: number, count: number) {
    super(
      ErrorCode.internal,
      `internal: GPU ${index} is not in the pool's inventory (it has ${count} GPU${count === 1 ? '' : 's'}, numbered 0 to ${count - 1}); the engine's gpus must equal gpuList(pool.inventory()).length`,
    );
    this.index = index;
    this.count = count;
  }
}

/**
 * The GPU that index `gpu` names in `inv`, or null when the inventory has no GPUs (CPU
 * only: the index is a worker slot). Throws `UnknownGpuError` for an index outside a
 * non-empty list.
 */
export function gpuAt(inv: Inventory, gpu: number): Gpu | null {
  const list = gpuList(inv);
  if (list.length === 0) return null;
  const found = Number.isInteger(gpu) ? list[gpu] : undefined;
  if (!found) throw new UnknownGpuError(gpu, list.length);
  return found;
}

/**
 * Whether an engine counting `gpus` GPUs fits a pool with this inventory: at most the
 * inventory's GPUs (the engine uses the first `gpus` of `gpuList`), or anything (a
 * number of worker slots) when it has none.
 */
export function fitsInventory(inv: Inventory, gpus: number): boolean {
  const n = gpuList(inv).length;
  return n === 0 || gpus <= n;
}

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
  /** The hosts and GPUs workers can be placed on; GPU indices are `gpuList` positions. */
  inventory(): Inventory;
  /**
   * Starts worker `id` on GPU index `gpu` (into `gpuList(inventory())`; a worker slot when
   * the inventory has no GPUs) with `share` of it (a slot in `starting`), running
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
