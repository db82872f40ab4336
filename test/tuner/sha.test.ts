import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import type { MetricMode } from '../../src/study/index.js';
import { ShaTuner, compareMetric, createTuner, shaRungs } from '../../src/tuner/index.js';
import { runTuner, tunerStudy } from '../support/tuner-harness.js';
import type { FakeContext, HarnessTrial } from '../support/tuner-harness.js';

/** The best `keep` of `trials` by their value at `step` (equal values: lower id first). */
function topAt(
  mode: MetricMode,
  trials: readonly HarnessTrial[],
  step: number,
  keep: number,
): string[] {
  return [...trials]
    .sort(
      (a, b) =>
        compareMetric(mode, a.values.get(step) as number, b.values.get(step) as number) ||
        a.n - b.n,
    )
    .slice(0, keep)
    .map((t) => t.id)
    .sort();
}

/** The ids of the trials that reported at `step`. */
function reportedAt(ctx: FakeContext, step: number): HarnessTrial[] {
  return ctx.all().filter((t) => t.values.has(step));
}

const ids = (trials: readonly HarnessTrial[]): string[] => trials.map((t) => t.id).sort();

describe('shaRungs', () => {
  test('minSteps * eta^k below maxSteps, then maxSteps', () => {
    expect(shaRungs(1, 81, 3)).toEqual([1, 3, 9, 27, 81]);
    expect(shaRungs(1, 100, 3)).toEqual([1, 3, 9, 27, 81, 100]);
    expect(shaRungs(5, 30, 2)).toEqual([5, 10, 20, 30]);
    expect(shaRungs(7, 7, 3)).toEqual([7]);
  });
});

describe('synchronous successive halving', () => {
  test('9 trials, eta 3: the best 3 at step 1 go on to 3, the best of those to 9', () => {
    const study = tunerStudy(
      { kind: 'sha', trials: 9, minSteps: 1, maxSteps: 9, seed: 4 },
      { steps: 9 },
    );
    const { ctx, ended } = runTuner(study);
    expect(ended).toBe('finish');
    const all = ctx.all();
    expect(all).toHaveLength(9);
    expect(ctx.actions('propose').every((p) => p.until === 1)).toBe(true);
    const top3 = topAt('min', all, 1, 3);
    expect(ids(reportedAt(ctx, 3))).toEqual(top3);
    const top1 = topAt('min', reportedAt(ctx, 3), 3, 1);
    expect(ids(reportedAt(ctx, 9))).toEqual(top1);
    // the losers were stopped at once, the winner is paused at the end
    expect(
      ctx
        .actions('stop')
        .map((s) => s.trial)
        .sort(),
    ).toEqual(ids(all.filter((t) => !top1.includes(t.id))));
    expect(ctx.trials.get(top1[0] as string)?.status).toBe('active');
  });

  test('equal values are broken by trial id', () => {
    const study = tunerStudy({ kind: 'sha', trials: 9, minSteps: 1, maxSteps: 9 }, { steps: 9 });
    const { ctx } = runTuner(study, { metric: () => 0.5 });
    expect(ids(reportedAt(ctx, 3))).toEqual(['t1', 't2', 't3']);
    expect(ids(reportedAt(ctx, 9))).toEqual(['t1']);
  });

  test('at least one trial goes on, up to maxSteps', () => {
    const study = tunerStudy({ kind: 'sha', trials: 2, minSteps: 1, maxSteps: 27 }, { steps: 30 });
    const { ctx } = runTuner(study);
    const winner = ctx.all().filter((t) => t.reached === 27);
    expect(winner).toHaveLength(1);
    expect([...(winner[0]?.values.keys() ?? [])]).toEqual([1, 3, 9, 27]);
  });

  test('evalEvery reports between rungs do not count as rung reports', () => {
    const study = tunerStudy(
      { kind: 'sha', trials: 4, eta: 2, minSteps: 2, maxSteps: 8 },
      { steps: 8, evalEvery: 1 },
    );
    const { ctx } = runTuner(study);
    expect(ids(reportedAt(ctx, 4))).toEqual(topAt('min', ctx.all(), 2, 2));
    expect(ctx.all().filter((t) => t.values.has(3))).toHaveLength(2);
    const winner = ctx.all().find((t) => t.reached === 8);
    expect([...(winner?.values.keys() ?? [])]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  test.prop([
    fc.integer({ min: 1, max: 30 }),
    fc.integer({ min: 2, max: 4 }),
    fc.integer({ min: 1, max: 3 }),
    fc.integer({ min: 0, max: 40 }),
    fc.constantFrom<MetricMode>('min', 'max'),
    fc.integer({ min: 0, max: 1000 }),
    fc.integer(),
  ])(
    'at every rung exactly the best max(1, floor(n_k / eta)) continue, in any arrival order',
    (n, eta, minSteps, extra, mode, seed, orderSeed) => {
      const maxSteps = minSteps + extra;
      const study = tunerStudy(
        { kind: 'sha', trials: n, eta, minSteps, maxSteps, seed },
        { steps: maxSteps, metric: { name: 'm', mode } },
      );
      const { ctx, ended } = runTuner(study, { order: { seed: orderSeed } });
      expect(ended).toBe('finish');
      expect(ctx.all()).toHaveLength(n);
      const rungs = shaRungs(minSteps, maxSteps, eta);
      let live = ctx.all();
      for (let k = 0; k < rungs.length; k++) {
        const step = rungs[k] as number;
        expect(ids(reportedAt(ctx, step))).toEqual(ids(live));
        if (k === rungs.length - 1) break;
        const keep = Math.max(1, Math.floor(live.length / eta));
        const top = topAt(mode, live, step, keep);
        live = reportedAt(ctx, rungs[k + 1] as number);
        expect(ids(live)).toEqual(top);
      }
      expect(live).toHaveLength(Math.max(1, Math.floor(n / eta ** (rungs.length - 1))));
      expect(ctx.actions('stop')).toHaveLength(n - live.length);
    },
  );

  test('createTuner picks SHA', () => {
    expect(createTuner(tunerStudy({ kind: 'sha', trials: 3, minSteps: 1 }))).toBeInstanceOf(
      ShaTuner,
    );
  });
});
