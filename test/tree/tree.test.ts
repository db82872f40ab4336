import { describe, expect, it } from 'vitest';
import {
  ConflictError,
  MarkDoneError,
  NotFoundError,
  TrialExistsError,
  TrialStoppedError,
  ValidationError,
} from '../../src/errors.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { criticalPath } from '../../src/scheduler/index.js';
import {
  childrenOf,
  emptyTree,
  extendTrial,
  forkTrial,
  getTrial,
  insertTrial,
  isDemanded,
  markDone,
  pathOf,
  readyStages,
  reportsAt,
  rootIds,
  stageValues,
  stateKey,
  stopTrial,
  trialsThrough,
  treeStats,
} from '../../src/tree/index.js';
import type { StageTree, TrialInput } from '../../src/tree/index.js';

const c = (x: unknown): Canonical => canonicalize(parseSchedule(x));
const params = { model: 'resnet20', seed: 0 };
const multistep = (m: number[]): Canonical =>
  c({ kind: 'multistep', init: 0.1, factor: 0.1, milestones: m });
const trial = (id: string, m: number[], until = 200, reports: number[] = []): TrialInput => ({
  id,
  params,
  schedules: { lr: multistep(m), bs: c(128) },
  until,
  reports,
});
/** What `fn` throws (it must throw). */
function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

const ranges = (tree: StageTree, id: string): string[] =>
  pathOf(tree, id).map((s) => `${s.start}-${s.end}`);

/** Three ResNet-20 trials: two share 150 epochs, the third leaves them at 50. */
function example(): StageTree {
  let tree = emptyTree();
  for (const t of [trial('a', [100, 150]), trial('b', [100, 200]), trial('c', [50, 150])])
    tree = insertTrial(tree, t);
  return tree;
}

describe('StageTree', () => {
  it('merges shared prefixes and splits where trials diverge', () => {
    const tree = example();
    expect(ranges(tree, 'a')).toEqual(['0-50', '50-150', '150-200']);
    expect(ranges(tree, 'b')).toEqual(['0-50', '50-150', '150-200']);
    expect(ranges(tree, 'c')).toEqual(['0-50', '50-200']);
    expect(treeStats(tree)).toEqual({
      trials: 3,
      stages: 5,
      treeSteps: 400,
      trialSteps: 600,
      idealSavings: 1.5,
    });
    const [first] = pathOf(tree, 'a');
    expect(trialsThrough(tree, (first as { id: string }).id)).toEqual(['a', 'b', 'c']);
    expect(stageValues(tree, (first as { id: string }).id)).toEqual({ bs: 128, lr: 0.1 });
  });

  it('splits a stage at a report point inside it', () => {
    let tree = insertTrial(emptyTree(), trial('a', [100], 200));
    tree = insertTrial(tree, trial('b', [100], 200, [50]));
    expect(ranges(tree, 'a')).toEqual(['0-50', '50-200']);
    const [first] = pathOf(tree, 'b');
    expect(reportsAt(tree, (first as { id: string }).id)).toEqual(['b']);
  });

  it('knows what is ready, what remains on the critical path and where the forks are', () => {
    let tree = example();
    const [root] = pathOf(tree, 'a');
    const rootStage = root as { id: string };
    // The scheduler's critical path, with a cost of one per step: the longest demanded,
    // untrained chain (0-50, 50-150, 150-200), and with a cost per stage of its steps x 3.
    const steps = (s: { start: number; end: number }): number => s.end - s.start;
    expect(readyStages(tree).map((s) => s.id)).toEqual([rootStage.id]);
    expect(criticalPath(tree, rootStage.id, steps, new Map())).toBe(200);
    expect(criticalPath(tree, rootStage.id, (s) => 3 * steps(s), new Map())).toBe(600);
    // Two demanded children continue from 50 and from 150: their states are needed twice.
    const forks = pathOf(tree, 'a').filter((s) => childrenOf(tree, s.id).length > 1);
    expect(forks.map((s) => s.end)).toEqual([50, 150]);
    tree = markDone(tree, rootStage.id);
    expect(
      readyStages(tree)
        .map((s) => `${s.start}-${s.end}`)
        .sort(),
    ).toEqual(['50-150', '50-200']);
    // Done stages cost nothing; the memo gives the same answer on a second call.
    const memo = new Map<string, number>();
    expect(criticalPath(tree, rootStage.id, steps, memo)).toBe(150);
    expect(criticalPath(tree, rootStage.id, () => Number.NaN, memo)).toBe(150);
    // Counting stages: a's branch has two left, c's one; stopped trials' stages do not count.
    expect(criticalPath(tree, rootStage.id, () => 1, new Map())).toBe(2);
    tree = stopTrial(stopTrial(tree, 'a'), 'b');
    expect(criticalPath(tree, rootStage.id, () => 1, new Map())).toBe(1);
  });

  it('cancels stages only the stopped trial needed', () => {
    let tree = example();
    const cOnly = (pathOf(tree, 'c')[1] as { id: string }).id;
    tree = stopTrial(tree, 'c');
    expect(isDemanded(tree, cOnly)).toBe(false);
    expect(isDemanded(tree, (pathOf(tree, 'a')[0] as { id: string }).id)).toBe(true);
    expect(treeStats(tree).treeSteps).toBe(250);
    expect(treeStats(tree).trialSteps).toBe(400);
    expect(getTrial(tree, 'c').status).toBe('stopped');
  });

  it('re-runs the top of a done stage that a new trial splits', () => {
    let tree = insertTrial(emptyTree(), trial('a', [100], 200));
    const only = (pathOf(tree, 'a')[0] as { id: string }).id;
    tree = markDone(tree, only);
    const before = tree;
    tree = insertTrial(tree, trial('b', [60], 200));
    const [top, bottom] = pathOf(tree, 'a');
    expect(top?.done).toBe(false);
    expect(bottom?.done).toBe(true);
    expect(readyStages(tree).map((s) => s.id)).toEqual([top?.id]);
    // Both pieces get new ids; the bottom keeps the end, and with it the state key.
    expect([top?.id, bottom?.id]).not.toContain(only);
    expect(stateKey(tree, bottom?.id as string)).toBe(stateKey(before, only));
  });

  it('forks a trial from another one’s state (PBT exploit)', () => {
    let tree = insertTrial(emptyTree(), trial('a', [100], 200));
    tree = forkTrial(tree, { id: 'f', source: 'a', at: 80, schedules: { lr: c(0.5) }, until: 120 });
    expect(ranges(tree, 'f')).toEqual(['0-80', '80-120']);
    expect(ranges(tree, 'a')).toEqual(['0-80', '80-200']);
    const [shared] = pathOf(tree, 'f');
    expect(
      childrenOf(tree, shared?.id as string)
        .map((s) => `${s.start}-${s.end}`)
        .sort(),
    ).toEqual(['80-120', '80-200']);
  });

  it('gives the same ids to the same trials inserted in another order', () => {
    const one = example();
    let two = emptyTree();
    for (const t of [trial('c', [50, 150]), trial('b', [100, 200]), trial('a', [100, 150])])
      two = insertTrial(two, t);
    for (const id of ['a', 'b', 'c'])
      expect(pathOf(two, id).map((s) => s.id)).toEqual(pathOf(one, id).map((s) => s.id));
  });

  it('never shares stages across merge keys', () => {
    let tree = insertTrial(emptyTree(), trial('a', [100]));
    tree = insertTrial(tree, { ...trial('b', [100]), params: { ...params, seed: 1 } });
    expect(treeStats(tree).treeSteps).toBe(400);
    expect(rootIds(tree)).toHaveLength(2);
  });

  it('rejects bad input with clear errors', () => {
    const tree = example();
    const twice = caught(() => insertTrial(tree, trial('a', [1])));
    expect(twice).toBeInstanceOf(TrialExistsError);
    expect(twice).toBeInstanceOf(ConflictError);
    expect(twice).toMatchObject({ code: 'STAGETREE_CONFLICT', trial: 'a' });
    const stopped = caught(() => extendTrial(stopTrial(tree, 'a'), 'a', 300));
    expect(stopped).toBeInstanceOf(TrialStoppedError);
    expect(stopped).toMatchObject({ code: 'STAGETREE_CONFLICT', trial: 'a' });
    expect(() => insertTrial(tree, trial('z', [1], 0))).toThrow(ValidationError);
    expect(() => insertTrial(tree, trial('z', [1], 10, [20]))).toThrow(
      /reports\[0\]: expected an integer in \(0, 10\]/,
    );
    expect(() =>
      forkTrial(tree, { id: 'f', source: 'nope', at: 1, schedules: {}, until: 5 }),
    ).toThrow(NotFoundError);
    expect(() =>
      forkTrial(tree, { id: 'f', source: 'a', at: 500, schedules: {}, until: 600 }),
    ).toThrow(/fork.at/);
    expect(() =>
      forkTrial(tree, { id: 'f', source: 'a', at: 5, schedules: { mom: c(0.9) }, until: 600 }),
    ).toThrow(/fork.schedules.mom: expected a hyperparameter of the source trial/);
    const deep = (pathOf(tree, 'a')[2] as { id: string }).id;
    const early = caught(() => markDone(tree, deep));
    expect(early).toBeInstanceOf(MarkDoneError);
    expect(early).toMatchObject({
      stage: deep,
      problem: 'parentNotDone',
      parent: (pathOf(tree, 'a')[1] as { id: string }).id,
    });
    expect((early as Error).message).toMatch(/before its parent/);
    const first = (pathOf(tree, 'a')[0] as { id: string }).id;
    expect(caught(() => markDone(markDone(tree, first), first))).toMatchObject({
      stage: first,
      problem: 'done',
    });
    expect(caught(() => markDone(tree, rootIds(tree)[0] as string))).toMatchObject({
      problem: 'root',
      parent: null,
    });
  });
});
