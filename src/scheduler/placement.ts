/**
 * Placement: which worker runs a ready stage. Pure: the engine describes its workers and
 * GPUs, this picks. Preference order, cheapest first:
 *
 * 1. hot: an idle worker that holds the stage's parent state in memory (no restore);
 * 2. warm: an idle worker process on a GPU with room (restore a checkpoint or init; no
 *    process start), preferring one whose state nobody needs (no save first);
 * 3. cold: a new worker process on the GPU whose free share fits best (just-fit packing
 *    keeps whole GPUs free for stages that need them), replacing an idle process of
 *    another lineage where the process budget is spent.
 */

export const EPS = 1e-9;

export interface WorkerView {
  readonly id: string;
  readonly gpu: number;
  readonly busy: boolean;
  /** The stage whose end state the worker holds in memory, if any. */
  readonly holds: string | null;
  /**
   * Whether the held state is needed later and not checkpointed (moving on costs a
   * save). A function: it is asked only of the few workers placement considers.
   */
  readonly holdsNeeded: () => boolean;
  /** The trial lineage the process belongs to (trial-based mode), or null. */
  readonly lineage: string | null;
}

export interface GpuView {
  readonly index: number;
  /** Share in use by running stages, in [0, 1]. */
  readonly used: number;
}

export interface PlacementRequest {
  readonly parent: string;
  readonly share: number;
  /** Set in trial-based mode: a process only ever serves one trial. */
  readonly lineage: string | null;
}

export interface PlacementLimits {
  /** The most worker processes alive at once. */
  readonly maxWorkers: number;
  /** Worker processes alive now (busy or idle). */
  readonly liveWorkers: number;
}

export type Placement =
  | { readonly kind: 'hot' | 'warm'; readonly worker: string; readonly gpu: number }
  | { readonly kind: 'cold'; readonly gpu: number; readonly replace: string | null };

const fits = (g: GpuView | undefined, share: number): boolean =>
  g !== undefined && g.used + share <= 1 + EPS;

/** `workers` may list only the idle workers: busy ones are never chosen. */
export function place(
  req: PlacementRequest,
  workers: readonly WorkerView[],
  gpus: readonly GpuView[],
  limits: PlacementLimits,
): Placement | null {
  const idle = workers.filter((w) => !w.busy && fits(gpus[w.gpu], req.share));
  const sameLineage = (w: WorkerView): boolean => req.lineage === null || w.lineage === req.lineage;

  const hot = idle.find((w) => w.holds === req.parent && sameLineage(w));
  if (hot) return { kind: 'hot', worker: hot.id, gpu: hot.gpu };

  // Warm: the first (by id) whose state nobody needs, else the first.
  const warm = idle.filter(sameLineage).sort((a, b) => (a.id < b.id ? -1 : 1));
  const pick = warm.find((w) => w.holds === null || !w.holdsNeeded()) ?? warm[0];
  if (pick) return { kind: 'warm', worker: pick.id, gpu: pick.gpu };

  // Best fit: the GPU with the least free share that still fits.
  const candidates = gpus
    .filter((g) => fits(g, req.share))
    .sort((a, b) => b.used - a.used || a.index - b.index);
  if (limits.liveWorkers < limits.maxWorkers) {
    const g = candidates[0];
    return g ? { kind: 'cold', gpu: g.index, replace: null } : null;
  }
  // No process budget left: replace an idle process of another lineage whose state nobody
  // needs (its trial finished, or its state is checkpointed).
  const victim = idle
    .filter((w) => !sameLineage(w))
    .sort((a, b) => (a.id < b.id ? -1 : 1))
    .find((w) => !w.holdsNeeded());
  return victim ? { kind: 'cold', gpu: victim.gpu, replace: victim.id } : null;
}
