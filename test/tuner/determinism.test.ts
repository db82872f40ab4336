import { fc, test } from '@fast-check/vitest';
import { afterEach, describe, expect, vi } from 'vitest';
import { parseStudy } from '../../src/study/index.js';
import { compareMetric, reportsBetween, tunerSeed } from '../../src/tuner/index.js';
import { runTuner, scheduleHashes, tunerStudy } from '../support/tuner-harness.js';
import type { FakeContext } from '../support/tuner-harness.js';

/** One tuner of each kind (and both Hyperband variants), without a seed. */
const TUNERS: Record<string, Record<string, unknown>> = {
  random: { kind: 'random', trials: 6, maxConcurrent: 2 },
  sha: { kind: 'sha', trials: 9, minSteps: 3 },
  asha: { kind: 'asha', trials: 12, minSteps: 3, maxConcurrent: 3 },
  hyperband: { kind: 'hyperband', minSteps: 3 },
  asyncHyperband: { kind: 'hyperband', minSteps: 3, async: true, trials: 20, maxConcurrent: 4 },
  median: { kind: 'median', trials: 10, maxConcurrent: 3, graceSteps: 3 },
  pbt: { kind: 'pbt', population: 5, interval: 9, resample: 0.5 },
};

const run = (tuner: Record<string, unknown>, seed: number, orderSeed: number) =>
  JSON.stringify(
    runTuner(tunerStudy({ ...tuner, seed }, { steps: 27, evalEvery: 3 }), {
      order: { seed: orderSeed },
    }).ctx.log,
  );

describe('determinism', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  test.each(Object.keys(TUNERS))('%s: the same seed and events give the same decisions', (name) => {
    const tuner = TUNERS[name] as Record<string, unknown>;
    expect(run(tuner, 5, 1)).toBe(run(tuner, 5, 1));
    expect(run(tuner, 5, 1)).not.toBe(run(tuner, 6, 1));
  });

  test.each(Object.keys(TUNERS))('%s: no Math.random, no clock', (name) => {
    const random = vi.spyOn(Math, 'random');
    const now = vi.spyOn(Date, 'now');
    const perf = vi.spyOn(performance, 'now');
    run(TUNERS[name] as Record<string, unknown>, 3, 2);
    expect(random).not.toHaveBeenCalled();
    expect(now).not.toHaveBeenCalled();
    expect(perf).not.toHaveBeenCalled();
  });

  test.prop([fc.constantFrom(...Object.keys(TUNERS)), fc.integer(), fc.integer()])(
    'for any arrival order, a replay of the same events gives the same decisions',
    (name, seed, orderSeed) => {
      const tuner = TUNERS[name] as Record<string, unknown>;
      expect(run(tuner, seed % 1000, orderSeed)).toBe(run(tuner, seed % 1000, orderSeed));
    },
  );

  // The synchronous tuners decide only on complete information (a rung once every live
  // trial reported there; a new configuration when one finishes, drawn in proposal order),
  // so the order in which results arrive changes when they decide, not what. (The
  // asynchronous ones, ASHA, async Hyperband, median stopping and PBT, decide on what has
  // arrived so far: for them a replay feeds the logged order, as the test above checks.)
  test.prop([
    fc.constantFrom('random', 'sha', 'hyperband'),
    fc.nat({ max: 999 }),
    fc.array(fc.nat(), { minLength: 1, maxLength: 64 }),
  ])(
    'the synchronous tuners (random, SHA, Hyperband) decide the same in any arrival order of results',
    (name, seed, picks) => {
      const study = tunerStudy({ ...TUNERS[name], seed }, { steps: 27, evalEvery: 3 });
      const byStep = runTuner(study).ctx;
      // Each next result is picked among the pending ones by the generated numbers: any
      // interleaving of the trials' completions can come out.
      let i = 0;
      const permuted = runTuner(study, {
        order: (candidates) => (picks[i++ % picks.length] as number) % candidates.length,
      }).ctx;
      expect(outcome(permuted)).toEqual(outcome(byStep));
      expect(decisions(permuted)).toEqual(decisions(byStep));
    },
  );
});

/** Every trial at the end: what it trained (its configuration), how far, and its status. */
function outcome(ctx: FakeContext): unknown[] {
  return ctx.all().map((t) => ({
    id: t.id,
    params: t.params,
    schedules: scheduleHashes(t.schedules),
    until: t.until,
    status: t.status,
    forkOf: t.forkOf,
    reported: [...t.values.keys()].sort((a, b) => a - b),
  }));
}

/** The tuner's decisions (proposals, extensions, stops, forks, finish) as a sorted multiset. */
function decisions(ctx: FakeContext): string[] {
  return ctx.log
    .filter((a) => a.op !== 'metric' && a.op !== 'idle')
    .map((a) => JSON.stringify(a))
    .sort();
}

describe('helpers', () => {
  test('reportsBetween: the study report steps strictly inside (from, until)', () => {
    const study = { steps: 20, evalEvery: 5 };
    expect(reportsBetween(study, 0, 20)).toEqual([5, 10, 15]);
    expect(reportsBetween(study, 0, 5)).toEqual([]);
    expect(reportsBetween(study, 3, 12)).toEqual([5, 10]);
    expect(reportsBetween(study, 5, 11)).toEqual([10]);
    expect(reportsBetween({ steps: 7, evalEvery: 7 }, 0, 7)).toEqual([]);
  });

  test('tunerSeed: the tuner seed, 0 for a grid', () => {
    expect(tunerSeed(tunerStudy({ kind: 'pbt', population: 2, interval: 1, seed: 8 }).tuner)).toBe(
      8,
    );
    const grid = parseStudy({
      name: 'g',
      space: { lr: 0.1 },
      steps: 3,
      tuner: { kind: 'grid' },
      metric: { name: 'm', mode: 'min' },
      trainer: { kind: 'sim', stepSeconds: 1 },
    });
    expect(tunerSeed(grid.tuner)).toBe(0);
  });

  test('compareMetric: mode-aware, NaN worst', () => {
    expect(compareMetric('min', 1, 2)).toBeLessThan(0);
    expect(compareMetric('max', 1, 2)).toBeGreaterThan(0);
    expect(compareMetric('min', 1, 1)).toBe(0);
    expect(compareMetric('min', Number.NaN, 1e300)).toBeGreaterThan(0);
    expect(compareMetric('max', -Infinity, Number.NaN)).toBeLessThan(0);
    expect(compareMetric('max', Number.NaN, Number.NaN)).toBe(0);
  });
});
