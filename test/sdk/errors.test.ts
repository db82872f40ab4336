import { describe, expect, it } from 'vitest';
import {
  choice,
  concat,
  constant,
  cosine,
  defineStudy,
  grid,
  int,
  loguniform,
  multistep,
  pythonTrainer,
  random,
  sha,
  simTrainer,
  toStudy,
  trainerFrom,
  uniform,
  ValidationError,
  warmup,
} from '../../src/sdk/index.js';
import type { StudyDefinition } from '../../src/sdk/index.js';

/** A valid study around `space`, with `extra` fields on top. */
function studyWith(
  space: StudyDefinition['space'],
  extra: Partial<StudyDefinition> = {},
): StudyDefinition {
  return {
    name: 'errors',
    space,
    steps: 100,
    tuner: random({ trials: 4 }),
    metric: { name: 'loss', mode: 'min' },
    trainer: simTrainer({ stepSeconds: 1 }),
    ...extra,
  };
}

/** What `fn` threw: a `ValidationError` (checked). */
function thrown(fn: () => unknown): ValidationError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ValidationError);
  const err = caught as ValidationError;
  expect(err.code).toBe('STAGETREE_VALIDATION');
  return err;
}

/** defineStudy and toStudy both reject `study` at `path`, with `expected` in the message. */
function rejects(study: StudyDefinition, path: string, expected: RegExp): ValidationError {
  const err = thrown(() => defineStudy(study));
  expect(err.path).toBe(path);
  expect(err.expected).toMatch(expected);
  expect(err.message.startsWith(`${path}: expected `)).toBe(true);
  expect(thrown(() => toStudy(study)).message).toBe(err.message);
  return err;
}

describe('a bad value names its field path', () => {
  it('milestones that do not increase', () => {
    const err = rejects(
      studyWith({ lr: multistep({ init: 0.1, factor: 0.1, milestones: [100, 50] }) }),
      'space.lr.milestones[1]',
      /strictly increasing/,
    );
    expect(err.message).toBe(
      'space.lr.milestones[1]: expected an integer > 100 (steps must be strictly increasing), got 50 (number)',
    );
  });

  it('milestones that do not increase with every domain at its first value', () =>
    rejects(
      studyWith({
        lr: multistep({
          init: choice([0.05, 0.1]),
          factor: 0.1,
          milestones: [choice([80, 100]), choice([60, 120])],
        }),
      }),
      'space.lr.milestones[1]',
      /with every search domain at its first value/,
    ));

  it('domain bounds the wrong way round', () => {
    rejects(studyWith({ wd: uniform(0.5, 0.1) }), 'space.wd.uniform[1]', /> 0.5/);
    rejects(studyWith({ wd: loguniform(0, 1) }), 'space.wd.loguniform[0]', /a number > 0/);
    rejects(
      studyWith({ lr: cosine({ max: 0.1, min: 0, period: int(50, 10) }) }),
      'space.lr.period.int[1]',
      /an integer >= 50/,
    );
    rejects(studyWith({ opt: choice([]) }), 'space.opt.choice', /a non-empty array/);
  });

  it('a continuous domain in a grid', () =>
    rejects(
      studyWith({ lr: cosine({ max: uniform(0.1, 1), min: 0, period: 10 }) }, { tuner: grid() }),
      'space.lr.max',
      /a choice or int domain/,
    ));

  it('schedules that cannot be valid', () => {
    rejects(
      studyWith({ lr: warmup({ steps: 5, from: 0, then: constant({ value: 'sgd' }) }) }),
      'space.lr.then',
      /a numeric schedule/,
    );
    rejects(
      studyWith({
        lr: concat({ parts: [{ schedule: 0.1 }, { until: 10, schedule: 0.01 }] }),
      }),
      'space.lr.parts[0].until',
      /only the last part may omit until/,
    );
  });

  it('tuner fields out of range', () => {
    expect(thrown(() => defineStudy(studyWith({}, { tuner: random({ trials: 0 }) }))).message).toBe(
      'tuner.trials: expected an integer from 1 to 100000, got 0 (number)',
    );
    rejects(
      studyWith({}, { tuner: sha({ trials: 9, minSteps: 10, maxSteps: 120 }) }),
      'tuner.maxSteps',
      /to steps \(100\)/,
    );
  });

  it('trainers', () => {
    rejects(
      studyWith({}, { trainer: pythonTrainer({ module: 'quadratic' }) }),
      'trainer.module',
      /"package.module:Class"/,
    );
    rejects(
      studyWith({}, { trainer: simTrainer({ stepSeconds: 0 }) }),
      'trainer.stepSeconds',
      /a number > 0/,
    );
    const err = thrown(() => trainerFrom('https://example.com/trainer.js', 'T'));
    expect(err.path).toBe('trainer.module');
    expect(err.message).toMatch(/a file: URL/);
  });

  it('study fields', () => {
    rejects(studyWith({}, { steps: 0 }), 'steps', /an integer from 1/);
    rejects(studyWith({}, { name: '../escape' }), 'name', /a study name/);
    rejects(studyWith({}, { evalEvery: 101 }), 'evalEvery', /to steps \(100\)/);
  });

  it('a field a JavaScript caller misspells reaches parseStudy and is named', () => {
    // Untyped callers: the builders keep unknown fields so that validation names them.
    const untypedMultistep = multistep as (options: unknown) => ReturnType<typeof multistep>;
    rejects(
      studyWith({ lr: untypedMultistep({ init: 0.1, factor: 0.1, milestone: [10] }) }),
      'space.lr.milestone',
      /no such field \(a multistep schedule takes init, factor, milestones\)/,
    );
    rejects(
      studyWith({ lr: untypedMultistep({ init: 0.1, factor: 0.1, milestones: [10], gamma: 1 }) }),
      'space.lr.gamma',
      /no such field/,
    );
    const untypedGrid = grid as (options: unknown) => ReturnType<typeof grid>;
    rejects(
      studyWith({}, { tuner: untypedGrid({ maxConcurent: 2 }) }),
      'tuner.maxConcurent',
      /no such field \(a grid tuner takes kind, maxConcurrent\)/,
    );
  });
});

describe('defineStudy returns a plain copy', () => {
  it('later changes to the input do not reach it', () => {
    const milestones = [10, 20];
    const input = studyWith({ lr: multistep({ init: 0.1, factor: 0.1, milestones }) });
    const def = defineStudy(input);
    milestones.push(5);
    expect(def.space.lr).toEqual({
      kind: 'multistep',
      init: 0.1,
      factor: 0.1,
      milestones: [10, 20],
    });
    expect(defineStudy(def)).toEqual(def);
  });

  it('leaves out fields that are undefined, as JSON does', () => {
    const input = { ...studyWith({ lr: 0.1 }), evalEvery: undefined, workers: undefined };
    const def = defineStudy(input as unknown as StudyDefinition);
    expect(Object.keys(def)).toEqual(['name', 'space', 'steps', 'tuner', 'metric', 'trainer']);
  });

  it('keeps a "__proto__" key as data', () => {
    const params = JSON.parse('{"__proto__": {"choice": [1, 2]}}') as Record<string, never>;
    const def = defineStudy(studyWith({ lr: 0.1 }, { params }));
    expect(Object.keys(def.params ?? {})).toEqual(['__proto__']);
    expect(JSON.stringify(def.params)).toBe('{"__proto__":{"choice":[1,2]}}');
    expect(toStudy(def)).toEqual(toStudy(JSON.parse(JSON.stringify(def)) as StudyDefinition));
  });
});
