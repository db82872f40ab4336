import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { randomConfigs } from '../../src/study/index.js';
import type { MetricMode } from '../../src/study/index.js';
import { MedianStoppingTuner, createTuner, median } from '../../src/tuner/index.js';
import { runTuner, scheduleHashes, scoreMetric, tunerStudy } from '../support/tuner-harness.js';
import type { FakeContext } from '../support/tuner-harness.js';

/**
 * Replays the log against the median stopping rule as Vizier states it, written out
 * plainly: at a report at step s (grace <= s < steps), stop the trial if its best value so
 * far is strictly worse than the median of the running averages at s of the trials that
 * reported at s before it, when there are at least `minTrials` of them.
 */
function checkMedianLog(ctx: FakeContext, grace: number, minTrials: number): void {
  const mode = ctx.study.metric.mode;
  const better = (a: number, b: number) => (mode === 'min' ? a < b : a > b);
  const seen = new Map<string, number[]>();
  const averages = new Map<number, number[]>();
  const log = ctx.log;
  for (let i = 0; i < log.length; i++) {
    const a = log[i];
    if (a?.op !== 'metric') continue;
    const values = [...(seen.get(a.trial) ?? []), a.value];
    seen.set(a.trial, values);
    const best = values.reduce((x, y) => (better(y, x) ? y : x));
    const others = averages.get(a.step) ?? [];
    let expectStop = false;
    if (a.step >= grace && a.step < ctx.study.steps && others.length >= minTrials) {
      const sorted = [...others].sort((x, y) => (mode === 'min' ? x - y : y - x));
      const m =
        sorted.length % 2 === 1
          ? (sorted[(sorted.length - 1) / 2] as number)
          : ((sorted[sorted.length / 2 - 1] as number) + (sorted[sorted.length / 2] as number)) / 2;
      expectStop = better(m, best);
    }
    averages.set(a.step, [...others, values.reduce((x, y) => x + y, 0) / values.length]);
    const next = log.slice(i + 1).findIndex((b) => b.op === 'metric' || b.op === 'idle');
    const reaction = log.slice(i + 1, next < 0 ? undefined : i + 1 + next);
    expect(reaction.some((b) => b.op === 'stop' && b.trial === a.trial)).toBe(expectStop);
  }
}

describe('median stopping rule', () => {
  test('stops a clearly bad trial at the first report after the grace period; keeps the good ones', () => {
    const study = tunerStudy(
      { kind: 'median', trials: 8, graceSteps: 3, maxConcurrent: 8 },
      { steps: 10, evalEvery: 1 },
    );
    const { ctx, ended } = runTuner(study, { metric: scoreMetric({ t5: 100 }, 1) });
    expect(ended).toBe('finish');
    expect(ctx.actions('stop')).toEqual([{ op: 'stop', trial: 't5' }]);
    expect(ctx.trials.get('t5')?.reached).toBe(3);
    for (const t of ctx.all()) if (t.id !== 't5') expect(t.reached).toBe(10);
    checkMedianLog(ctx, 3, 3);
  });

  test('needs minTrials others at the step', () => {
    const study = tunerStudy(
      { kind: 'median', trials: 8, graceSteps: 1, minTrials: 5, maxConcurrent: 8 },
      { steps: 10, evalEvery: 1 },
    );
    // in step order t5 only ever sees t1..t4 at a step: 4 < 5, so it is never stopped,
    // while t8 (as bad) sees 5 or more
    const { ctx } = runTuner(study, { metric: scoreMetric({ t5: 100, t8: 100 }, 1) });
    expect(ctx.actions('stop')).toEqual([{ op: 'stop', trial: 't8' }]);
    expect(ctx.trials.get('t5')?.reached).toBe(10);
    checkMedianLog(ctx, 1, 5);
  });

  test('a stopped trial frees its slot for the next configuration', () => {
    const study = tunerStudy(
      { kind: 'median', trials: 6, graceSteps: 1, minTrials: 2, maxConcurrent: 3, seed: 9 },
      { steps: 6, evalEvery: 1 },
    );
    const { ctx } = runTuner(study, { metric: scoreMetric({ t3: 50 }, 1) });
    const log = ctx.log.filter((a) => a.op !== 'idle');
    const stop = log.findIndex((a) => a.op === 'stop');
    expect(log[stop]).toEqual({ op: 'stop', trial: 't3' });
    expect(log[stop + 1]).toEqual({ op: 'propose', trial: 't4', until: 6 });
    expect(ctx.peakRunning).toBe(3);
    expect(ctx.all().map((t) => [t.params, scheduleHashes(t.schedules)])).toEqual(
      randomConfigs(study, 6, 9).map((c) => [c.params, scheduleHashes(c.canonical)]),
    );
  });

  test.prop([
    fc.integer({ min: 1, max: 12 }),
    fc.integer({ min: 1, max: 6 }),
    fc.integer({ min: 0, max: 6 }),
    fc.integer({ min: 1, max: 4 }),
    fc.constantFrom<MetricMode>('min', 'max'),
    fc.integer(),
  ])(
    'every decision follows the rule, in any arrival order',
    (trials, maxConcurrent, graceSteps, minTrials, mode, seed) => {
      const study = tunerStudy(
        { kind: 'median', trials, graceSteps, minTrials, maxConcurrent, seed: seed % 50 },
        { steps: 6, evalEvery: 1, metric: { name: 'm', mode } },
      );
      const { ctx, ended } = runTuner(study, { order: { seed } });
      expect(ended).toBe('finish');
      expect(ctx.all()).toHaveLength(trials);
      expect(ctx.peakRunning).toBeLessThanOrEqual(maxConcurrent);
      checkMedianLog(ctx, graceSteps, minTrials);
    },
  );

  test('median: odd and even counts, NaN last', () => {
    expect(median('min', [3, 1, 2])).toBe(2);
    expect(median('min', [4, 1, 3, 2])).toBe(2.5);
    expect(median('max', [1, Number.NaN, 3])).toBe(1);
  });

  test('createTuner picks the median stopping rule', () => {
    expect(createTuner(tunerStudy({ kind: 'median', trials: 3 }))).toBeInstanceOf(
      MedianStoppingTuner,
    );
  });
});
