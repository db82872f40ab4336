import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import { parseSchedule } from '../../src/schedule/index.js';

function rejects(input: unknown, path: string, expected: RegExp): void {
  let caught: unknown;
  try {
    parseSchedule(input, ['space', 'lr']);
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ValidationError);
  const err = caught as ValidationError;
  expect(err.path).toBe(path);
  expect(err.expected).toMatch(expected);
  expect(err.code).toBe('STAGETREE_VALIDATION');
}

describe('parseSchedule', () => {
  it('reads a bare number or string as a constant', () => {
    expect(parseSchedule(0.1)).toEqual({ kind: 'constant', value: 0.1 });
    expect(parseSchedule('sgd')).toEqual({ kind: 'constant', value: 'sgd' });
  });

  it('accepts every kind', () => {
    const inputs = [
      { kind: 'piecewise', values: [0.1, 0.01], boundaries: [100] },
      { kind: 'step', init: 0.1, factor: 0.5, every: 30 },
      { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [100, 150] },
      { kind: 'exponential', init: 0.1, gamma: 0.97 },
      { kind: 'cosine', max: 0.1, min: 0, period: 200 },
      {
        kind: 'warmup',
        steps: 5,
        from: 0,
        then: { kind: 'cosine', max: 0.1, min: 0, period: 195 },
      },
      { kind: 'cyclic', low: 0.01, high: 0.1, halfPeriod: 10 },
      {
        kind: 'concat',
        parts: [
          { until: 10, schedule: { kind: 'constant', value: 128 } },
          { schedule: { kind: 'constant', value: 'adam' } },
        ],
      },
    ];
    for (const input of inputs) expect(parseSchedule(input)).toEqual(input);
  });

  it('names the field, the expectation and the value received', () => {
    expect(() =>
      parseSchedule({ kind: 'cosine', max: 0.1, min: 0, period: 0 }, ['space', 'lr']),
    ).toThrow('space.lr.period: expected an integer >= 1, got 0 (number)');
  });

  it('rejects a missing field', () =>
    rejects({ kind: 'step', init: 0.1, factor: 0.1 }, 'space.lr.every', /required/));
  it('rejects a wrong type', () =>
    rejects(
      { kind: 'step', init: '0.1', factor: 0.1, every: 3 },
      'space.lr.init',
      /finite number/,
    ));
  it('rejects NaN and infinity', () => {
    rejects(
      { kind: 'exponential', init: Number.NaN, gamma: 0.9 },
      'space.lr.init',
      /finite number/,
    );
    rejects(
      { kind: 'constant', value: Number.POSITIVE_INFINITY },
      'space.lr.value',
      /finite number/,
    );
  });
  it('rejects a non-positive period', () =>
    rejects({ kind: 'cosine', max: 0.1, min: 0, period: -3 }, 'space.lr.period', /integer >= 1/));
  it('rejects non-increasing milestones', () =>
    rejects(
      { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [100, 100] },
      'space.lr.milestones[1]',
      /strictly increasing/,
    ));
  it('rejects piecewise with the wrong number of values', () =>
    rejects(
      { kind: 'piecewise', values: [1, 2, 3], boundaries: [10] },
      'space.lr.values',
      /2 values/,
    ));
  it('rejects an unknown kind', () =>
    rejects({ kind: 'linear' }, 'space.lr.kind', /one of constant, piecewise/));
  it('rejects an unknown field', () =>
    rejects(
      { kind: 'step', init: 0.1, factor: 0.1, every: 3, gama: 1 },
      'space.lr.gama',
      /no such field/,
    ));
  it('rejects concat without an open last part', () =>
    rejects(
      {
        kind: 'concat',
        parts: [
          { until: 10, schedule: 1 },
          { until: 20, schedule: 2 },
        ],
      },
      'space.lr.parts[1].until',
      /last part/,
    ));
  it('rejects concat with an open middle part', () =>
    rejects(
      { kind: 'concat', parts: [{ schedule: 1 }, { schedule: 2 }] },
      'space.lr.parts[0].until',
      /only the last part/,
    ));
  it('rejects concat parts that do not move forward', () =>
    rejects(
      {
        kind: 'concat',
        parts: [{ until: 10, schedule: 1 }, { until: 10, schedule: 2 }, { schedule: 3 }],
      },
      'space.lr.parts[1].until',
      /integer >= 11/,
    ));
  it('rejects a nested error with its full path', () =>
    rejects(
      {
        kind: 'warmup',
        steps: 5,
        from: 0,
        then: {
          kind: 'concat',
          parts: [{ schedule: { kind: 'step', init: 1, factor: 1, every: 0 } }],
        },
      },
      'space.lr.then.parts[0].schedule.every',
      /integer >= 1/,
    ));
  it('rejects a warmup towards a string', () =>
    rejects({ kind: 'warmup', steps: 5, from: 0, then: 'sgd' }, 'space.lr.then', /numeric/));
  it('rejects a value that is neither number nor string', () =>
    rejects(true, 'space.lr', /schedule object/));
});
