import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  asha,
  choice,
  concat,
  constant,
  cosine,
  cyclic,
  defineStudy,
  exponential,
  grid,
  hyperband,
  int,
  loguniform,
  median,
  multistep,
  nodeTrainer,
  pbt,
  piecewise,
  pythonTrainer,
  random,
  sha,
  simTrainer,
  step,
  toStudy,
  uniform,
  warmup,
} from '../../src/sdk/index.js';
import type { StudyDefinition } from '../../src/sdk/index.js';
import { SCHEDULE_KINDS } from '../../src/schedule/index.js';
import { DOMAIN_KINDS, parseStudy, TUNER_KINDS, TRAINER_KINDS } from '../../src/study/index.js';

/**
 * Studies generated twice over: once with the builders, once as the JSON the format
 * expects (written out here, fields in the format's order). The two must be the same
 * object with the same key order, `parseStudy` must accept it, and a JSON round trip
 * must give the same parsed study.
 */

/** One generated value: what the builders made, and the JSON the format expects. */
interface Pair {
  readonly built: unknown;
  readonly json: unknown;
}

const plain = (v: unknown): Pair => ({ built: v, json: v });

/** A builder called with its options in a random order (the output's order is fixed). */
type Builder = (options: never) => unknown;

/**
 * `{kind, ...fields}`: the builder gets the fields in a random order, the JSON lists them
 * in the order of `fields` (the format's order); absent optional fields are left out.
 */
function built(
  kind: string | null,
  build: Builder,
  fields: Record<string, fc.Arbitrary<Pair>>,
  optional: readonly string[] = [],
): fc.Arbitrary<Pair> {
  const names = Object.keys(fields);
  const requiredKeys = names.filter((n) => !optional.includes(n));
  return fc
    .tuple(
      fc.record(fields, { requiredKeys }),
      fc.shuffledSubarray(names, { minLength: names.length }),
    )
    .map(([values, order]) => {
      const v = values as Partial<Record<string, Pair>>;
      const present = (n: string): n is string => v[n] !== undefined;
      const options = Object.fromEntries(
        order.filter(present).map((n) => [n, (v[n] as Pair).built]),
      );
      const json = Object.fromEntries(names.filter(present).map((n) => [n, (v[n] as Pair).json]));
      return {
        built: build(options as never),
        json: kind === null ? json : { kind, ...json },
      };
    });
}

// --- Numbers, each either itself or a domain whose first value it is ------------------

const REALS = [0.5, 0.1, 0.05, 0.01, 0.2, 1, 2, 0];
const real = fc.constantFrom(...REALS);
const positiveReal = fc.constantFrom(...REALS.filter((r) => r > 0));

/** `v`, or a domain whose first value (first option, lower bound) is `v`. */
function around(v: number, integer: boolean): fc.Arbitrary<Pair> {
  const others = integer ? fc.integer({ min: 1, max: 300 }) : real;
  const options: fc.Arbitrary<Pair>[] = [
    fc.constant(plain(v)),
    fc.array(others, { maxLength: 3 }).map((rest) => ({
      built: choice([v, ...rest]),
      json: { choice: [v, ...rest] },
    })),
    fc.tuple(others, others).map(([a, b]) => ({
      built: choice([choice([v, a]), b]),
      json: { choice: [{ choice: [v, a] }, b] },
    })),
  ];
  if (integer) {
    options.push(
      fc.integer({ min: 0, max: 4 }).map((k) => ({
        built: int(v, v + k),
        json: { int: [v, v + k] },
      })),
    );
  } else {
    options.push(
      positiveReal.map((d) => ({ built: uniform(v, v + d), json: { uniform: [v, v + d] } })),
    );
    if (v > 0) {
      options.push(
        positiveReal.map((d) => ({
          built: loguniform(v, v + d),
          json: { loguniform: [v, v + d] },
        })),
      );
    }
  }
  return fc.oneof(...options);
}

const tunableReal = real.chain((v) => around(v, false));
const tunablePositive = positiveReal.chain((v) => around(v, false));
const tunableInt = (min: number) => fc.integer({ min, max: 200 }).chain((v) => around(v, true));

/** Strictly increasing steps from 1, each tunable; or a choice of whole arrays. */
function increasing(minLength: number, maxLength: number): fc.Arbitrary<Pair> {
  const steps = fc
    .uniqueArray(fc.integer({ min: 1, max: 200 }), { minLength, maxLength })
    .map((xs) => [...xs].sort((a, b) => a - b));
  const each = steps.chain((xs) =>
    fc.tuple(...xs.map((x) => around(x, true))).map((items) => ({
      built: items.map((p) => p.built),
      json: items.map((p) => p.json),
    })),
  );
  const whole = fc.tuple(steps, steps).map(([a, b]) => ({
    built: choice([a, b]),
    json: { choice: [a, b] },
  }));
  return fc.oneof({ weight: 3, arbitrary: each }, { weight: 1, arbitrary: whole });
}

// --- Schedules --------------------------------------------------------------------------

const WORDS = ['sgd', 'adam', 'adamw'];

/** A constant value: a number, or (`numeric` false) also a string or a choice of them. */
function value(numeric: boolean): fc.Arbitrary<Pair> {
  if (numeric) return tunableReal;
  return fc.oneof(
    tunableReal,
    fc.constantFrom(...WORDS).map(plain),
    fc.shuffledSubarray(WORDS, { minLength: 1 }).map((ws) => ({
      built: choice(ws),
      json: { choice: ws },
    })),
  );
}

const memo = new Map<string, fc.Arbitrary<Pair>>();

/**
 * A schedule valid with every domain at its first value; `numeric`: its value at step 0
 * is a number (what a warmup ramps towards). `depth` bounds the nesting.
 */
function schedule(numeric: boolean, depth: number): fc.Arbitrary<Pair> {
  const key = `${numeric}/${depth}`;
  const known = memo.get(key);
  if (known) return known;
  const kinds: fc.Arbitrary<Pair>[] = [
    value(numeric),
    built('constant', constant, { value: value(numeric) }),
    fc.nat({ max: 3 }).chain((n) =>
      built('piecewise', piecewise, {
        values: fc.tuple(...Array.from({ length: n + 1 }, () => value(numeric))).map((vs) => ({
          built: vs.map((p) => p.built),
          json: vs.map((p) => p.json),
        })),
        boundaries: increasing(n, n),
      }),
    ),
    built('step', step, { init: tunableReal, factor: tunableReal, every: tunableInt(1) }),
    built('multistep', multistep, {
      init: tunableReal,
      factor: tunableReal,
      milestones: increasing(0, 3),
    }),
    built('exponential', exponential, { init: tunableReal, gamma: tunablePositive }),
    built('cosine', cosine, { max: tunableReal, min: tunableReal, period: tunableInt(1) }),
    built('cyclic', cyclic, { low: tunableReal, high: tunableReal, halfPeriod: tunableInt(1) }),
  ];
  if (depth > 0) {
    const inner = schedule(true, depth - 1);
    const any = schedule(numeric, depth - 1);
    kinds.push(
      built('warmup', warmup, { steps: tunableInt(0), from: tunableReal, then: inner }),
      fc
        .tuple(increasing(0, 2), fc.array(any, { minLength: 3, maxLength: 3 }))
        .chain(([untils, schedules]) => {
          const n = Array.isArray(untils.json) ? untils.json.length : 0;
          const untilAt = (i: number): Pair => ({
            built: (untils.built as unknown[])[i],
            json: (untils.json as unknown[])[i],
          });
          const parts = Array.from({ length: n + 1 }, (_, i) =>
            built(null, (o: never) => o, {
              ...(i < n ? { until: fc.constant(untilAt(i)) } : {}),
              schedule: fc.constant(schedules[i] as Pair),
            }),
          );
          return built('concat', concat, {
            parts: fc.tuple(...parts).map((ps) => ({
              built: ps.map((p) => p.built),
              json: ps.map((p) => p.json),
            })),
          });
        }),
      // A choice of whole schedules: each option is valid on its own.
      fc.array(any, { minLength: 1, maxLength: 3 }).map((options) => ({
        built: choice(options.map((o) => o.built) as never[]),
        json: { choice: options.map((o) => o.json) },
      })),
    );
  }
  const arbitrary = fc.oneof(...kinds);
  memo.set(key, arbitrary);
  return arbitrary;
}

// --- Tuners and trainers ------------------------------------------------------------------

const nat = (min: number, max: number) => fc.integer({ min, max }).map(plain);
const seed = nat(0, 1000);

/** A tuner valid for a study of `steps` steps; the grid is chosen by the caller. */
function tuner(steps: number): fc.Arbitrary<Pair> {
  const range = fc
    .tuple(fc.integer({ min: 1, max: steps }), fc.integer({ min: 1, max: steps }))
    .map(([a, b]) => [Math.min(a, b), Math.max(a, b)] as const);
  const stepRange = (
    kind: string,
    build: Builder,
    before: Record<string, fc.Arbitrary<Pair>>,
    after: Record<string, fc.Arbitrary<Pair>>,
    optional: readonly string[],
  ) =>
    range.chain(([min, max]) =>
      built(
        kind,
        build,
        {
          ...before,
          minSteps: fc.constant(plain(min)),
          maxSteps: fc.constant(plain(max)),
          ...after,
        },
        ['maxSteps', ...optional],
      ),
    );
  return fc.oneof(
    built('random', random, { trials: nat(1, 50), seed, maxConcurrent: nat(1, 8) }, [
      'seed',
      'maxConcurrent',
    ]),
    stepRange('sha', sha, { trials: nat(1, 50), eta: nat(2, 4) }, { seed }, ['eta', 'seed']),
    stepRange(
      'asha',
      asha,
      { trials: nat(1, 50), eta: nat(2, 4) },
      { seed, maxConcurrent: nat(1, 8) },
      ['eta', 'seed', 'maxConcurrent'],
    ),
    stepRange(
      'hyperband',
      hyperband,
      { eta: nat(2, 4) },
      { seed, async: fc.constant(plain(false)) },
      ['eta', 'seed', 'async'],
    ),
    stepRange(
      'hyperband',
      hyperband,
      { eta: nat(2, 4) },
      {
        seed,
        async: fc.constant(plain(true)),
        trials: nat(1, 50),
        maxConcurrent: nat(1, 8),
      },
      ['eta', 'seed', 'trials', 'maxConcurrent'],
    ),
    built(
      'median',
      median,
      {
        trials: nat(1, 50),
        seed,
        graceSteps: nat(0, steps),
        minTrials: nat(1, 5),
        maxConcurrent: nat(1, 8),
      },
      ['seed', 'graceSteps', 'minTrials', 'maxConcurrent'],
    ),
    built(
      'pbt',
      pbt,
      {
        population: nat(2, 20),
        interval: nat(1, steps),
        quantile: fc.constantFrom(0.1, 0.25, 0.5).map(plain),
        perturb: fc.array(positiveReal, { minLength: 1, maxLength: 3 }).map(plain),
        resample: fc.constantFrom(0, 0.25, 1).map(plain),
        seed,
      },
      ['quantile', 'perturb', 'resample', 'seed'],
    ),
  );
}

const gridTuner = built('grid', grid, { maxConcurrent: nat(1, 8) }, ['maxConcurrent']);

const seconds = fc.constantFrom(0, 0.05, 1.5, 3).map(plain);
const trainer: fc.Arbitrary<Pair> = fc.oneof(
  built(
    'sim',
    simTrainer,
    {
      stepSeconds: fc.constantFrom(0.5, 3.4).map(plain),
      startSeconds: seconds,
      saveSeconds: seconds,
      loadSeconds: seconds,
      stepScale: fc.constant(plain({ by: 'batchSize', values: { '512': 0.45 }, default: 1 })),
      sharing: fc.constantFrom([1], [1, 1.95, 2.15]).map(plain),
    },
    ['startSeconds', 'saveSeconds', 'loadSeconds', 'stepScale', 'sharing'],
  ),
  built(
    'node',
    nodeTrainer,
    {
      module: fc.constantFrom('./trainer.js', '/abs/trainer.js', 'some-package').map(plain),
      export: fc.constantFrom('default', 'MyTrainer').map(plain),
      version: fc.constantFrom('1.0.0', 'git:3f2a9c1').map(plain),
    },
    ['export', 'version'],
  ),
  built(
    'python',
    pythonTrainer,
    {
      module: fc.constantFrom('quadratic:QuadraticTrainer', 'pkg.mod:Net').map(plain),
      path: fc.constantFrom([], ['../python/examples']).map(plain),
      python: fc.constant(plain('/usr/bin/python3')),
      version: fc.constant(plain('v2')),
    },
    ['path', 'python', 'version'],
  ),
);

// --- Whole studies --------------------------------------------------------------------

/**
 * How many configurations a grid over `value` has (choices add up, the rest multiplies),
 * Infinity with a continuous domain: whether the grid tuner can take it.
 */
function gridSize(value: unknown): number {
  if (Array.isArray(value)) return value.reduce((n: number, v) => n * gridSize(v), 1);
  if (typeof value !== 'object' || value === null) return 1;
  const o = value as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1 && keys[0] === 'choice') {
    return (o.choice as unknown[]).reduce((n: number, v) => n + gridSize(v), 0);
  }
  if (keys.length === 1 && keys[0] === 'int') {
    const [lo, hi] = o.int as [number, number];
    return hi - lo + 1;
  }
  if (keys.length === 1 && (keys[0] === 'uniform' || keys[0] === 'loguniform')) return Infinity;
  return keys.reduce((n, k) => n * gridSize(o[k]), 1);
}

const HP_NAMES = ['lr', 'weightDecay', 'batchSize', 'optimizer', 'momentum'];

interface Generated {
  readonly built: StudyDefinition;
  readonly json: unknown;
  readonly grid: boolean;
}

const study: fc.Arbitrary<Generated> = fc
  .record({
    name: fc.constantFrom('study', 'resnet20-cifar10', 'a.b_c-1'),
    steps: fc.integer({ min: 1, max: 200 }),
    hps: fc.shuffledSubarray(HP_NAMES, { minLength: 1, maxLength: 4 }),
    seedParam: tunableInt(0),
    wantGrid: fc.boolean(),
    optional: fc.record(
      {
        workers: fc.integer({ min: 1, max: 8 }),
        resources: fc.constantFrom({ gpus: 0.5 }, { gpus: 1, cluster: 2 }, { gpus: 0 }),
        keepBest: fc.boolean(),
        retries: fc.integer({ min: 0, max: 5 }),
        taskTimeout: fc.constantFrom(1, 60, 3600.5),
      },
      { requiredKeys: [] },
    ),
  })
  .chain((s) =>
    fc
      .record({
        space: fc.tuple(...s.hps.map((hp) => schedule(hp !== 'lr', 2))),
        tuner: tuner(s.steps),
        grid: gridTuner,
        trainer,
        evalEvery: fc.option(fc.integer({ min: 1, max: s.steps }), { nil: undefined }),
        checkpointEvery: fc.option(fc.integer({ min: 1, max: 300 }), { nil: undefined }),
      })
      .map((r): Generated => {
        const space = (side: 'built' | 'json') =>
          Object.fromEntries(s.hps.map((hp, i) => [hp, (r.space[i] as Pair)[side]]));
        const params = (side: 'built' | 'json') => ({
          model: 'resnet20',
          seed: s.seedParam[side],
        });
        const useGrid = s.wantGrid && gridSize(params('json')) * gridSize(space('json')) <= 10_000;
        const t = useGrid ? r.grid : r.tuner;
        const at = (side: 'built' | 'json') => ({
          name: s.name,
          params: params(side),
          space: space(side),
          steps: s.steps,
          ...(r.evalEvery === undefined ? {} : { evalEvery: r.evalEvery }),
          tuner: t[side],
          metric: { name: 'loss', mode: 'min' },
          trainer: r.trainer[side],
          ...s.optional,
          ...(r.checkpointEvery === undefined ? {} : { checkpointEvery: r.checkpointEvery }),
        });
        return { built: at('built') as StudyDefinition, json: at('json'), grid: useGrid };
      }),
  );

/** Every schedule kind, domain kind, tuner and trainer kind a JSON value holds. */
function kindsIn(value: unknown, into: Set<string>): void {
  if (Array.isArray(value)) {
    for (const v of value) kindsIn(v, into);
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  const o = value as Record<string, unknown>;
  const keys = Object.keys(o);
  if (typeof o.kind === 'string') into.add(o.kind);
  if (keys.length === 1) into.add(keys[0] as string);
  for (const k of keys) kindsIn(o[k], into);
}

describe('generated studies', () => {
  it('the builders give the JSON of the format, which parseStudy accepts and a JSON round trip keeps', () => {
    const RUNS = 400;
    let runs = 0;
    let grids = 0;
    const seen = new Set<string>();
    fc.assert(
      fc.property(study, (g) => {
        const def = defineStudy(g.built);
        expect(def).toEqual(g.json);
        // Key order decides the grid order: the texts must be the same too.
        expect(JSON.stringify(def)).toBe(JSON.stringify(g.json));
        const parsed = parseStudy(g.json);
        expect(toStudy(def)).toEqual(parsed);
        const again: unknown = JSON.parse(JSON.stringify(def));
        expect(toStudy(again as StudyDefinition)).toEqual(parsed);
        kindsIn(g.json, seen);
        runs++;
        if (g.grid) grids++;
      }),
      { numRuns: RUNS },
    );
    expect(runs).toBe(RUNS);
    expect(grids).toBeGreaterThan(0);
    // Every builder was exercised.
    for (const kind of [...SCHEDULE_KINDS, ...DOMAIN_KINDS, ...TUNER_KINDS, ...TRAINER_KINDS]) {
      expect(seen, kind).toContain(kind);
    }
  });

  it('domain builders give their JSON for any bounds and options', () => {
    const RUNS = 200;
    let runs = 0;
    const n = fc.double({ noNaN: true });
    fc.assert(
      fc.property(n, n, fc.array(fc.jsonValue(), { maxLength: 5 }), (lo, hi, options) => {
        expect(uniform(lo, hi)).toStrictEqual({ uniform: [lo, hi] });
        expect(loguniform(lo, hi)).toStrictEqual({ loguniform: [lo, hi] });
        expect(int(lo, hi)).toStrictEqual({ int: [lo, hi] });
        expect(choice(options as never[])).toStrictEqual({ choice: options });
        runs++;
      }),
      { numRuns: RUNS },
    );
    expect(runs).toBe(RUNS);
  });
});
