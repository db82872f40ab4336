import { test } from '@fast-check/vitest';
import fc from 'fast-check';
import { describe, expect } from 'vitest';
import { canonicalize, parseSchedule, valueAt } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import {
  allStages,
  emptyTree,
  extendTrial,
  forkTrial,
  getStage,
  getTrial,
  insertTrial,
  insertTrials,
  markDone,
  pathOf,
  readyStages,
  reportsAt,
  stopTrial,
  treeStats,
} from '../../src/tree/index.js';
import type { StageTree, TrialInput } from '../../src/tree/index.js';
import { canonical } from '../support/arbitraries.js';
import { bruteForce, snapshot, trialSet, trialSetTwice } from '../support/trials.js';

const build = (trials: readonly TrialInput[]): StageTree =>
  trials.reduce((tree, t) => insertTrial(tree, t), emptyTree());

describe('stage tree invariants', () => {
  test.prop([trialSetTwice], { numRuns: 200 })(
    'the same trials in any order give the same tree and ids',
    ([a, b]) => {
      expect(snapshot(build(b))).toEqual(snapshot(build(a)));
      expect(snapshot(insertTrials(emptyTree(), b))).toEqual(snapshot(build(a)));
    },
  );

  test.prop([trialSet], { numRuns: 200 })(
    'merges exactly the shared prefixes (brute-force reference)',
    (trials) => {
      const stats = treeStats(build(trials));
      const ref = bruteForce(trials);
      expect(stats.treeSteps).toBe(ref.steps);
      expect(stats.stages).toBe(ref.stages);
    },
  );

  test.prop([trialSet], { numRuns: 200 })(
    "every trial's path reproduces its schedules step by step",
    (trials) => {
      const tree = build(trials);
      for (const t of trials) {
        const path = pathOf(tree, t.id);
        let step = 0;
        for (const stage of path) {
          expect(stage.start).toBe(step);
          const rep = getTrial(tree, stage.rep);
          for (let s = stage.start; s < stage.end; s++) {
            for (const h of Object.keys(t.schedules)) {
              expect(valueAt(rep.schedules[h] as Canonical, s)).toBe(
                valueAt(t.schedules[h] as Canonical, s),
              );
            }
          }
          step = stage.end;
        }
        expect(step).toBe(t.until);
        for (const r of [...(t.reports ?? []), t.until]) {
          expect(path.some((s) => s.end === r && reportsAt(tree, s.id).includes(t.id))).toBe(true);
        }
      }
    },
  );

  test.prop([trialSet])('tree steps <= trial steps', (trials) => {
    const stats = treeStats(build(trials));
    expect(stats.treeSteps).toBeLessThanOrEqual(stats.trialSteps);
    expect(stats.trialSteps).toBe(trials.reduce((s, t) => s + t.until, 0));
  });

  test.prop([trialSet])('tree steps = trial steps when no two trials share a prefix', (trials) => {
    // Give every trial its own learning rate at step 0.
    const distinct = trials.map((t, i) => ({
      ...t,
      schedules: {
        ...t.schedules,
        lr: canonicalize(
          parseSchedule({
            kind: 'concat',
            parts: [{ until: 1, schedule: 1000 + i }, { schedule: 0.1 }],
          }),
        ),
      },
    }));
    const stats = treeStats(build(distinct));
    expect(stats.treeSteps).toBe(stats.trialSteps);
  });

  test.prop([
    trialSet,
    fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
    fc.integer({ min: 0, max: 40 }),
  ])(
    'withdrawing demand cancels exactly the stages nobody needs',
    (trials, stopMask, doneCount) => {
      let tree = build(trials);
      // Train some stages first (always a ready one, as the engine would).
      for (let i = 0; i < doneCount; i++) {
        const ready = readyStages(tree);
        if (ready.length === 0) break;
        tree = markDone(tree, (ready[i % ready.length] as { id: string }).id);
      }
      const active = trials.filter((_, i) => !stopMask[i]);
      for (const [i, t] of trials.entries()) if (stopMask[i]) tree = stopTrial(tree, t.id);
      const needed = new Map<string, number>();
      for (const t of active)
        for (const s of pathOf(tree, t.id)) needed.set(s.id, (needed.get(s.id) ?? 0) + 1);
      for (const s of allStages(tree)) expect(s.refs).toBe(needed.get(s.id) ?? 0);
      const expectedReady = [...allStages(tree)]
        .filter((s) => s.refs > 0 && !s.done && s.parent !== null && getStage(tree, s.parent).done)
        .map((s) => s.id)
        .sort();
      expect(readyStages(tree).map((s) => s.id)).toEqual(expectedReady);
    },
  );

  test.prop([trialSet, fc.integer({ min: 1, max: 40 })])(
    'extending a trial is the same as having asked for the longer demand',
    (trials, more) => {
      const first = trials[0] as TrialInput;
      const extended = extendTrial(build(trials), first.id, first.until + more);
      const direct = build([
        { ...first, until: first.until + more, reports: [...(first.reports ?? []), first.until] },
        ...trials.slice(1),
      ]);
      expect(snapshot(extended)).toEqual(snapshot(direct));
    },
  );

  test.prop([
    trialSet,
    canonical,
    fc.integer({ min: 0, max: 60 }),
    fc.integer({ min: 1, max: 30 }),
  ])(
    'a fork shares its source path up to the fork step and follows its new schedule after',
    (trials, lr, rawAt, len) => {
      const source = trials[0] as TrialInput;
      const at = rawAt % (source.until + 1);
      const tree = forkTrial(build(trials), {
        id: 'fork',
        source: source.id,
        at,
        schedules: { lr },
        until: at + len,
      });
      const forkPath = pathOf(tree, 'fork');
      const sourcePath = pathOf(tree, source.id);
      const shared = forkPath.filter((s) => s.end <= at);
      expect(shared.map((s) => s.id)).toEqual(
        sourcePath.filter((s) => s.end <= at).map((s) => s.id),
      );
      if (at > 0) expect(shared[shared.length - 1]?.end).toBe(at);
      const fork = getTrial(tree, 'fork');
      expect(fork.forkOf).toEqual({ trial: source.id, at });
      for (let s = at; s < at + len; s++)
        expect(valueAt(fork.schedules.lr as Canonical, s)).toBe(valueAt(lr, s));
    },
  );

  test.prop([trialSet, trialSet])('operations never change the tree they were given', (a, b) => {
    const tree = build(a);
    const before = snapshot(tree);
    insertTrials(
      tree,
      b.map((t) => ({ ...t, id: `new-${t.id}` })),
    );
    stopTrial(tree, (a[0] as TrialInput).id);
    expect(snapshot(tree)).toEqual(before);
  });
});
