import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { gridConfigs, parseStudy, randomConfigs } from '../../src/study/index.js';
import type { Study, TrialConfig } from '../../src/study/index.js';
import { GridTuner, RandomTuner, createTuner, reportSteps } from '../../src/tuner/index.js';
import { runTuner, scheduleHashes, tunerStudy } from '../support/tuner-harness.js';
import type { FakeContext } from '../support/tuner-harness.js';

function gridStudy(tuner: Record<string, unknown> = {}): Study {
  return parseStudy({
    name: 'grid',
    params: { seed: { choice: [0, 1] } },
    space: { lr: { choice: [0.1, 0.01, 0.001] }, wd: { choice: [0, 1e-4] } },
    steps: 20,
    evalEvery: 5,
    tuner: { kind: 'grid', ...tuner },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'sim', stepSeconds: 1 },
  });
}

/** What a trial of the run trained: params and schedule hashes, in proposal order. */
function proposed(ctx: FakeContext): unknown[] {
  return ctx.all().map((t) => [t.params, scheduleHashes(t.schedules)]);
}

function expected(configs: readonly TrialConfig[]): unknown[] {
  return configs.map((c) => [c.params, scheduleHashes(c.canonical)]);
}

describe('grid search', () => {
  test('proposes every gridConfigs configuration at once, each for all steps', () => {
    const study = gridStudy();
    const { ctx, ended } = runTuner(study);
    expect(ended).toBe('finish');
    const configs = gridConfigs(study);
    expect(configs).toHaveLength(12);
    // all 12 proposals come before the first metric
    expect(ctx.log.slice(0, 12).every((a) => a.op === 'propose')).toBe(true);
    expect(proposed(ctx)).toEqual(expected(configs));
    for (const t of ctx.all()) {
      expect([...t.values.keys()]).toEqual(reportSteps(study));
      expect(t.status).toBe('active');
    }
    expect(ctx.actions('stop')).toEqual([]);
    expect(ctx.log[ctx.log.length - 1]).toEqual({ op: 'finish' });
  });

  test.prop([fc.integer({ min: 1, max: 14 }), fc.integer()])(
    'with maxConcurrent: the same configurations, never more running at once',
    (maxConcurrent, seed) => {
      const study = gridStudy({ maxConcurrent });
      const { ctx, ended } = runTuner(study, { order: { seed } });
      expect(ended).toBe('finish');
      expect(proposed(ctx)).toEqual(expected(gridConfigs(study)));
      expect(ctx.peakRunning).toBe(Math.min(maxConcurrent, 12));
      for (const t of ctx.all()) expect(t.reached).toBe(study.steps);
    },
  );

  test('with maxConcurrent 2 a new trial is proposed only when one finishes', () => {
    const { ctx } = runTuner(gridStudy({ maxConcurrent: 2 }));
    const ops = ctx.log.map((a) =>
      a.op === 'propose' ? `P${a.trial}` : a.op === 'metric' && a.paused ? `E${a.trial}` : '',
    );
    expect(ops.filter((o) => o !== '').slice(0, 8)).toEqual([
      'Pt1',
      'Pt2',
      'Et1',
      'Pt3',
      'Et2',
      'Pt4',
      'Et3',
      'Pt5',
    ]);
  });

  test('createTuner picks the grid tuner', () => {
    expect(createTuner(gridStudy())).toBeInstanceOf(GridTuner);
  });
});

describe('random search', () => {
  test.prop([
    fc.integer({ min: 1, max: 15 }),
    fc.integer({ min: -100, max: 100 }),
    fc.option(fc.integer({ min: 1, max: 6 }), { nil: undefined }),
    fc.integer(),
  ])(
    'proposes exactly randomConfigs(study, trials, seed), respecting maxConcurrent',
    (trials, seed, maxConcurrent, orderSeed) => {
      const study = tunerStudy(
        { kind: 'random', trials, seed, ...(maxConcurrent ? { maxConcurrent } : {}) },
        { steps: 10, evalEvery: 3 },
      );
      const { ctx, ended } = runTuner(study, { order: { seed: orderSeed } });
      expect(ended).toBe('finish');
      expect(proposed(ctx)).toEqual(expected(randomConfigs(study, trials, seed)));
      expect(ctx.peakRunning).toBe(Math.min(maxConcurrent ?? trials, trials));
      for (const t of ctx.all()) expect([...t.values.keys()]).toEqual([3, 6, 9, 10]);
    },
  );

  test('createTuner picks the random tuner', () => {
    expect(createTuner(tunerStudy({ kind: 'random', trials: 2 }))).toBeInstanceOf(RandomTuner);
  });
});
