import { describe, expect, test } from 'vitest';
import { ErrorCode, ValidationError } from '../../src/errors.js';
import { gridConfigs, lookupBy, parseStudy } from '../../src/study/index.js';
import { resnetStudy, studyWith } from './fixtures.js';

/** Parses `input` expecting a ValidationError; returns it. */
function rejection(input: unknown): ValidationError {
  try {
    parseStudy(input);
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error('expected parseStudy to throw a ValidationError');
}

type Json = Record<string, unknown>;

const NAME_RULE =
  'a study name: 1 to 100 characters from A-Z, a-z, 0-9, ".", "_" and "-", not starting with "."';

/** A copy of the ResNet study with `edit` applied (to it, its trainer and its metric). */
function edited(edit: (s: Json, parts: { trainer: Json; metric: Json }) => unknown): Json {
  const s = resnetStudy();
  edit(s, { trainer: s.trainer as Json, metric: s.metric as Json });
  return s;
}

describe('parseStudy: good studies', () => {
  test('takes GPU shares and step costs by hyperparameter, a cluster size and safety checkpoints', () => {
    const study = parseStudy(
      edited((s, { trainer }) => {
        s.resources = {
          gpus: { by: 'batchSize', values: { '128': 0.25, '512': 1 }, default: 0.5 },
          cluster: 3,
        };
        s.checkpointEvery = 50;
        trainer.stepScale = { by: 'batchSize', values: { '512': 0.4 }, default: 1 };
        trainer.sharing = [1, 1.8];
      }),
    );
    expect(lookupBy(study.resources.gpus, { batchSize: 128 })).toBe(0.25);
    expect(lookupBy(study.resources.gpus, { batchSize: 256 })).toBe(0.5);
    expect(study.resources.cluster).toBe(3);
    expect(study.checkpointEvery).toBe(50);
    if (study.trainer.kind !== 'sim') throw new Error('expected a sim trainer');
    expect(study.trainer.sharing).toEqual([1, 1.8]);
    expect(study.trainer.stepScale).toEqual({
      by: 'batchSize',
      values: { '512': 0.4 },
      default: 1,
    });
  });

  test('rejects a GPU share above one GPU and a sharing curve not starting at 1', () => {
    expect(() => parseStudy(edited((s) => void (s.resources = { gpus: 2 })))).toThrow(
      'resources.gpus: expected a GPU share in (0, 1] (one stage runs on one GPU), got 2 (number)',
    );
    expect(() =>
      parseStudy(
        edited((s) => void (s.resources = { gpus: { by: 'bs', values: { '1': 3 }, default: 1 } })),
      ),
    ).toThrow('resources.gpus.values.1: expected a GPU share in (0, 1]');
    expect(() => parseStudy(edited((_s, { trainer }) => void (trainer.sharing = [2, 3])))).toThrow(
      /trainer.sharing: expected an array of throughputs/,
    );
  });

  test('applies defaults', () => {
    const study = parseStudy(resnetStudy());
    expect(study.resources).toEqual({ gpus: 1, cluster: 1 });
    expect(study.workers).toBe(1);
    expect(study.evalEvery).toBe(180);
    expect(study.checkpointEvery).toBeNull();
    expect(study.trainer).toEqual({
      kind: 'sim',
      stepSeconds: 3.4,
      startSeconds: 0,
      saveSeconds: 0,
      loadSeconds: 0,
      stepScale: null,
      sharing: [1, 1.95, 2.15, 2.3],
    });
    expect(study.params).toEqual({
      model: 'resnet20',
      dataset: 'cifar10',
      batchSize: 128,
      seed: 0,
    });
    expect(study.space).toEqual(resnetStudy().space);
  });

  test('params default to {} and the random tuner seed to 0', () => {
    const study = parseStudy(studyWith({ lr: 0.1 }, { tuner: { kind: 'random', trials: 5 } }));
    expect(study.params).toEqual({});
    expect(study.tuner).toEqual({ kind: 'random', trials: 5, seed: 0 });
  });

  test('keeps every given field', () => {
    const study = parseStudy(
      edited((s) => {
        s.evalEvery = 10;
        s.resources = { gpus: 0.5 };
        s.workers = 4;
        s.tuner = { kind: 'random', trials: 20, seed: -7 };
        s.trainer = {
          kind: 'sim',
          stepSeconds: 3.4,
          startSeconds: 5.3,
          saveSeconds: 0.05,
          loadSeconds: 0.03,
        };
      }),
    );
    expect(study.evalEvery).toBe(10);
    // 4 trainers of half a GPU: 2 GPUs.
    expect(study.resources).toEqual({ gpus: 0.5, cluster: 2 });
    expect(study.workers).toBe(4);
    expect(study.tuner).toEqual({ kind: 'random', trials: 20, seed: -7 });
    expect(study.trainer).toMatchObject({ startSeconds: 5.3, loadSeconds: 0.03 });
  });

  test('accepts domains anywhere a value may stand', () => {
    const study = parseStudy(
      studyWith(
        {
          lr: { choice: [0.1, { kind: 'cosine', max: { uniform: [0.1, 1] }, min: 0, period: 90 }] },
          wd: { loguniform: [1e-5, 1e-3] },
          bs: { int: [1, 4] },
          opt: 'sgd',
          warm: {
            kind: 'warmup',
            steps: { int: [0, 5] },
            from: 0,
            then: { kind: 'step', init: 0.1, factor: 0.5, every: { choice: [10, 20] } },
          },
        },
        {
          params: { model: { choice: ['resnet20', 'resnet56'] }, seed: { int: [0, 2] } },
          tuner: { kind: 'random', trials: 3 },
        },
      ),
    );
    expect(study.space.bs).toEqual({ int: [1, 4] });
    expect(study.params.model).toEqual({ choice: ['resnet20', 'resnet56'] });
  });

  test('a param may be named like a domain kind', () => {
    const study = parseStudy(studyWith({ lr: 0.1 }, { params: { int: 5, choice: 'x' } }));
    expect(study.params).toEqual({ int: 5, choice: 'x' });
  });

  test('returns a copy: later changes to the input do not leak in', () => {
    const input = resnetStudy();
    const study = parseStudy(input);
    (input.params as Record<string, unknown>).model = 'changed';
    expect(study.params.model).toBe('resnet20');
  });
});

describe('parseStudy: bad input names the field', () => {
  const cases: [string, unknown, string][] = [
    [
      'a study that is not an object',
      42,
      '(root): expected a study object {name, params, space, steps, evalEvery, tuner, metric, trainer, resources, workers, checkpointEvery, keepBest, retries, taskTimeout}, got 42 (number)',
    ],
    [
      'an unknown top-level field',
      edited((s) => (s.trials = 3)),
      'trials: expected no such field (a study takes name, params, space, steps, evalEvery, tuner, metric, trainer, resources, workers, checkpointEvery, keepBest, retries, taskTimeout), got 3 (number)',
    ],
    [
      'an unknown tuner field, reported before the missing one it misspells',
      edited((s) => (s.tuner = { kind: 'random', trails: 3 })),
      'tuner.trails: expected no such field (a random tuner takes kind, trials, seed, maxConcurrent), got 3 (number)',
    ],
    [
      'an unknown trainer field',
      edited((_, p) => (p.trainer.warmupSeconds = 1)),
      'trainer.warmupSeconds: expected no such field (a sim trainer takes kind, stepSeconds, startSeconds, saveSeconds, loadSeconds, stepScale, sharing), got 1 (number)',
    ],
    [
      'an unknown metric field',
      edited((_, p) => (p.metric.goal = 'max')),
      'metric.goal: expected no such field (a metric takes name, mode), got "max" (string)',
    ],
    [
      'tuner.trials 0',
      edited((s) => (s.tuner = { kind: 'random', trials: 0 })),
      'tuner.trials: expected an integer from 1 to 100000, got 0 (number)',
    ],
    [
      'tuner.trials missing',
      edited((s) => (s.tuner = { kind: 'random' })),
      'tuner.trials: expected an integer from 1 to 100000 (field is required), got undefined',
    ],
    [
      'tuner.seed not an integer',
      edited((s) => (s.tuner = { kind: 'random', trials: 2, seed: 0.5 })),
      'tuner.seed: expected an integer, got 0.5 (number)',
    ],
    [
      'an unknown tuner kind',
      edited((s) => (s.tuner = { kind: 'bayes' })),
      'tuner.kind: expected one of "grid", "random", "sha", "asha", "hyperband", "median", "pbt", got "bayes" (string)',
    ],
    [
      'a tuner that is not an object',
      edited((s) => (s.tuner = 'grid')),
      'tuner: expected a tuner object with a "kind", got "grid" (string)',
    ],
    [
      'name of the wrong type',
      edited((s) => (s.name = 7)),
      `name: expected ${NAME_RULE}, got 7 (number)`,
    ],
    [
      'a missing name',
      edited((s) => delete s.name),
      `name: expected ${NAME_RULE} (field is required), got undefined`,
    ],
    [
      'steps 0',
      edited((s) => (s.steps = 0)),
      'steps: expected an integer from 1 to 1000000000, got 0 (number)',
    ],
    [
      'steps as a string',
      edited((s) => (s.steps = '180')),
      'steps: expected an integer from 1 to 1000000000, got "180" (string)',
    ],
    [
      'evalEvery beyond steps',
      edited((s) => (s.evalEvery = 200)),
      'evalEvery: expected an integer from 1 to steps (180), got 200 (number)',
    ],
    [
      'a bad metric mode',
      edited((_, p) => (p.metric.mode = 'maximize')),
      'metric.mode: expected one of "min", "max", got "maximize" (string)',
    ],
    [
      'an unknown trainer kind',
      edited((s) => (s.trainer = { kind: 'java' })),
      'trainer.kind: expected one of "sim", "node", "python", got "java" (string)',
    ],
    [
      'a python trainer without a module',
      edited((s) => (s.trainer = { kind: 'python' })),
      'trainer.module: expected "package.module:Class" (field is required), got undefined',
    ],
    [
      'stepSeconds 0',
      edited((_, p) => (p.trainer.stepSeconds = 0)),
      'trainer.stepSeconds: expected a number > 0, got 0 (number)',
    ],
    [
      'a negative saveSeconds',
      edited((_, p) => (p.trainer.saveSeconds = -1)),
      'trainer.saveSeconds: expected a number >= 0, got -1 (number)',
    ],
    [
      'a negative GPU share',
      edited((s) => (s.resources = { gpus: -0.5 })),
      'resources.gpus: expected a number >= 0, got -0.5 (number)',
    ],
    [
      'workers 1.5',
      edited((s) => (s.workers = 1.5)),
      'workers: expected an integer from 1 to 1024, got 1.5 (number)',
    ],
    [
      'params as an array',
      edited((s) => (s.params = ['resnet20'])),
      'params: expected an object of static params, got ["resnet20"] (array)',
    ],
  ];
  test.each(cases)('%s', (_label, input, message) => {
    const error = rejection(input);
    expect(error.code).toBe(ErrorCode.validation);
    expect(error.message).toBe(message);
  });

  test('the error carries path, expected and received separately', () => {
    const error = rejection(edited((s) => (s.tuner = { kind: 'random', trials: 0 })));
    expect(error.path).toBe('tuner.trials');
    expect(error.expected).toBe('an integer from 1 to 100000');
    expect(error.received).toBe('0 (number)');
  });
});

describe('parseStudy: search domains and schedules', () => {
  const cases: [string, Record<string, unknown>, string][] = [
    [
      'an empty choice',
      { lr: { choice: [] } },
      'space.lr.choice: expected a non-empty array of options, got [] (array)',
    ],
    [
      'a choice that is not an array',
      { lr: { choice: 0.1 } },
      'space.lr.choice: expected a non-empty array of options, got 0.1 (number)',
    ],
    [
      'a uniform with one bound',
      { lr: { uniform: [0.1] } },
      'space.lr.uniform: expected an array [lo, hi] of two finite numbers, got [0.1] (array)',
    ],
    [
      'a uniform with lo >= hi',
      { lr: { uniform: [0.1, 0.1] } },
      'space.lr.uniform[1]: expected a finite number > 0.1 (hi must be > lo), got 0.1 (number)',
    ],
    [
      'a loguniform from 0',
      { lr: { loguniform: [0, 1] } },
      'space.lr.loguniform[0]: expected a number > 0 (loguniform needs 0 < lo < hi), got 0 (number)',
    ],
    [
      'an int with a fractional bound',
      { bs: { int: [1.5, 4] } },
      'space.bs.int[0]: expected an integer, got 1.5 (number)',
    ],
    [
      'an int with hi < lo',
      { bs: { int: [4, 3] } },
      'space.bs.int[1]: expected an integer >= 4 (hi must be >= lo; both are included), got 3 (number)',
    ],
    [
      'a bad domain nested inside a choice',
      { lr: { choice: [0.1, { choice: [] }] } },
      'space.lr.choice[1].choice: expected a non-empty array of options, got [] (array)',
    ],
    [
      'a bad domain inside a schedule array',
      { lr: { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [{ int: [50] }] } },
      'space.lr.milestones[0].int: expected an array [lo, hi] of two integers, got [50] (array)',
    ],
    [
      'a non-increasing milestone',
      { lr: { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [100, 80] } },
      'space.lr.milestones[1]: expected an integer > 100 (steps must be strictly increasing), got 80 (number)',
    ],
    [
      'a milestone that cannot follow the first option of the one before',
      {
        lr: {
          kind: 'multistep',
          init: { choice: [0.1, 0.2] },
          factor: 0.1,
          milestones: [{ choice: [90, 100] }, 80],
        },
      },
      'space.lr.milestones[1]: expected an integer > 90 (steps must be strictly increasing), with every search domain at its first value, got 80 (number)',
    ],
    [
      'an unknown schedule field',
      { lr: { kind: 'cosine', max: 0.1, min: 0, period: 90, warmup: 5 } },
      'space.lr.warmup: expected no such field (a cosine schedule takes max, min, period), got 5 (number)',
    ],
    [
      'a bad schedule among the options of a choice',
      { lr: { choice: [0.1, { kind: 'cosine', max: 0.1, min: 0, period: 0 }] } },
      'space.lr.choice[1].period: expected an integer >= 1, got 0 (number)',
    ],
    [
      'a boolean hyperparameter',
      { nesterov: true },
      'space.nesterov: expected a number, a string, a schedule object with a "kind" or a search domain (an object with one key: choice, uniform, loguniform, int), got true (boolean)',
    ],
    [
      'an object that is neither a schedule nor a domain (two keys)',
      { lr: { choice: [0.1], uniform: [0, 1] } },
      'space.lr: expected a search domain (an object with exactly one key: choice, uniform, loguniform, int) or a schedule object with a "kind", got {"choice":[0.1],"uniform":[0,1]} (object)',
    ],
    [
      'uniform under the grid tuner',
      { lr: 0.1, wd: { uniform: [1e-5, 1e-3] } },
      'space.wd: expected a choice or int domain (a grid cannot enumerate a continuous range: list the values with {"choice": [...]} or use the random tuner), got {"uniform":[0.00001,0.001]} (object)',
    ],
    [
      'a grid of more than 100,000 configurations (the trial limit)',
      { a: { int: [1, 5000] }, b: { int: [1, 5000] } },
      'space: expected a grid of at most 100000 configurations (the trial limit; params and space multiply out to more: use fewer choices or the random tuner), got 25000000 (number)',
    ],
  ];
  test.each(cases)('%s', (_label, space, message) => {
    expect(rejection(studyWith(space)).message).toBe(message);
  });

  test('loguniform inside a schedule under grid is rejected with its path', () => {
    const error = rejection(
      studyWith({ lr: { kind: 'exponential', init: { loguniform: [0.01, 1] }, gamma: 0.9 } }),
    );
    expect(error.path).toBe('space.lr.init');
  });

  test('uniform is fine under the random tuner', () => {
    const study = parseStudy(
      studyWith({ wd: { uniform: [1e-5, 1e-3] } }, { tuner: { kind: 'random', trials: 4 } }),
    );
    expect(study.space.wd).toEqual({ uniform: [1e-5, 1e-3] });
  });

  test('domains in params are validated too', () => {
    expect(rejection(studyWith({ lr: 0.1 }, { params: { seed: { int: [0] } } })).path).toBe(
      'params.seed.int',
    );
  });

  test('non-JSON values are rejected', () => {
    expect(rejection(studyWith({ lr: Number.NaN })).message).toBe(
      'space.lr: expected a finite number, got NaN (number)',
    );
    expect(rejection(studyWith({ lr: 0.1 }, { params: { when: new Date(0) } })).path).toBe(
      'params.when',
    );
  });
});

test('a "__proto__" key is kept as data, never as a prototype', () => {
  const study = parseStudy(
    JSON.parse(
      '{"name":"x","params":{"__proto__":{"choice":[1,2]},"a":1},"space":{"__proto__":0.1},' +
        '"steps":5,"tuner":{"kind":"grid"},"metric":{"name":"m","mode":"min"},' +
        '"trainer":{"kind":"sim","stepSeconds":1}}',
    ),
  );
  expect(Object.keys(study.params)).toEqual(['__proto__', 'a']);
  expect(Object.keys(study.space)).toEqual(['__proto__']);
  expect(Object.getPrototypeOf(study.params)).toBe(Object.prototype);
  const configs = gridConfigs(study);
  expect(
    configs.map((c) => Object.getOwnPropertyDescriptor(c.params, '__proto__')?.value as unknown),
  ).toEqual([1, 2]);
  expect(Object.keys(configs[0]?.schedules ?? {})).toEqual(['__proto__']);
});
