import { test } from '@fast-check/vitest';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  canonicalize,
  evaluate,
  firstDiff,
  parseSchedule,
  prefixKey,
  roundValue,
  splice,
  valueAt,
} from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { canonical, schedule } from '../support/arbitraries.js';

const H = 80;
const c = (x: unknown): Canonical => canonicalize(parseSchedule(x));

/** The reference: the first differing step by brute force. */
function scanDiff(a: Canonical, b: Canonical, from: number, to: number): number | null {
  for (let t = from; t < to; t++) if (valueAt(a, t) !== valueAt(b, t)) return t;
  return null;
}

describe('values of each kind', () => {
  const cases: [unknown, number[], unknown[]][] = [
    [0.1, [0, 1000], [0.1, 0.1]],
    [
      { kind: 'piecewise', values: [1, 2, 3], boundaries: [2, 5] },
      [0, 1, 2, 4, 5, 99],
      [1, 1, 2, 2, 3, 3],
    ],
    [{ kind: 'piecewise', values: ['sgd', 'adam'], boundaries: [3] }, [2, 3], ['sgd', 'adam']],
    [{ kind: 'step', init: 1, factor: 0.5, every: 3 }, [0, 2, 3, 6, 7], [1, 1, 0.5, 0.25, 0.25]],
    [
      { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [2, 4] },
      [0, 1, 2, 3, 4, 50],
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
    ],
    [{ kind: 'exponential', init: 2, gamma: 0.5 }, [0, 1, 3], [2, 1, 0.25]],
    [{ kind: 'cosine', max: 1, min: 0, period: 4 }, [0, 2, 4, 9], [1, 0.5, 0, 0]],
    [
      { kind: 'warmup', steps: 4, from: 0, then: { kind: 'constant', value: 0.4 } },
      [0, 1, 3, 4, 10],
      [0, 0.1, 0.3, 0.4, 0.4],
    ],
    [
      { kind: 'warmup', steps: 2, from: 0, then: { kind: 'step', init: 1, factor: 0.1, every: 3 } },
      [1, 2, 4, 5],
      [0.5, 1, 1, 0.1],
    ],
    [
      { kind: 'cyclic', low: 0, high: 1, halfPeriod: 4 },
      [0, 2, 4, 6, 8, 10],
      [0, 0.5, 1, 0.5, 0, 0.5],
    ],
    [
      {
        kind: 'concat',
        parts: [
          { until: 3, schedule: 128 },
          { until: 5, schedule: { kind: 'exponential', init: 1, gamma: 2 } },
          { schedule: 7 },
        ],
      },
      [0, 2, 3, 4, 5, 9],
      [128, 128, 1, 2, 7, 7],
    ],
  ];
  it.each(cases)('%j', (input, steps, expected) => {
    const s = parseSchedule(input);
    const canon = canonicalize(s);
    steps.forEach((t, i) => {
      const want = expected[i];
      if (typeof want === 'number') {
        expect(evaluate(s, t)).toBeCloseTo(want, 12);
        expect(valueAt(canon, t)).toBe(roundValue(want));
      } else {
        expect(evaluate(s, t)).toBe(want);
        expect(valueAt(canon, t)).toBe(want);
      }
    });
  });

  it('treats values equal to 12 significant digits as the same', () => {
    expect(c(0.1 * 0.1).hash).toBe(c(0.01).hash);
    expect(c({ kind: 'multistep', init: 0.1, factor: 0.1, milestones: [5] }).hash).toBe(
      c({ kind: 'piecewise', values: [0.1, 0.01], boundaries: [5] }).hash,
    );
    expect(c(0.1).hash).not.toBe(c(0.1000000001).hash);
  });

  it('gives equal hashes for the same schedule written differently', () => {
    expect(c({ kind: 'step', init: 0.1, factor: 1, every: 5 }).hash).toBe(c(0.1).hash);
    expect(c({ kind: 'warmup', steps: 0, from: 5, then: 0.1 }).hash).toBe(c(0.1).hash);
    expect(
      c({ kind: 'concat', parts: [{ until: 10, schedule: 0.1 }, { schedule: 0.1 }] }).hash,
    ).toBe(c(0.1).hash);
  });
});

describe('canonical form', () => {
  test.prop([schedule, fc.integer({ min: 0, max: 200 })])(
    'agrees with the definition at every step',
    (s, t) => {
      const v = evaluate(s, t);
      expect(valueAt(canonicalize(s), t)).toBe(typeof v === 'number' ? roundValue(v) : v);
    },
  );

  test.prop([canonical])('segments are contiguous from 0 and open at the end', (canon) => {
    const segs = canon.segments;
    expect(segs[0]?.start).toBe(0);
    for (let i = 1; i < segs.length; i++) expect(segs[i]?.start).toBe(segs[i - 1]?.end);
    expect(segs[segs.length - 1]?.end).toBeNull();
  });

  test.prop([canonical, canonical])('equal hashes mean equal values', (a, b) => {
    fc.pre(a.hash === b.hash);
    expect(scanDiff(a, b, 0, H)).toBeNull();
  });
});

describe('firstDiff', () => {
  test.prop([
    canonical,
    canonical,
    fc.integer({ min: 0, max: H - 1 }),
    fc.integer({ min: 1, max: H }),
  ])('finds exactly the first step at which two schedules differ', (a, b, from, len) => {
    const to = Math.min(H, from + len);
    expect(firstDiff(a, b, from, to)).toBe(scanDiff(a, b, from, to));
  });

  test.prop([canonical, canonical, fc.integer({ min: 1, max: H })])(
    'prefix keys are equal exactly when the prefixes agree',
    (a, b, end) => {
      const agree = firstDiff(a, b, 0, end) === null;
      expect(prefixKey(a, end) === prefixKey(b, end)).toBe(agree);
    },
  );

  it('is fast on long stepwise schedules (change points, not steps)', () => {
    const a = c({ kind: 'step', init: 1, factor: 0.5, every: 1_000_000 });
    const b = c({
      kind: 'concat',
      parts: [
        { until: 900_000_000, schedule: { kind: 'step', init: 1, factor: 0.5, every: 1_000_000 } },
        { schedule: 0 },
      ],
    });
    expect(firstDiff(a, b, 0, 1e12)).toBe(900_000_000);
  });

  it('bisects a monotone piece against a constant', () => {
    const a = c({ kind: 'cosine', max: 1, min: 0, period: 1e9 });
    const b = c(1);
    const d = firstDiff(a, b, 0, 2e9);
    expect(d).not.toBeNull();
    expect(valueAt(a, (d as number) - 1)).toBe(1);
    expect(valueAt(a, d as number)).not.toBe(1);
  });

  it('gives equal prefix keys to a ramp and a shorter ramp whose next value lies on its line', () => {
    // Found by the tree's order-independence property: 0 -> 0.05 over 5 steps then a
    // cosine from 0.05 equals 0 -> 0.1 over 10 steps on [0, 6).
    const a = c({
      kind: 'warmup',
      steps: 5,
      from: 0,
      then: { kind: 'cosine', max: 0.05, min: 0.001, period: 10 },
    });
    const b = c({ kind: 'warmup', steps: 10, from: 0, then: 0.1 });
    expect(firstDiff(a, b, 0, 20)).toBe(6);
    expect(prefixKey(a, 6)).toBe(prefixKey(b, 6));
    expect(prefixKey(a, 7)).not.toBe(prefixKey(b, 7));
  });

  it('refuses an infinite horizon', () => {
    expect(() => firstDiff(c(1), c(2), 0, Number.POSITIVE_INFINITY)).toThrow(/finite horizon/);
  });
});

describe('splice', () => {
  test.prop([canonical, canonical, fc.integer({ min: 0, max: H })])(
    'takes a before the step and b after',
    (a, b, at) => {
      const s = splice(a, b, at);
      for (let t = 0; t < H; t++) expect(valueAt(s, t)).toBe(valueAt(t < at ? a : b, t));
    },
  );
});
