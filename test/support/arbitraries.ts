import fc from 'fast-check';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { Canonical, Schedule } from '../../src/schedule/index.js';

/**
 * Schedules drawn from small pools of parameters, so that two draws often agree on a
 * prefix and then diverge: the interesting case for merging.
 */
const num = fc.constantFrom(0.1, 0.05, 0.01, 0.2, 1);
const factor = fc.constantFrom(0.1, 0.5, 1);
const small = fc.integer({ min: 1, max: 30 });

function increasing(maxLen: number): fc.Arbitrary<number[]> {
  return fc
    .uniqueArray(fc.integer({ min: 1, max: 60 }), { minLength: 0, maxLength: maxLen })
    .map((xs) => [...xs].sort((a, b) => a - b));
}

export const scheduleJson: fc.Arbitrary<unknown> = fc.letrec<{ s: unknown }>((tie) => ({
  s: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    num,
    fc.record({ kind: fc.constant('constant'), value: num }),
    increasing(3).chain((boundaries) =>
      fc.record({
        kind: fc.constant('piecewise'),
        boundaries: fc.constant(boundaries),
        values: fc.array(num, {
          minLength: boundaries.length + 1,
          maxLength: boundaries.length + 1,
        }),
      }),
    ),
    fc.record({ kind: fc.constant('step'), init: num, factor, every: fc.constantFrom(5, 10, 20) }),
    fc.record({ kind: fc.constant('multistep'), init: num, factor, milestones: increasing(3) }),
    fc.record({
      kind: fc.constant('exponential'),
      init: num,
      gamma: fc.constantFrom(0.9, 0.95, 1),
    }),
    fc.record({
      kind: fc.constant('cosine'),
      max: num,
      min: fc.constantFrom(0, 0.001),
      period: fc.constantFrom(10, 20, 50),
    }),
    fc.record({
      kind: fc.constant('warmup'),
      steps: fc.constantFrom(0, 5, 10),
      from: fc.constantFrom(0, 0.01),
      then: tie('s'),
    }),
    fc.record({
      kind: fc.constant('cyclic'),
      low: fc.constantFrom(0.01, 0.1),
      high: fc.constantFrom(0.1, 0.2),
      halfPeriod: fc.constantFrom(4, 8),
    }),
    fc
      .tuple(increasing(2), fc.array(tie('s'), { minLength: 3, maxLength: 3 }))
      .map(([untils, schedules]) => ({
        kind: 'concat',
        parts: [
          ...untils.map((until, i) => ({ until, schedule: schedules[i] })),
          { schedule: schedules[untils.length] },
        ],
      })),
  ),
})).s;

export const schedule: fc.Arbitrary<Schedule> = scheduleJson.map((j) => parseSchedule(j));
export const canonical: fc.Arbitrary<Canonical> = schedule.map((s) => canonicalize(s));
export { small };
