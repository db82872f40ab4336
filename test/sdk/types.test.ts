import { describe, expect, it } from 'vitest';
import {
  choice,
  cosine,
  defineStudy,
  grid,
  hyperband,
  int,
  loguniform,
  multistep,
  random,
  simTrainer,
  step,
  uniform,
  ValidationError,
} from '../../src/sdk/index.js';
import type {
  Choice,
  ConcatPartDefinition,
  LogUniform,
  Produced,
  Uniform,
  HyperparameterDefinition,
  ScheduleDefinition,
  StudyDefinition,
  TrainerDefinition,
  Tunable,
  TunerDefinition,
} from '../../src/sdk/index.js';
import type { ConcatPart, Schedule, ScheduleKind } from '../../src/schedule/index.js';
import type {
  Study,
  TrainerKind,
  TrainerSpec,
  TunerKind,
  TunerSpec,
} from '../../src/study/index.js';

/*
 * What TypeScript accepts and rejects. `tsc -p tsconfig.json --noEmit` (run by `npm test`)
 * checks this file: each `@ts-expect-error` must meet an error, and the type equalities
 * below must hold. At run time the rejected calls also fail validation.
 */

/* eslint-disable @typescript-eslint/no-unnecessary-type-parameters -- exact type equality */
type Equal<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
/* eslint-enable @typescript-eslint/no-unnecessary-type-parameters */
type Expect<T extends true> = T;
type AllKeys<T> = T extends unknown ? keyof T : never;
type KeysOfKind<U, K> = AllKeys<Extract<U, { readonly kind: K }>>;

/** The SDK's input forms have exactly the fields of the validated forms, kind by kind. */
type SameTunerFields = {
  [K in TunerKind]: Equal<KeysOfKind<TunerDefinition, K>, KeysOfKind<TunerSpec, K>>;
};
type SameTrainerFields = {
  [K in TrainerKind]: Equal<KeysOfKind<TrainerDefinition, K>, KeysOfKind<TrainerSpec, K>>;
};
type SameScheduleFields = {
  [K in ScheduleKind]: Equal<KeysOfKind<ScheduleDefinition, K>, KeysOfKind<Schedule, K>>;
};
type AllTrue<T> = Equal<T[keyof T], true>;

export type TypeChecks = [
  Expect<Equal<keyof StudyDefinition, Exclude<keyof Study, 'cpuOnly'>>>,
  Expect<Equal<TunerDefinition['kind'], TunerKind>>,
  Expect<Equal<TrainerDefinition['kind'], TrainerKind>>,
  Expect<Equal<Extract<ScheduleDefinition, { kind: string }>['kind'], ScheduleKind>>,
  Expect<AllTrue<SameTunerFields>>,
  Expect<AllTrue<SameTrainerFields>>,
  Expect<AllTrue<SameScheduleFields>>,
  Expect<Equal<keyof ConcatPartDefinition, keyof ConcatPart>>,
  // Domains stand for the values they produce.
  Expect<Equal<ReturnType<typeof choice<Uniform | 0.5>>, Choice<number>>>,
  Expect<Equal<Produced<Choice<string> | LogUniform | 'sgd'>, string | number>>,
];

const base = {
  name: 'types',
  space: { lr: 0.1 },
  steps: 10,
  tuner: grid(),
  metric: { name: 'loss', mode: 'min' },
  trainer: simTrainer({ stepSeconds: 1 }),
} satisfies StudyDefinition;

describe('types', () => {
  it('take a domain wherever the format does', () => {
    // Every line here compiles: domains as fields, array items, whole arrays and schedules.
    const lr: HyperparameterDefinition = choice([
      multistep({
        init: choice([0.05, uniform(0.01, 0.1)]),
        factor: loguniform(0.1, 0.5),
        milestones: [choice([60, 80]), int(100, 120)],
      }),
      multistep({ init: 0.1, factor: 0.1, milestones: choice([[60], [80, 120]]) }),
      cosine({ max: 0.1, min: 0, period: int(50, 100) }),
      choice([uniform(0.01, 0.1), 0.5]),
      'sgd',
    ]);
    const numbers: Tunable<number> = choice([uniform(0, 1), loguniform(1, 2)]);
    expect(
      defineStudy({ ...base, space: { lr, numbers }, tuner: random({ trials: 2 }) }),
    ).toBeTruthy();
  });

  it('reject a wrong field name and a string for a number', () => {
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error a misspelt study field
        stpes: 10,
      }),
    ).toThrow(ValidationError);
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error a string where a number goes
        steps: '10',
      }),
    ).toThrow(ValidationError);
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error a misspelt schedule field
        space: { lr: multistep({ init: 0.1, factor: 0.1, milestone: [10] }) },
      }),
    ).toThrow(ValidationError);
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error a string where a number goes, in a domain
        space: { lr: step({ init: 0.1, factor: choice(['half']), every: 3 }) },
      }),
    ).toThrow(ValidationError);
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error a continuous domain where an array goes
        space: { lr: multistep({ init: 0.1, factor: 0.1, milestones: uniform(1, 2) }) },
      }),
    ).toThrow(ValidationError);
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error trials belongs to an async hyperband only
        tuner: hyperband({ minSteps: 1, trials: 4 }),
      }),
    ).toThrow(ValidationError);
    expect(() =>
      defineStudy({
        ...base,
        // @ts-expect-error metric modes are "min" and "max"
        metric: { name: 'loss', mode: 'minimize' },
      }),
    ).toThrow(ValidationError);
  });
});
