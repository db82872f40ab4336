import { ValidationError } from '../../src/errors.js';
import { parseStudy } from '../../src/study/index.js';

/** Study fixtures shared by the study tests (plain JSON, as a study file holds it). */

/** A ResNet-20 CIFAR-10 multistep learning-rate grid: 3 x 2 x 2 = 12 configurations. */
export function resnetStudy(): Record<string, unknown> {
  return {
    name: 'resnet20-cifar10-multistep',
    params: { model: 'resnet20', dataset: 'cifar10', batchSize: 128, seed: 0 },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.05, 0.1, 0.2] },
        factor: 0.1,
        milestones: [{ choice: [80, 100] }, { choice: [120, 150] }],
      },
      momentum: 0.9,
    },
    steps: 180,
    tuner: { kind: 'grid' },
    metric: { name: 'val_accuracy', mode: 'max' },
    trainer: { kind: 'sim', stepSeconds: 3.4 },
  };
}

/** A minimal valid study around the given space. */
export function studyWith(
  space: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    name: 'test',
    space,
    steps: 100,
    tuner: { kind: 'grid' },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'sim', stepSeconds: 1 },
    ...extra,
  };
}

/** The ValidationError that `fn` throws (any other outcome fails the test). */
export function rejected(fn: () => unknown): ValidationError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw new Error(`expected a ValidationError, got ${String(e)}`, { cause: e });
  }
  throw new Error('expected a ValidationError, got a result');
}

/** The ValidationError `parseStudy` throws for `input`. */
export const rejection = (input: unknown): ValidationError => rejected(() => parseStudy(input));
