import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { gridConfigs, parseStudy } from '../../src/study/index.js';
import type { Study, TrialConfig } from '../../src/study/index.js';
import { resnetStudy, studyWith } from './fixtures.js';

const grid = (space: Record<string, unknown>, extra: Record<string, unknown> = {}): TrialConfig[] =>
  gridConfigs(parseStudy(studyWith(space, extra)));

/** Each config's resolved value of `hp` as a short JSON string. */
const schedulesOf = (configs: TrialConfig[], hp: string): string[] =>
  configs.map((c) => JSON.stringify(c.schedules[hp]));

describe('gridConfigs', () => {
  test('the ResNet multistep grid: 3 x 2 x 2 in order, last field fastest', () => {
    const configs = gridConfigs(parseStudy(resnetStudy()));
    expect(configs).toHaveLength(12);
    expect(configs.map((c) => c.index)).toEqual([...Array(12).keys()]);
    const rows = configs.map((c) => {
      const lr = c.schedules.lr;
      if (lr?.kind !== 'multistep') throw new Error('expected multistep');
      return [lr.init, ...lr.milestones];
    });
    expect(rows).toEqual([
      [0.05, 80, 120],
      [0.05, 80, 150],
      [0.05, 100, 120],
      [0.05, 100, 150],
      [0.1, 80, 120],
      [0.1, 80, 150],
      [0.1, 100, 120],
      [0.1, 100, 150],
      [0.2, 80, 120],
      [0.2, 80, 150],
      [0.2, 100, 120],
      [0.2, 100, 150],
    ]);
    for (const c of configs) {
      expect(c.schedules.momentum).toEqual({ kind: 'constant', value: 0.9 });
      expect(c.params).toEqual({ model: 'resnet20', dataset: 'cifar10', batchSize: 128, seed: 0 });
      expect(c.canonical.lr).toEqual(canonicalize(c.schedules.lr as never));
    }
  });

  test('schedules equal parseSchedule of the resolved value', () => {
    const [first] = gridConfigs(parseStudy(resnetStudy()));
    expect(first?.schedules.lr).toEqual(
      parseSchedule({ kind: 'multistep', init: 0.05, factor: 0.1, milestones: [80, 120] }, [
        'space',
        'lr',
      ]),
    );
  });

  test('3 lr choices x 2 milestone choices x a nested choice', () => {
    const configs = grid({
      lr: {
        kind: 'multistep',
        init: { choice: [0.1, 0.05, 0.01] },
        factor: 0.1,
        milestones: [{ choice: [30, 40] }, 60],
      },
      // a choice between a constant and a step schedule whose period is itself a choice
      wd: { choice: [0, { kind: 'step', init: 1e-4, factor: 0.5, every: { choice: [10, 20] } }] },
    });
    expect(configs).toHaveLength(3 * 2 * 3);
    expect(schedulesOf(configs, 'wd').slice(0, 3)).toEqual([
      '{"kind":"constant","value":0}',
      '{"kind":"step","init":0.0001,"factor":0.5,"every":10}',
      '{"kind":"step","init":0.0001,"factor":0.5,"every":20}',
    ]);
  });

  test('choices inside choices expand in place, in order', () => {
    const configs = grid({ x: { choice: [1, { choice: [2, { choice: [3, 4] }] }, 5] } });
    expect(configs.map((c) => c.canonical.x?.segments[0]?.piece)).toEqual(
      [1, 2, 3, 4, 5].map((v) => ({ f: 'const', v })),
    );
  });

  test('domains inside arrays: each milestone varies on its own', () => {
    const configs = grid({
      lr: {
        kind: 'piecewise',
        values: [0.1, { choice: [0.01, 0.02] }, 0.001],
        boundaries: [{ int: [10, 12] }, 50],
      },
    });
    expect(configs).toHaveLength(6);
    expect(schedulesOf(configs, 'lr')).toEqual(
      [
        [0.01, 10],
        [0.01, 11],
        [0.01, 12],
        [0.02, 10],
        [0.02, 11],
        [0.02, 12],
      ].map(([v, b]) =>
        JSON.stringify({ kind: 'piecewise', values: [0.1, v, 0.001], boundaries: [b, 50] }),
      ),
    );
  });

  test('int ranges are inclusive', () => {
    expect(grid({ bs: { int: [3, 5] } }).map((c) => c.schedules.bs)).toEqual([
      { kind: 'constant', value: 3 },
      { kind: 'constant', value: 4 },
      { kind: 'constant', value: 5 },
    ]);
  });

  test('params vary before the space, in key order, last key fastest', () => {
    const configs = grid(
      { lr: { choice: [0.1, 0.2] } },
      { params: { model: { choice: ['a', 'b'] }, fixed: 1, seed: { int: [0, 1] } } },
    );
    expect(configs.map((c) => [c.params.model, c.params.seed, c.schedules.lr])).toEqual(
      ['a', 'b'].flatMap((model) =>
        [0, 1].flatMap((seed) =>
          [0.1, 0.2].map((value) => [model, seed, { kind: 'constant', value }]),
        ),
      ),
    );
    expect(configs[0]?.params).toEqual({ model: 'a', fixed: 1, seed: 0 });
  });

  test('a study without domains is one configuration', () => {
    const configs = grid({ lr: { kind: 'cosine', max: 0.1, min: 0, period: 100 }, opt: 'sgd' });
    expect(configs).toHaveLength(1);
    expect(configs[0]?.schedules.opt).toEqual({ kind: 'constant', value: 'sgd' });
  });

  test('equal schedules share one Canonical object across trials', () => {
    const configs = grid({
      lr: { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [{ choice: [30, 40] }] },
      wd: { choice: [1e-4, 5e-4] },
      mom: { choice: [0.9, { kind: 'constant', value: 0.9 }] },
    });
    expect(configs).toHaveLength(8);
    const [a, b] = configs;
    expect(a?.canonical.lr).toBe(b?.canonical.lr);
    expect(a?.canonical.mom).toBe(b?.canonical.mom);
    // 0.9 and {"kind":"constant","value":0.9} are the same schedule: one Canonical
    expect(configs[0]?.canonical.mom).toBe(configs[1]?.canonical.mom);
    expect(new Set(configs.map((c) => c.canonical.wd)).size).toBe(2);
  });

  test('uniform is rejected with its path and a suggestion', () => {
    const study = parseStudy(
      studyWith(
        { lr: { kind: 'exponential', init: 0.1, gamma: { uniform: [0.9, 0.99] } } },
        { tuner: { kind: 'random', trials: 2 } },
      ),
    );
    expect(() => gridConfigs(study)).toThrow(ValidationError);
    expect(() => gridConfigs(study)).toThrow(
      /^space\.lr\.gamma: expected a choice or int domain .*\{"choice": \[\.\.\.\]\} or use the random tuner/,
    );
  });

  test('the size guard throws before enumerating', () => {
    // parseStudy only checks the size under the grid tuner
    const study = parseStudy(
      studyWith(
        { a: { int: [1, 100_000] }, b: { int: [1, 100_000] } },
        { tuner: { kind: 'random', trials: 1 } },
      ),
    );
    // 10^10 configurations: enumerating them first would never finish (nor fit in memory).
    expect(() => gridConfigs(study)).toThrow(/at most 100000 configurations.*got 10000000000/);
  });

  test('an invalid combination is reported with the hyperparameter path', () => {
    // milestones [50, 40] is reachable: the first values (30, 40) pass the load-time check
    const study = parseStudy(
      studyWith({
        lr: {
          kind: 'multistep',
          init: 0.1,
          factor: 0.1,
          milestones: [{ choice: [30, 50] }, 40],
        },
      }),
    );
    expect(() => gridConfigs(study)).toThrow(
      'space.lr.milestones[1]: expected an integer > 50 (steps must be strictly increasing), got 40 (number)',
    );
  });

  test('enumerates 100,000 configurations, in order, sharing equal schedules', () => {
    const study = parseStudy(
      studyWith(
        {
          lr: {
            kind: 'multistep',
            init: { choice: [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1] },
            factor: 0.1,
            milestones: [{ int: [10, 59] }, 80],
          },
          wd: { choice: Array.from({ length: 20 }, (_, i) => (i + 1) * 1e-5) },
          momentum: 0.9,
        },
        { params: { model: 'resnet20', seed: { int: [0, 9] } } },
      ),
    );
    const configs = gridConfigs(study);
    expect(configs).toHaveLength(100_000);
    // 10 inits x 50 first milestones: 500 lr schedules, each one Canonical object.
    expect(new Set(configs.map((c) => c.canonical.lr)).size).toBe(500);
    expect(new Set(configs.map((c) => c.canonical.wd)).size).toBe(20);
    expect(new Set(configs.map((c) => c.canonical.momentum)).size).toBe(1);
    // Seeds (params) vary slowest, then lr init and milestone, then wd fastest.
    const at = (i: number) => {
      const c = configs[i];
      const lr = c?.schedules.lr;
      if (lr?.kind !== 'multistep') throw new Error('expected multistep');
      return [c?.index, c?.params.seed, lr.init, lr.milestones[0], c?.schedules.wd];
    };
    expect(at(0)).toEqual([0, 0, 0.01, 10, { kind: 'constant', value: 1e-5 }]);
    expect(at(21)).toEqual([21, 0, 0.01, 11, { kind: 'constant', value: 2e-5 }]);
    expect(at(99_999)).toEqual([99_999, 9, 1, 59, { kind: 'constant', value: 20e-5 }]);
  });
});

/** Generated grid templates: a multistep lr and a weight decay choice, seeds in params. */
const templates = fc.record({
  inits: fc.uniqueArray(fc.integer({ min: 1, max: 1000 }), { minLength: 1, maxLength: 4 }),
  first: fc.uniqueArray(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 4 }),
  second: fc.uniqueArray(fc.integer({ min: 51, max: 100 }), { minLength: 1, maxLength: 4 }),
  wds: fc.uniqueArray(fc.constantFrom(0, 1e-5, 1e-4, 5e-4, 1e-3), { minLength: 1 }),
  seeds: fc.integer({ min: 1, max: 3 }),
  nested: fc.boolean(),
});

describe('gridConfigs properties', () => {
  test.prop([templates])(
    'grid size = product of choice sizes; configurations are distinct',
    (t) => {
      const wd = t.nested
        ? { choice: [{ choice: t.wds }, 'off'] } // nested choice: counts add up
        : { choice: t.wds };
      const study: Study = parseStudy(
        studyWith(
          {
            lr: {
              kind: 'multistep',
              init: { choice: t.inits.map((i) => i / 1000) },
              factor: 0.1,
              milestones: [{ choice: t.first }, { choice: t.second }],
            },
            wd,
          },
          { params: { seed: { int: [1, t.seeds] } } },
        ),
      );
      const configs = gridConfigs(study);
      const wdCount = t.wds.length + (t.nested ? 1 : 0);
      expect(configs).toHaveLength(
        t.inits.length * t.first.length * t.second.length * wdCount * t.seeds,
      );
      const keys = configs.map(
        (c) => `${String(c.params.seed)}|${c.canonical.lr?.hash}|${c.canonical.wd?.hash}`,
      );
      expect(new Set(keys).size).toBe(configs.length);
    },
  );
});
