import { getStage, shardValues } from '../tree/index.js';
import type { Stage, StageId, StageTree } from '../tree/index.js';

/**
 * Critical-path priority: the seconds of demanded, not yet trained work on the longest
 * chain starting at a stage (the stage included). Running the stage with the longest
 * chain first lets the study's makespan approach max(total work / GPUs, longest path).
 * `cost(stage)` is the estimated seconds of one stage (steps x measured step cost).
 * `memo` carries results between calls of one scheduling round.
 */
export function criticalPath(
  tree: StageTree,
  id: StageId,
  cost: (s: Stage) => number,
  memo: Map<StageId, number>,
): number {
  const known = memo.get(id);
  if (known !== undefined) return known;
  const s = getStage(tree, id);
  let best = 0;
  for (const c of shardValues(s.children)) {
    const child = getStage(tree, c);
    if (child.refs > 0) best = Math.max(best, criticalPath(tree, c, cost, memo));
  }
  const own = s.refs > 0 && !s.done ? cost(s) : 0;
  const total = own + best;
  memo.set(id, total);
  return total;
}

/**
 * Ready stages in the order to place them: longest critical path first; among equal
 * paths (within a millionth), a stage whose parent state an idle worker holds in memory
 * (`hot`) first, so that a worker continues its own line instead of trading states with
 * another through a save and a load; then by id. With `hotFirst`, hot stages go first
 * whatever their path (trial-based mode: a trial runs to its end on its process before
 * another starts, as today's systems run them).
 */
export function orderReady(
  tree: StageTree,
  ready: readonly Stage[],
  cost: (s: Stage) => number,
  hot: (s: Stage) => boolean = () => false,
  hotFirst = false,
): Stage[] {
  const memo = new Map<StageId, number>();
  const keyed = ready.map((s) => ({ s, p: criticalPath(tree, s.id, cost, memo), hot: hot(s) }));
  keyed.sort((a, b) => {
    if (hotFirst && a.hot !== b.hot) return a.hot ? -1 : 1;
    const scale = Math.max(Math.abs(a.p), Math.abs(b.p), 1e-12);
    if (Math.abs(a.p - b.p) > 1e-6 * scale) return b.p - a.p;
    if (a.hot !== b.hot) return a.hot ? -1 : 1;
    return a.s.id < b.s.id ? -1 : a.s.id > b.s.id ? 1 : 0;
  });
  return keyed.map((k) => k.s);
}
