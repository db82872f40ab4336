import fc from 'fast-check';
import { canonicalize, parseSchedule, valueAt } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import {
  allStages,
  allTrials,
  childrenOf,
  mergeKeyOf,
  reportsAt,
  rootIds,
} from '../../src/tree/index.js';
import type { StageTree, TrialInput } from '../../src/tree/index.js';
import { canonical } from './arbitraries.js';

export const HORIZON = 60;
const c = (x: unknown): Canonical => canonicalize(parseSchedule(x));

const batchSize = fc.constantFrom(
  c(128),
  c(256),
  c({ kind: 'piecewise', values: [128, 256], boundaries: [20] }),
  c({ kind: 'piecewise', values: [128, 512], boundaries: [20] }),
);

/** Trial inputs without ids: two seeds, a learning-rate schedule, a batch-size schedule. */
export const trialBody = fc
  .record({
    seed: fc.constantFrom(0, 0, 0, 1),
    lr: canonical,
    bs: batchSize,
    until: fc.integer({ min: 1, max: HORIZON }),
    extra: fc.array(fc.integer({ min: 1, max: HORIZON }), { maxLength: 2 }),
  })
  .map(({ seed, lr, bs, until, extra }) => ({
    params: { model: 'resnet20', seed },
    schedules: { lr, bs },
    until,
    reports: extra.filter((r) => r < until),
  }));

export const trialSet = fc
  .array(trialBody, { minLength: 1, maxLength: 12 })
  .map((bodies) => bodies.map((b, i): TrialInput => ({ id: `t${i}`, ...b })));

/** A trial set and a permutation of it. */
export const trialSetTwice = trialSet.chain((trials) =>
  fc.tuple(
    fc.constant(trials),
    fc.shuffledSubarray(trials, { minLength: trials.length, maxLength: trials.length }),
  ),
);

/** Everything observable about a tree, in a canonical order, for comparisons. */
export function snapshot(tree: StageTree): unknown {
  const stages = [...allStages(tree)]
    .map((s) => ({
      id: s.id,
      start: s.start,
      end: s.end,
      parent: s.parent,
      refs: s.refs,
      done: s.done,
      children: childrenOf(tree, s.id)
        .map((x) => x.id)
        .sort(),
      reports: reportsAt(tree, s.id),
      ends: [...s.ends].sort(),
    }))
    .sort((a, b) => (a.id < b.id ? -1 : 1));
  const trials = [...allTrials(tree)]
    .map((t) => ({ id: t.id, leaf: t.leaf, until: t.until, status: t.status }))
    .sort((a, b) => (a.id < b.id ? -1 : 1));
  return {
    roots: rootIds(tree),
    stages,
    trials,
    counts: { stages: tree.counts.stages, trials: tree.counts.trials },
  };
}

/**
 * The reference model of merging, by brute force: a trie over whole steps. Returns the
 * number of distinct (merge key, value prefix) states (the tree's unique steps) and the
 * number of stages the tree must have.
 */
export function bruteForce(trials: readonly TrialInput[]): { steps: number; stages: number } {
  const ids = new Map<string, number>();
  const children = new Map<number, Set<number>>();
  const cutAfter = new Set<number>();
  const nodeStep = new Map<number, number>();
  const parentOf = new Map<number, number>();
  for (const t of trials) {
    const hps = Object.keys(t.schedules).sort();
    let parent = -1;
    const rootKey = mergeKeyOf(t.params, hps);
    const cuts = new Set([...(t.reports ?? []), t.until]);
    for (let step = 0; step < t.until; step++) {
      const values = JSON.stringify(hps.map((h) => valueAt(t.schedules[h] as Canonical, step)));
      const key = `${parent === -1 ? rootKey : parent}|${values}`;
      let id = ids.get(key);
      if (id === undefined) {
        id = ids.size;
        ids.set(key, id);
        nodeStep.set(id, step);
        parentOf.set(id, parent);
      }
      if (parent !== -1) {
        const set = children.get(parent) ?? new Set<number>();
        set.add(id);
        children.set(parent, set);
      }
      if (cuts.has(step + 1)) cutAfter.add(id);
      parent = id;
    }
  }
  let stages = 0;
  for (const [id, step] of nodeStep) {
    const parent = parentOf.get(id) as number;
    if (step === 0 || (children.get(parent)?.size ?? 0) > 1 || cutAfter.has(parent)) stages++;
  }
  return { steps: ids.size, stages };
}
