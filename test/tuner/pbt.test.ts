import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { valueAt } from '../../src/schedule/index.js';
import type { MetricMode } from '../../src/study/index.js';
import { PbtTuner, compareMetric, createTuner, pbtQuantileCount } from '../../src/tuner/index.js';
import { runTuner, tunerStudy } from '../support/tuner-harness.js';
import type { FakeContext, HarnessTrial } from '../support/tuner-harness.js';

/** The value of `hp` of a trial at step t. */
function hpAt(t: HarnessTrial | undefined, hp: string, step: number): unknown {
  const c = t?.schedules[hp];
  return c ? valueAt(c, step) : undefined;
}

/**
 * Replays a PBT run round by round: at each round step s < steps, the members are ranked by
 * their value at s; exactly the bottom k are stopped, each replaced by a fork at s of one
 * of the top k; every other member is extended. Returns the rounds' forks.
 */
function checkRounds(ctx: FakeContext, population: number, interval: number, quantile: number) {
  const { steps, metric } = ctx.study;
  const k = pbtQuantileCount(population, quantile);
  let members = ctx.all().slice(0, population);
  const rounds: { step: number; forks: HarnessTrial[]; sources: string[] }[] = [];
  for (let s = interval; s < steps; s += interval) {
    const ranked = [...members].sort(
      (a, b) =>
        compareMetric(metric.mode, a.values.get(s) as number, b.values.get(s) as number) ||
        a.n - b.n,
    );
    const top = ranked.slice(0, k).map((t) => t.id);
    const bottom = ranked.slice(population - k).map((t) => t.id);
    const forks = ctx.all().filter((t) => t.forkOf?.at === s);
    expect(forks).toHaveLength(k);
    for (const f of forks) expect(top).toContain(f.forkOf?.trial);
    // stopped at this round: it never reported after s
    const stopped = members
      .filter((m) => m.status === 'stopped' && m.reached === s)
      .map((m) => m.id);
    expect(stopped.sort()).toEqual([...bottom].sort());
    for (const m of members) {
      if (!bottom.includes(m.id)) expect(m.values.has(Math.min(s + interval, steps))).toBe(true);
    }
    rounds.push({ step: s, forks, sources: forks.map((f) => f.forkOf?.trial ?? '') });
    members = [...members.filter((m) => !bottom.includes(m.id)), ...forks];
    expect(members).toHaveLength(population);
  }
  // the final population all reached the end
  for (const m of members) expect(m.reached).toBe(steps);
  return rounds;
}

describe('pbtQuantileCount', () => {
  test('ceil(population * quantile), at most half the population', () => {
    expect(pbtQuantileCount(4, 0.25)).toBe(1);
    expect(pbtQuantileCount(2, 0.25)).toBe(1);
    expect(pbtQuantileCount(10, 0.3)).toBe(3);
    expect(pbtQuantileCount(20, 0.2)).toBe(4);
    expect(pbtQuantileCount(5, 0.5)).toBe(2);
    expect(pbtQuantileCount(8, 0.01)).toBe(1);
  });
});

describe('population-based training', () => {
  test('forks the bottom member from a top one at each interval, with perturbed searched values', () => {
    const study = tunerStudy(
      {
        kind: 'pbt',
        population: 4,
        interval: 5,
        resample: 0,
        perturb: [0.5, 2],
        seed: 1,
      },
      { steps: 20 },
    );
    const { ctx, ended } = runTuner(study);
    expect(ended).toBe('finish');
    expect(ctx.actions('propose').map((p) => p.until)).toEqual([5, 5, 5, 5]);
    const rounds = checkRounds(ctx, 4, 5, 0.25);
    expect(rounds.map((r) => r.step)).toEqual([5, 10, 15]);
    for (const { step, forks } of rounds) {
      for (const f of forks) {
        const source = ctx.trials.get(f.forkOf?.trial ?? '');
        // the fork's lr from the fork step on is the source's at that step, times 0.5 or 2
        const ratio = (hpAt(f, 'lr', step) as number) / (hpAt(source, 'lr', step) as number);
        expect([0.5, 2].some((x) => Math.abs(ratio - x) < 1e-9)).toBe(true);
        expect(hpAt(f, 'lr', step + 3)).toBe(hpAt(f, 'lr', step));
        // before it, the source's schedule; the fixed momentum is never perturbed
        expect(hpAt(f, 'lr', step - 1)).toBe(hpAt(source, 'lr', step - 1));
        expect(hpAt(f, 'momentum', step)).toBe(0.9);
        expect(ctx.actions('fork').find((a) => a.trial === f.id)?.until).toBe(step + 5);
      }
    }
    expect(ctx.actions('fork').every((f) => f.hps.join() === 'lr')).toBe(true);
  });

  test('resample 1 forks with a fresh configuration (every hyperparameter replaced)', () => {
    const study = tunerStudy(
      { kind: 'pbt', population: 4, interval: 10, resample: 1 },
      { steps: 30 },
    );
    const { ctx } = runTuner(study);
    const forks = ctx.actions('fork');
    expect(forks).toHaveLength(2);
    for (const f of forks) expect([...f.hps].sort()).toEqual(['lr', 'momentum']);
    for (const f of forks) {
      const lr = hpAt(ctx.trials.get(f.trial), 'lr', f.at) as number;
      expect(lr).toBeGreaterThanOrEqual(1e-4);
      expect(lr).toBeLessThanOrEqual(1);
    }
  });

  test('the last interval may be shorter; no round at the end', () => {
    const study = tunerStudy({ kind: 'pbt', population: 3, interval: 4 }, { steps: 10 });
    const { ctx } = runTuner(study);
    const untils = ctx.actions('extend').map((e) => e.until);
    expect(new Set(untils)).toEqual(new Set([8, 10]));
    expect(ctx.actions('fork').map((f) => [f.at, f.until])).toEqual([
      [4, 8],
      [8, 10],
    ]);
  });

  test.prop([
    fc.integer({ min: 2, max: 10 }),
    fc.integer({ min: 1, max: 8 }),
    fc.double({ min: 0.01, max: 0.5, noNaN: true }),
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.constantFrom<MetricMode>('min', 'max'),
    fc.integer({ min: 0, max: 1000 }),
    fc.integer(),
  ])(
    'keeps the population, replaces exactly the bottom quantile from the top, in any order',
    (population, interval, quantile, resample, mode, seed, orderSeed) => {
      const study = tunerStudy(
        { kind: 'pbt', population, interval, quantile, resample, seed },
        { steps: 20, metric: { name: 'm', mode } },
      );
      const { ctx, ended } = runTuner(study, { order: { seed: orderSeed } });
      expect(ended).toBe('finish');
      checkRounds(ctx, population, interval, quantile);
    },
  );

  test('createTuner picks PBT', () => {
    expect(createTuner(tunerStudy({ kind: 'pbt', population: 2, interval: 3 }))).toBeInstanceOf(
      PbtTuner,
    );
  });
});
