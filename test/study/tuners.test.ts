import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import { createRng, parseStudy, randomConfigs, sampleConfig } from '../../src/study/index.js';
import { studyWith } from './fixtures.js';

/** A study (steps 100, evalEvery 10, workers 4) with the given tuner. */
function withTuner(tuner: unknown): Record<string, unknown> {
  return studyWith(
    { lr: { choice: [0.1, 0.01] }, momentum: 0.9 },
    { tuner, evalEvery: 10, workers: 4 },
  );
}

/** The ValidationError that parsing `tuner` gives. */
function rejection(tuner: unknown): ValidationError {
  try {
    parseStudy(withTuner(tuner));
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error('expected parseStudy to throw a ValidationError');
}

describe('tuner schemas: defaults', () => {
  test('grid and random: maxConcurrent is optional and absent by default', () => {
    expect(parseStudy(withTuner({ kind: 'grid' })).tuner).toStrictEqual({ kind: 'grid' });
    expect(parseStudy(withTuner({ kind: 'grid', maxConcurrent: 2 })).tuner).toStrictEqual({
      kind: 'grid',
      maxConcurrent: 2,
    });
    expect(parseStudy(withTuner({ kind: 'random', trials: 5 })).tuner).toStrictEqual({
      kind: 'random',
      trials: 5,
      seed: 0,
    });
    expect(
      parseStudy(withTuner({ kind: 'random', trials: 5, seed: 3, maxConcurrent: 1 })).tuner,
    ).toStrictEqual({ kind: 'random', trials: 5, seed: 3, maxConcurrent: 1 });
  });

  test('sha: eta 3, maxSteps = steps, seed 0', () => {
    expect(parseStudy(withTuner({ kind: 'sha', trials: 9, minSteps: 1 })).tuner).toStrictEqual({
      kind: 'sha',
      trials: 9,
      eta: 3,
      minSteps: 1,
      maxSteps: 100,
      seed: 0,
    });
  });

  test('asha: maxConcurrent = workers', () => {
    expect(
      parseStudy(withTuner({ kind: 'asha', trials: 20, minSteps: 4, maxSteps: 64, eta: 4 })).tuner,
    ).toStrictEqual({
      kind: 'asha',
      trials: 20,
      eta: 4,
      minSteps: 4,
      maxSteps: 64,
      seed: 0,
      maxConcurrent: 4,
    });
  });

  test('hyperband: synchronous by default, no trials budget', () => {
    expect(parseStudy(withTuner({ kind: 'hyperband', minSteps: 1 })).tuner).toStrictEqual({
      kind: 'hyperband',
      eta: 3,
      minSteps: 1,
      maxSteps: 100,
      seed: 0,
      async: false,
      maxConcurrent: 4,
    });
    expect(
      parseStudy(withTuner({ kind: 'hyperband', minSteps: 1, async: true, trials: 50 })).tuner,
    ).toMatchObject({ async: true, trials: 50, maxConcurrent: 4 });
  });

  test('median: graceSteps = evalEvery, minTrials 3, maxConcurrent = workers', () => {
    expect(parseStudy(withTuner({ kind: 'median', trials: 12 })).tuner).toStrictEqual({
      kind: 'median',
      trials: 12,
      seed: 0,
      graceSteps: 10,
      minTrials: 3,
      maxConcurrent: 4,
    });
  });

  test('pbt: quantile 0.25, perturb [0.8, 1.2], resample 0.25', () => {
    expect(
      parseStudy(withTuner({ kind: 'pbt', population: 8, interval: 10, seed: 2 })).tuner,
    ).toStrictEqual({
      kind: 'pbt',
      population: 8,
      interval: 10,
      quantile: 0.25,
      perturb: [0.8, 1.2],
      resample: 0.25,
      seed: 2,
    });
  });
});

describe('tuner schemas: errors name the field', () => {
  const cases: [string, unknown, string][] = [
    [
      'grid maxConcurrent 0',
      { kind: 'grid', maxConcurrent: 0 },
      'tuner.maxConcurrent: expected an integer from 1 to 100000, got 0 (number)',
    ],
    [
      'an unknown grid field',
      { kind: 'grid', trials: 3 },
      'tuner.trials: expected no such field (a grid tuner takes kind, maxConcurrent), got 3 (number)',
    ],
    [
      'sha without minSteps',
      { kind: 'sha', trials: 9 },
      'tuner.minSteps: expected an integer >= 1 (field is required), got undefined',
    ],
    [
      'sha eta 1',
      { kind: 'sha', trials: 9, minSteps: 1, eta: 1 },
      'tuner.eta: expected an integer >= 2, got 1 (number)',
    ],
    [
      'sha maxSteps > steps',
      { kind: 'sha', trials: 9, minSteps: 1, maxSteps: 101 },
      'tuner.maxSteps: expected an integer from minSteps (1) to steps (100), got 101 (number)',
    ],
    [
      'sha minSteps > maxSteps',
      { kind: 'sha', trials: 9, minSteps: 50, maxSteps: 40 },
      'tuner.minSteps: expected an integer from 1 to maxSteps (40), got 50 (number)',
    ],
    [
      'asha minSteps > steps (maxSteps defaulted)',
      { kind: 'asha', trials: 9, minSteps: 101 },
      'tuner.minSteps: expected an integer from 1 to steps (100), got 101 (number)',
    ],
    [
      'asha trials 0',
      { kind: 'asha', trials: 0, minSteps: 1 },
      'tuner.trials: expected an integer from 1 to 100000, got 0 (number)',
    ],
    [
      'asha maxConcurrent 0',
      { kind: 'asha', trials: 3, minSteps: 1, maxConcurrent: 0 },
      'tuner.maxConcurrent: expected an integer from 1 to 100000, got 0 (number)',
    ],
    [
      'an unknown asha field',
      { kind: 'asha', trials: 3, minSteps: 1, grace: 2 },
      'tuner.grace: expected no such field (an asha tuner takes kind, trials, eta, minSteps, maxSteps, seed, maxConcurrent), got 2 (number)',
    ],
    [
      'hyperband async not a boolean',
      { kind: 'hyperband', minSteps: 1, async: 'yes' },
      'tuner.async: expected a boolean, got "yes" (string)',
    ],
    [
      'hyperband maxSteps > steps',
      { kind: 'hyperband', minSteps: 1, maxSteps: 243 },
      'tuner.maxSteps: expected an integer from minSteps (1) to steps (100), got 243 (number)',
    ],
    [
      'synchronous hyperband with a trials budget',
      { kind: 'hyperband', minSteps: 1, trials: 10 },
      'tuner.trials: expected no trials budget, except with "async": true (a synchronous hyperband runs one iteration of its brackets), got 10 (number)',
    ],
    [
      'synchronous hyperband with maxConcurrent',
      { kind: 'hyperband', minSteps: 1, maxConcurrent: 2 },
      'tuner.maxConcurrent: expected no maxConcurrent, except with "async": true (a synchronous hyperband runs one iteration of its brackets), got 2 (number)',
    ],
    [
      'median graceSteps > steps',
      { kind: 'median', trials: 5, graceSteps: 101 },
      'tuner.graceSteps: expected an integer from 0 to steps (100), got 101 (number)',
    ],
    [
      'median graceSteps negative',
      { kind: 'median', trials: 5, graceSteps: -1 },
      'tuner.graceSteps: expected an integer >= 0, got -1 (number)',
    ],
    [
      'median minTrials 0',
      { kind: 'median', trials: 5, minTrials: 0 },
      'tuner.minTrials: expected an integer from 1 to 100000, got 0 (number)',
    ],
    [
      'pbt population 1',
      { kind: 'pbt', population: 1, interval: 10 },
      'tuner.population: expected an integer from 2 to 100000, got 1 (number)',
    ],
    [
      'pbt interval > steps',
      { kind: 'pbt', population: 4, interval: 200 },
      'tuner.interval: expected an integer from 1 to steps (100), got 200 (number)',
    ],
    [
      'pbt quantile 0',
      { kind: 'pbt', population: 4, interval: 10, quantile: 0 },
      'tuner.quantile: expected a number in (0, 0.5], got 0 (number)',
    ],
    [
      'pbt quantile above 0.5',
      { kind: 'pbt', population: 4, interval: 10, quantile: 0.6 },
      'tuner.quantile: expected a number in (0, 0.5], got 0.6 (number)',
    ],
    [
      'pbt perturb empty',
      { kind: 'pbt', population: 4, interval: 10, perturb: [] },
      'tuner.perturb: expected a non-empty array of numbers > 0, got [] (array)',
    ],
    [
      'pbt perturb factor not positive',
      { kind: 'pbt', population: 4, interval: 10, perturb: [0.8, 0] },
      'tuner.perturb[1]: expected a number > 0, got 0 (number)',
    ],
    [
      'pbt resample above 1',
      { kind: 'pbt', population: 4, interval: 10, resample: 1.5 },
      'tuner.resample: expected a number from 0 to 1, got 1.5 (number)',
    ],
  ];
  test.each(cases)('%s', (_name, tuner, message) => {
    const error = rejection(tuner);
    expect(error.message).toBe(message);
    expect(error.path).toBe(message.slice(0, message.indexOf(':')));
  });
});

describe('sampleConfig', () => {
  const study = parseStudy(
    studyWith(
      {
        lr: { kind: 'step', init: { loguniform: [1e-4, 1] }, factor: 0.5, every: { int: [5, 20] } },
        opt: { choice: ['sgd', 'adam'] },
        momentum: 0.9,
      },
      { params: { seed: { int: [0, 3] } }, tuner: { kind: 'random', trials: 10, seed: 5 } },
    ),
  );

  test.prop([fc.integer({ min: -1000, max: 1000 }), fc.integer({ min: 0, max: 12 })])(
    'drawing n configurations from createRng(seed) gives randomConfigs(study, n, seed)',
    (seed, n) => {
      const rng = createRng(seed);
      const drawn = Array.from({ length: n }, (_, i) => sampleConfig(study, rng, i));
      const listed = randomConfigs(study, n, seed);
      expect(drawn.map((c) => [c.index, c.params, c.schedules])).toEqual(
        listed.map((c) => [c.index, c.params, c.schedules]),
      );
      expect(drawn.map((c) => c.canonical.lr?.hash)).toEqual(
        listed.map((c) => c.canonical.lr?.hash),
      );
    },
  );

  test('equal schedules of one study share one Canonical across calls', () => {
    const rng = createRng(1);
    const a = sampleConfig(study, rng, 0);
    const b = sampleConfig(study, rng, 1);
    expect(a.canonical.momentum).toBe(b.canonical.momentum);
  });
});
