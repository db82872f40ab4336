import { describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, ValidationError } from '../../src/errors.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import {
  emptyTree,
  forkPoints,
  forkTrial,
  getStage,
  getTrial,
  insertTrial,
  isDemanded,
  markDone,
  pathOf,
  readyStages,
  reportsAt,
  rootIds,
  remainingPath,
  remainingWork,
  stageValues,
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

  it('knows what is ready, what remains and where the forks are', () => {
    let tree = example();
    const [root] = pathOf(tree, 'a');
    const rootStage = root as { id: string };
    expect(readyStages(tree).map((s) => s.id)).toEqual([rootStage.id]);
    expect(remainingWork(tree, rootStage.id)).toBe(400);
    expect(remainingPath(tree, rootStage.id)).toBe(200);
    expect(
      forkPoints(tree)
        .map((id) => getStage(tree, id).end)
        .sort(),
    ).toEqual([150, 50]);
    tree = markDone(tree, rootStage.id);
    expect(
      readyStages(tree)
        .map((s) => `${s.start}-${s.end}`)
        .sort(),
    ).toEqual(['50-150', '50-200']);
    expect(remainingPath(tree, rootStage.id)).toBe(150);
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
    tree = insertTrial(tree, trial('b', [60], 200));
    const [top, bottom] = pathOf(tree, 'a');
    expect(top?.done).toBe(false);
    expect(bottom?.done).toBe(true);
    expect(readyStages(tree).map((s) => s.id)).toEqual([top?.id]);
  });

  it('forks a trial from another one’s state (PBT exploit)', () => {
    let tree = insertTrial(emptyTree(), trial('a', [100], 200));
    tree = forkTrial(tree, { id: 'f', source: 'a', at: 80, schedules: { lr: c(0.5) }, until: 120 });
    expect(ranges(tree, 'f')).toEqual(['0-80', '80-120']);
    expect(ranges(tree, 'a')).toEqual(['0-80', '80-200']);
    expect(forkPoints(tree).map((id) => getStage(tree, id).end)).toEqual([80]);
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
    expect(() => insertTrial(tree, trial('a', [1]))).toThrow(ConflictError);
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
    expect(() => markDone(tree, deep)).toThrow(/before its parent/);
  });
});
