import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import {
  AsyncHyperbandTuner,
  HyperbandTuner,
  createTuner,
  hyperbandBrackets,
} from '../../src/tuner/index.js';
import { runTuner, tunerStudy } from '../support/tuner-harness.js';
import type { HarnessTrial } from '../support/tuner-harness.js';

describe('hyperbandBrackets', () => {
  test("eta 3, R 81: the paper's table (Li et al. 2018, Table 1)", () => {
    const brackets = hyperbandBrackets(3, 1, 81);
    expect(brackets.map((b) => b.s)).toEqual([4, 3, 2, 1, 0]);
    expect(brackets.map((b) => b.n)).toEqual([81, 34, 15, 8, 5]);
    expect(brackets.map((b) => b.r)).toEqual([1, 3, 9, 27, 81]);
    expect(brackets.map((b) => b.rungs)).toEqual([
      [1, 3, 9, 27, 81],
      [3, 9, 27, 81],
      [9, 27, 81],
      [27, 81],
      [81],
    ]);
  });

  test('s_max is exact where floating-point logarithms are not', () => {
    // Math.log(1000) / Math.log(10) = 2.9999999999999996
    expect(hyperbandBrackets(10, 1, 1000)[0]?.s).toBe(3);
    expect(hyperbandBrackets(10, 1, 999)[0]?.s).toBe(2);
    expect(hyperbandBrackets(3, 1, 243)[0]?.s).toBe(5);
    expect(hyperbandBrackets(2, 5, 5)).toEqual([{ s: 0, n: 1, r: 5, rungs: [5] }]);
  });

  test.prop([
    fc.integer({ min: 2, max: 5 }),
    fc.integer({ min: 1, max: 20 }),
    fc.integer({ min: 0, max: 500 }),
  ])('rungs rise strictly from >= minSteps to maxSteps', (eta, minSteps, extra) => {
    const maxSteps = minSteps + extra;
    const brackets = hyperbandBrackets(eta, minSteps, maxSteps);
    const sMax = brackets[0]?.s ?? -1;
    expect(minSteps * eta ** sMax).toBeLessThanOrEqual(maxSteps);
    expect(minSteps * eta ** (sMax + 1)).toBeGreaterThan(maxSteps);
    for (const b of brackets) {
      expect(b.rungs).toHaveLength(b.s + 1);
      expect(b.rungs[b.s]).toBe(maxSteps);
      expect(b.r).toBeGreaterThanOrEqual(minSteps);
      for (let i = 1; i < b.rungs.length; i++) {
        expect(b.rungs[i]).toBeGreaterThan(b.rungs[i - 1] as number);
      }
      expect(b.n).toBe(Math.ceil(((sMax + 1) / (b.s + 1)) * eta ** b.s - 1e-9));
    }
  });
});

describe('synchronous hyperband', () => {
  test('eta 3, R 81: bracket sizes, starting steps and successive halving in each', () => {
    const study = tunerStudy({ kind: 'hyperband', minSteps: 1, seed: 2 });
    const { ctx, ended } = runTuner(study);
    expect(ended).toBe('finish');
    const all = ctx.all();
    expect(all).toHaveLength(143);
    // every trial is proposed at start, bracket s_max first
    expect(ctx.log.slice(0, 143).every((a) => a.op === 'propose')).toBe(true);
    const sizes = [81, 34, 15, 8, 5];
    const starts = [1, 3, 9, 27, 81];
    let from = 0;
    const brackets: HarnessTrial[][] = sizes.map((n) => all.slice(from, (from += n)));
    const proposals = ctx.actions('propose');
    brackets.forEach((trials, i) => {
      for (const t of trials) {
        expect(proposals[t.n - 1]?.until).toBe(starts[i]);
      }
    });
    // how many trials of each bracket reached each of its rungs: n_i = floor(n eta^-i)
    const reached = brackets.map((trials, i) =>
      starts
        .slice(i)
        .map((step) => trials.filter((t) => t.values.has(step) && t.reached >= step).length),
    );
    expect(reached).toEqual([[81, 27, 9, 3, 1], [34, 11, 3, 1], [15, 5, 1], [8, 2], [5]]);
    // the trials at R are the ones left in each bracket; everything else was stopped
    expect(all.filter((t) => t.reached === 81)).toHaveLength(1 + 1 + 1 + 2 + 5);
    expect(ctx.actions('stop')).toHaveLength(143 - 10);
  });

  test('createTuner picks the synchronous variant unless async is set', () => {
    expect(createTuner(tunerStudy({ kind: 'hyperband', minSteps: 1 }))).toBeInstanceOf(
      HyperbandTuner,
    );
    expect(createTuner(tunerStudy({ kind: 'hyperband', minSteps: 1, async: true }))).toBeInstanceOf(
      AsyncHyperbandTuner,
    );
  });
});

describe('asynchronous hyperband', () => {
  test('configurations go to the brackets round-robin; the budget defaults to one iteration', () => {
    const study = tunerStudy(
      { kind: 'hyperband', minSteps: 1, async: true, maxConcurrent: 7 },
      { workers: 2 },
    );
    const { ctx, ended } = runTuner(study, { order: { seed: 3 } });
    expect(ended).toBe('finish');
    const proposals = ctx.actions('propose');
    expect(proposals).toHaveLength(143);
    expect(proposals.slice(0, 10).map((p) => p.until)).toEqual([1, 3, 9, 27, 81, 1, 3, 9, 27, 81]);
    expect(ctx.peakRunning).toBe(7);
    expect(ctx.actions('stop')).toEqual([]);
  });

  test.prop([
    fc.integer({ min: 1, max: 40 }),
    fc.integer({ min: 1, max: 6 }),
    fc.integer({ min: 2, max: 3 }),
    fc.integer(),
  ])(
    'each promotion goes one rung up within its bracket; budget and concurrency hold',
    (trials, maxConcurrent, eta, orderSeed) => {
      const study = tunerStudy(
        { kind: 'hyperband', minSteps: 1, maxSteps: 27, eta, async: true, trials, maxConcurrent },
        { steps: 27 },
      );
      const { ctx, ended } = runTuner(study, { order: { seed: orderSeed } });
      expect(ended).toBe('finish');
      const brackets = hyperbandBrackets(eta, 1, 27);
      const proposals = ctx.actions('propose');
      expect(proposals).toHaveLength(trials);
      expect(ctx.peakRunning).toBeLessThanOrEqual(maxConcurrent);
      const rungsOf = new Map(
        proposals.map((p, i) => [p.trial, brackets[i % brackets.length]?.rungs ?? []]),
      );
      const until = new Map(proposals.map((p) => [p.trial, p.until]));
      for (const p of proposals) expect(p.until).toBe(rungsOf.get(p.trial)?.[0]);
      for (const e of ctx.actions('extend')) {
        const rungs = rungsOf.get(e.trial) ?? [];
        expect(e.until).toBe(rungs[rungs.indexOf(until.get(e.trial) as number) + 1]);
        until.set(e.trial, e.until);
      }
    },
  );
});
