import { describe, expect, test } from 'vitest';
import {
  gridConfigs,
  hyperbandIterationSize,
  parseStudy,
  parseStudyText,
  STUDY_LIMITS,
} from '../../src/study/index.js';
import { hyperbandBrackets } from '../../src/tuner/hyperband.js';
import { rejected, rejection, resnetStudy, studyWith } from './fixtures.js';

/** `{choice: [{choice: [... value ...]}]}`, `depth` choices deep, built without recursion. */
function nestedChoice(depth: number, value: unknown = 0.1): unknown {
  let v = value;
  for (let i = 0; i < depth; i++) v = { choice: [v] };
  return v;
}

/** A `warmup` schedule whose `then` nests `depth` warmups deep. */
function nestedWarmup(depth: number): unknown {
  let v: unknown = 0.1;
  for (let i = 0; i < depth; i++) v = { kind: 'warmup', steps: 1, from: 0, then: v };
  return v;
}

const L = STUDY_LIMITS;

describe('limits: trials', () => {
  const tuners: [string, (trials: number) => Record<string, unknown>][] = [
    ['random', (trials) => ({ kind: 'random', trials })],
    ['sha', (trials) => ({ kind: 'sha', trials, minSteps: 1 })],
    ['asha', (trials) => ({ kind: 'asha', trials, minSteps: 1 })],
    ['hyperband (async)', (trials) => ({ kind: 'hyperband', minSteps: 50, async: true, trials })],
    ['median', (trials) => ({ kind: 'median', trials })],
  ];
  test.each(tuners)('%s: trials up to the limit', (_kind, tuner) => {
    const at = (trials: number) =>
      studyWith({ lr: { choice: [0.1, 0.2] } }, { tuner: tuner(trials) });
    expect(parseStudy(at(L.maxTrials)).tuner).toMatchObject({ trials: L.maxTrials });
    const e = rejection(at(L.maxTrials + 1));
    expect(e.path).toBe('tuner.trials');
    expect(e.message).toBe(
      'tuner.trials: expected an integer from 1 to 100000, got 100001 (number)',
    );
    expect(rejection(at(1e9)).path).toBe('tuner.trials');
  });

  test('pbt: population up to the limit', () => {
    const at = (population: number) =>
      studyWith({ lr: 0.1 }, { tuner: { kind: 'pbt', population, interval: 10 } });
    expect(parseStudy(at(L.maxTrials)).tuner).toMatchObject({ population: L.maxTrials });
    expect(rejection(at(L.maxTrials + 1)).path).toBe('tuner.population');
  });

  test('a hyperband iteration larger than the limit is rejected, its size given', () => {
    const input = studyWith(
      { lr: 0.1 },
      { steps: 1_000_000, tuner: { kind: 'hyperband', eta: 2, minSteps: 1 } },
    );
    const e = rejection(input);
    expect(e.path).toBe('tuner');
    const size = hyperbandIterationSize(2, 1, 1_000_000);
    expect(size).toBeGreaterThan(L.maxTrials);
    expect(e.received).toBe(`${size} (number)`);
    // an async hyperband without a trials budget runs the same iteration
    const asyncInput = studyWith(
      { lr: 0.1 },
      { steps: 1_000_000, tuner: { kind: 'hyperband', eta: 2, minSteps: 1, async: true } },
    );
    expect(rejection(asyncInput).path).toBe('tuner');
    // with a budget, the budget bounds it
    const budget = studyWith(
      { lr: 0.1 },
      {
        steps: 1_000_000,
        tuner: { kind: 'hyperband', eta: 2, minSteps: 1, async: true, trials: 100 },
      },
    );
    expect(parseStudy(budget).tuner).toMatchObject({ trials: 100 });
  });

  test('hyperbandIterationSize is the sum of the tuner’s bracket sizes', () => {
    for (const [eta, minSteps, maxSteps] of [
      [3, 1, 81],
      [2, 1, 100],
      [4, 3, 1000],
      [2, 7, 7],
      [10, 1, 1_000_000_000],
    ] as const) {
      const sum = hyperbandBrackets(eta, minSteps, maxSteps).reduce((n, b) => n + b.n, 0);
      expect(hyperbandIterationSize(eta, minSteps, maxSteps)).toBe(sum);
    }
  });
});

describe('limits: grid size is counted, never expanded', () => {
  test('a 2 x 2 x 1000 x 1000 grid is rejected with its count at "space"', () => {
    const e = rejection(
      studyWith({
        a: { choice: [1, 2] },
        b: { choice: [1, 2] },
        c: { int: [1, 1000] },
        d: { int: [1, 1000] },
      }),
    );
    expect(e.path).toBe('space');
    expect(e.received).toBe('4000000 (number)');
    expect(e.expected).toMatch(/^a grid of at most 100000 configurations/);
  });

  test('a 10^12 grid of choices (nested choices counted recursively) is rejected', () => {
    const thousand = Array.from({ length: 1000 }, (_, i) => i);
    // a choice between a 500-option choice and 500 plain options: 1000 values
    const nested = { choice: [{ choice: thousand.slice(0, 500) }, ...thousand.slice(500)] };
    const e = rejection(
      studyWith(
        { a: { choice: thousand }, b: nested, c: { choice: thousand } },
        { params: { seed: { choice: thousand } } },
      ),
    );
    expect(e.path).toBe('space');
    expect(e.received).toBe('1000000000000 (number)');
  });

  test('a grid of exactly the limit is accepted', () => {
    const study = parseStudy(studyWith({ a: { int: [1, 100] }, b: { int: [1, 1000] } }));
    expect(study.space.b).toEqual({ int: [1, 1000] });
  });

  test('gridConfigs counts before expanding (a random study over a huge grid)', () => {
    const study = parseStudy(
      studyWith(
        { a: { int: [1, 1_000_000] }, b: { int: [1, 1_000_000] } },
        { tuner: { kind: 'random', trials: 3 } },
      ),
    );
    expect(rejected(() => gridConfigs(study)).received).toBe('1000000000000 (number)');
  });
});

describe('limits: nesting depth, checked before anything recurses', () => {
  test('a 10,000-deep nested choice is a ValidationError naming its depth', () => {
    const e = rejection(studyWith({ lr: nestedChoice(10_000) }));
    expect(e.path).toBe('space.lr');
    expect(e.received).toBe('10000 (number)');
    expect(e.expected).toMatch(/^at most 32 levels of nesting/);
  });

  test('a 10,000-deep schedule, from the text of a file, is a ValidationError', () => {
    const text = JSON.stringify(studyWith({ lr: 0.1 })).replace(
      '"lr":0.1',
      `"lr":${'{"kind":"warmup","steps":1,"from":0,"then":'.repeat(10_000)}0.1${'}'.repeat(10_000)}`,
    );
    expect(rejected(() => parseStudyText(text)).path).toBe('space.lr');
    expect(rejection(studyWith({ lr: nestedWarmup(10_000) })).path).toBe('space.lr');
  });

  test('deep arrays anywhere: in params, in an unknown field, in resources, as the study', () => {
    const deep = '['.repeat(200_000) + ']'.repeat(200_000);
    const text = (field: string) =>
      JSON.stringify(studyWith({ lr: 0.1 })).replace('{', `{${field}:${deep},`);
    expect(rejected(() => parseStudyText(text('"params"'))).path).toBe('params');
    expect(rejected(() => parseStudyText(text('"extra"'))).path).toBe('extra');
    // (a field the study does not already have: in JSON the last of two equal keys wins)
    expect(rejected(() => parseStudyText(text('"resources"'))).path).toBe('resources');
    expect(
      rejected(() =>
        parseStudyText(
          JSON.stringify(studyWith({ lr: 0.1 }, { params: { x: 1 } })).replace(
            '"x":1',
            `"x":${deep}`,
          ),
        ),
      ).path,
    ).toBe('params.x');
    expect(rejected(() => parseStudyText(deep)).path).toBe('(root)');
  });

  test('32 nested choices are accepted, 33 are not', () => {
    expect(parseStudy(studyWith({ lr: nestedChoice(32) })).space.lr).toEqual(nestedChoice(32));
    const e = rejection(studyWith({ lr: nestedChoice(33) }));
    expect(e.received).toBe('33 (number)');
  });

  test('arrays directly in arrays count as levels; an object field’s array does not', () => {
    let v: unknown = 1;
    for (let i = 0; i < 32; i++) v = [v];
    expect(parseStudy(studyWith({ lr: 0.1 }, { params: { x: v } })).params.x).toEqual(v);
    expect(rejection(studyWith({ lr: 0.1 }, { params: { x: [v] } })).path).toBe('params.x');
  });

  test('a cyclic object (a programmatic caller) is a ValidationError', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(rejection(studyWith({ lr: 0.1 }, { params: { x: cyclic } })).path).toBe('params.x');
  });
});

describe('limits: steps, evalEvery, retries, workers, cluster', () => {
  test('steps: an integer from 1 to 1e9', () => {
    const at = (steps: number) => studyWith({ lr: 0.1 }, { steps });
    expect(parseStudy(at(1e9)).steps).toBe(1e9);
    expect(rejection(at(1e9 + 1)).message).toBe(
      'steps: expected an integer from 1 to 1000000000, got 1000000001 (number)',
    );
    expect(rejection(at(1e300)).path).toBe('steps');
  });

  test('evalEvery: at most steps, and at most 100,000 reports per trial', () => {
    const at = (evalEvery: number) => studyWith({ lr: 0.1 }, { steps: 1e9, evalEvery });
    expect(parseStudy(at(10_000)).evalEvery).toBe(10_000);
    expect(rejection(at(1)).message).toBe(
      'evalEvery: expected an integer from 10000 to steps (1000000000) ' +
        '(at most 100000 metric reports per trial), got 1 (number)',
    );
    expect(rejection(at(9_999)).path).toBe('evalEvery');
  });

  test('retries: an integer from 0 to 100 (1e9 was accepted before)', () => {
    const at = (retries: unknown) => studyWith({ lr: 0.1 }, { retries });
    expect(parseStudy(at(100)).retries).toBe(100);
    expect(parseStudy(at(0)).retries).toBe(0);
    expect(rejection(at(1e9)).message).toBe(
      'retries: expected an integer from 0 to 100, got 1000000000 (number)',
    );
    expect(rejection(at(101)).path).toBe('retries');
    expect(rejection(at(-1)).path).toBe('retries');
  });

  test('workers at most 1024, cluster at most 1024 GPUs', () => {
    expect(parseStudy(studyWith({ lr: 0.1 }, { workers: 1024 })).workers).toBe(1024);
    expect(rejection(studyWith({ lr: 0.1 }, { workers: 1025 })).message).toBe(
      'workers: expected an integer from 1 to 1024, got 1025 (number)',
    );
    expect(rejection(studyWith({ lr: 0.1 }, { resources: { gpus: 1, cluster: 1e15 } })).path).toBe(
      'resources.cluster',
    );
  });

  test('checkpointEvery at most 1e9', () => {
    expect(rejection(studyWith({ lr: 0.1 }, { checkpointEvery: 1e12 })).path).toBe(
      'checkpointEvery',
    );
  });
});

describe('limits: sizes', () => {
  test('params over 1 MiB as JSON: rejected at "params" with the size and the limit', () => {
    const big = Array.from({ length: 20 }, (_, i) => [`p${i}`, 'x'.repeat(60_000)]);
    const e = rejection(studyWith({ lr: 0.1 }, { params: Object.fromEntries(big) }));
    expect(e.path).toBe('params');
    const bytes = JSON.stringify(Object.fromEntries(big)).length;
    expect(e.message).toBe(
      `params: expected params of at most 1048576 bytes as JSON (UTF-8), got ${bytes} (number)`,
    );
  });

  test('a space over 1 MiB as JSON is rejected at "space"', () => {
    const options = Array.from({ length: 10_000 }, (_, i) => `option-${i}-${'y'.repeat(100)}`);
    expect(rejection(studyWith({ a: { choice: options } })).path).toBe('space');
  });

  test('a string over 64 KiB anywhere is rejected with its size, not its text', () => {
    const long = 'a'.repeat(65_537);
    const e = rejection(studyWith({ lr: 0.1 }, { params: { note: long } }));
    expect(e.message).toBe(
      'params.note: expected a string of at most 65536 bytes (UTF-8), got 65537 (number)',
    );
    expect(rejection(edit((s) => ((s.metric as Record<string, unknown>).name = long))).path).toBe(
      'metric.name',
    );
    expect(rejection(studyWith({ lr: { choice: [0.1, long] } })).path).toBe('space.lr.choice[1]');
    // a string's size is its UTF-8 size: 30,000 euro signs are 90,000 bytes
    expect(
      rejection(studyWith({ lr: 0.1 }, { params: { note: '€'.repeat(30_000) } })).received,
    ).toBe('90000 (number)');
    expect(
      parseStudy(studyWith({ lr: 0.1 }, { params: { note: 'a'.repeat(65_536) } })).params.note,
    ).toHaveLength(65_536);
  });

  test('an object key over 64 KiB is reported at its object, without the key', () => {
    const key = 'k'.repeat(70_000);
    const e = rejection(studyWith({ lr: 0.1 }, { params: { x: { [key]: 1 } } }));
    expect(e.path).toBe('params.x');
    expect(e.message.length).toBeLessThan(200);
    expect(rejection(studyWith({ [key]: 0.1 })).path).toBe('space');
  });

  test('at most 256 hyperparameters', () => {
    const space = (n: number) =>
      Object.fromEntries(Array.from({ length: n }, (_, i) => [`h${i}`, i]));
    expect(Object.keys(parseStudy(studyWith(space(256))).space)).toHaveLength(256);
    expect(rejection(studyWith(space(257))).message).toBe(
      'space: expected at most 256 hyperparameters, got 257 (number)',
    );
  });

  test('a choice of at most 10,000 options', () => {
    const options = (n: number) => Array.from({ length: n }, (_, i) => i);
    expect(parseStudy(studyWith({ a: { choice: options(10_000) } })).space.a).toEqual({
      choice: options(10_000),
    });
    expect(rejection(studyWith({ a: { choice: options(10_001) } })).message).toBe(
      'space.a.choice: expected a choice of at most 10000 options, got 10001 (number)',
    );
    expect(
      rejection(studyWith({ lr: 0.1 }, { params: { seed: { choice: options(10_001) } } })).path,
    ).toBe('params.seed.choice');
  });
});

/** A copy of the ResNet study with `change` applied. */
function edit(change: (s: Record<string, unknown>) => unknown): Record<string, unknown> {
  const s = resnetStudy();
  change(s);
  return s;
}
