import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  choice,
  concat,
  cosine,
  defineStudy,
  grid,
  multistep,
  nodeTrainer,
  piecewise,
  pythonTrainer,
  simTrainer,
  step,
  toStudy,
  warmup,
} from '../../src/sdk/index.js';
import type { StudyDefinition } from '../../src/sdk/index.js';
import { parseStudy } from '../../src/study/index.js';

/** Every study file of examples/, written out by hand with the builders. */
const EXAMPLES: Record<string, () => StudyDefinition> = {
  'batchsize-switch-step-decay.json': () =>
    defineStudy({
      name: 'wrn16-4-cifar10-batch-size-switch',
      params: { model: 'wrn-16-4', dataset: 'cifar10', seed: 0 },
      space: {
        batchSize: piecewise({
          values: [128, choice([256, 512, 1024])],
          boundaries: [choice([30, 60, 90])],
        }),
        lr: step({ init: 0.1, factor: choice([0.1, 0.2]), every: choice([40, 60]) }),
        momentum: 0.9,
        weightDecay: 0.0005,
      },
      steps: 120,
      evalEvery: 10,
      tuner: grid(),
      metric: { name: 'val_accuracy', mode: 'max' },
      trainer: simTrainer({
        stepSeconds: 7.5,
        startSeconds: 5.3,
        saveSeconds: 0.1,
        loadSeconds: 0.06,
      }),
      resources: { gpus: 1 },
      workers: 4,
    }),

  'quadratic-node.json': () =>
    defineStudy({
      name: 'quadratic-node-lr-grid',
      params: { problem: 'least-squares-8d', seed: 1 },
      space: {
        lr: multistep({ init: choice([0.02, 0.05]), factor: 0.1, milestones: [choice([10, 15])] }),
        momentum: 0.9,
        batchSize: 32,
      },
      steps: 20,
      evalEvery: 5,
      tuner: grid(),
      metric: { name: 'loss', mode: 'min' },
      trainer: nodeTrainer({ module: '../dist/trainer/quadratic.js', export: 'QuadraticTrainer' }),
      resources: { gpus: 1 },
      workers: 2,
    }),

  'quadratic-python.json': () =>
    defineStudy({
      name: 'quadratic-python-lr-grid',
      params: { problem: 'least-squares-8d', seed: 1 },
      space: {
        lr: multistep({ init: choice([0.02, 0.05]), factor: 0.1, milestones: [choice([10, 15])] }),
        momentum: 0.9,
      },
      steps: 20,
      evalEvery: 5,
      tuner: grid(),
      metric: { name: 'loss', mode: 'min' },
      trainer: pythonTrainer({
        module: 'quadratic:QuadraticTrainer',
        path: ['../python/examples'],
      }),
      resources: { gpus: 1 },
      workers: 2,
    }),

  'resnet20-multistep-grid.json': () =>
    defineStudy({
      name: 'resnet20-cifar10-multistep-grid',
      params: { model: 'resnet20', dataset: 'cifar10', seed: 0 },
      space: {
        lr: multistep({
          init: choice([0.05, 0.1, 0.2]),
          factor: 0.1,
          milestones: [choice([60, 80, 100]), choice([120, 140, 160])],
        }),
        batchSize: 128,
        momentum: 0.9,
        weightDecay: 0.0001,
      },
      steps: 180,
      evalEvery: 20,
      tuner: grid(),
      metric: { name: 'val_accuracy', mode: 'max' },
      trainer: simTrainer({
        stepSeconds: 3.4,
        startSeconds: 5.3,
        saveSeconds: 0.05,
        loadSeconds: 0.03,
      }),
      resources: { gpus: 1 },
      workers: 4,
    }),

  'warmup-cosine-grid.json': () =>
    defineStudy({
      name: 'resnet20-cifar10-warmup-stable-cosine-grid',
      params: { model: 'resnet20', dataset: 'cifar10', seed: 0 },
      space: {
        lr: concat({
          parts: [
            {
              // Written schedule first: the builder puts `until` first, as the file does.
              schedule: warmup({ steps: choice([5, 10]), from: 0.01, then: 0.1 }),
              until: choice([100, 125, 150]),
            },
            { schedule: cosine({ max: 0.1, min: 0.0005, period: choice([25, 50]) }) },
          ],
        }),
        batchSize: 128,
        momentum: 0.9,
        weightDecay: choice([0.0001, 0.0005]),
      },
      steps: 200,
      evalEvery: 25,
      tuner: grid(),
      metric: { name: 'val_accuracy', mode: 'max' },
      trainer: simTrainer({
        stepSeconds: 3.4,
        startSeconds: 5.3,
        saveSeconds: 0.05,
        loadSeconds: 0.03,
      }),
      resources: { gpus: 1 },
      workers: 4,
    }),
};

const dir = new URL('../../examples/', import.meta.url);
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort();

describe('the example studies written with the builders', () => {
  it('cover every study file in examples/', () => {
    expect(files.length).toBeGreaterThan(0);
    expect(Object.keys(EXAMPLES).sort()).toEqual(files);
  });

  describe.each(files)('%s', (file) => {
    const json: unknown = JSON.parse(readFileSync(new URL(file, dir), 'utf8'));
    const build = EXAMPLES[file];
    if (build === undefined) throw new Error(`examples/${file} has no SDK version in this test`);

    it('defineStudy gives the file, field order included', () => {
      const def = build();
      expect(def).toEqual(json);
      // Key order decides the grid order: the text must be the same too.
      expect(JSON.stringify(def)).toBe(JSON.stringify(json));
    });

    it('toStudy gives what parseStudy makes of the file', () => {
      expect(toStudy(build())).toEqual(parseStudy(json));
    });
  });
});
