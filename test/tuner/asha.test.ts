import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import type { MetricMode } from '../../src/study/index.js';
import { AshaTuner, compareMetric, createTuner, shaRungs } from '../../src/tuner/index.js';
import { preferring, runTuner, scoreMetric, tunerStudy } from '../support/tuner-harness.js';
import type { FakeContext } from '../support/tuner-harness.js';

interface Result {
  readonly trial: string;
  readonly n: number;
  readonly value: number;
}

/**
 * Replays a run's log against ASHA's rule (one bracket over `rungs`): every extension
 * promotes a trial that is, at that moment, in the top floor(|rung k| / eta) of its rung
 * and was not promoted before; at the end nothing promotable is left.
 */
function checkAshaLog(ctx: FakeContext, rungs: readonly number[], eta: number): void {
  const mode = ctx.study.metric.mode;
  const results: Result[][] = rungs.map(() => []);
  const promoted = rungs.map(() => new Set<string>());
  const until = new Map<string, number>();
  const top = (k: number): Result[] => {
    const list = [...(results[k] as Result[])].sort(
      (a, b) => compareMetric(mode, a.value, b.value) || a.n - b.n,
    );
    return list.slice(0, Math.floor(list.length / eta));
  };
  for (const a of ctx.log) {
    if (a.op === 'propose') {
      expect(a.until).toBe(rungs[0]);
      until.set(a.trial, a.until);
    } else if (a.op === 'metric' && a.paused) {
      const k = rungs.indexOf(a.step);
      expect(k).toBeGreaterThanOrEqual(0);
      results[k]?.push({ trial: a.trial, n: Number(a.trial.slice(1)), value: a.value });
    } else if (a.op === 'extend') {
      const k = rungs.indexOf(until.get(a.trial) as number);
      expect(a.until).toBe(rungs[k + 1]);
      expect(top(k).map((r) => r.trial)).toContain(a.trial);
      expect(promoted[k]?.has(a.trial)).toBe(false);
      promoted[k]?.add(a.trial);
      until.set(a.trial, a.until);
    }
  }
  for (let k = 0; k < rungs.length - 1; k++) {
    for (const r of top(k)) expect(promoted[k]?.has(r.trial)).toBe(true);
  }
}

describe('asynchronous successive halving', () => {
  test('a good early trial is promoted as soon as it is in the top 1/eta, before the rung fills', () => {
    const study = tunerStudy(
      { kind: 'asha', trials: 9, minSteps: 1, maxSteps: 9, maxConcurrent: 9 },
      { steps: 9 },
    );
    // t3 is the best; its report and two others arrive first.
    const metric = scoreMetric({ t3: 0, t1: 5, t2: 6 }, 3);
    const { ctx } = runTuner(study, { metric, order: preferring(['t3', 't1', 't2']) });
    const log = ctx.log.filter((a) => a.op !== 'idle');
    const firstExtend = log.findIndex((a) => a.op === 'extend');
    expect(log[firstExtend]).toEqual({ op: 'extend', trial: 't3', until: 3 });
    // it follows the third rung-0 report, while six trials have not reported yet
    const reportsBefore = log
      .slice(0, firstExtend)
      .flatMap((a) => (a.op === 'metric' ? [a.trial] : []));
    expect(reportsBefore).toEqual(['t3', 't1', 't2']);
    checkAshaLog(ctx, [1, 3, 9], 3);
  });

  test('an early promotion can pick a trial that a synchronous rung would not have', () => {
    const study = tunerStudy(
      { kind: 'asha', trials: 9, minSteps: 1, maxSteps: 9, maxConcurrent: 9 },
      { steps: 9 },
    );
    // t1 is promoted on the first three reports although t4..t6 turn out better
    const metric = scoreMetric({ t1: 2, t2: 8, t3: 9, t4: 0, t5: 0.5, t6: 1 }, 7);
    const { ctx } = runTuner(study, { metric, order: preferring(['t1', 't2', 't3']) });
    const promotedTo3 = ctx
      .actions('extend')
      .filter((e) => e.until === 3)
      .map((e) => e.trial);
    expect(promotedTo3[0]).toBe('t1');
    expect(promotedTo3).toContain('t4');
    checkAshaLog(ctx, [1, 3, 9], 3);
  });

  test('unpromoted trials stay paused (never stopped) until finish', () => {
    const study = tunerStudy({ kind: 'asha', trials: 12, minSteps: 1, maxConcurrent: 3 });
    const { ctx, ended } = runTuner(study);
    expect(ended).toBe('finish');
    expect(ctx.actions('stop')).toEqual([]);
    expect(ctx.all().every((t) => t.status === 'active')).toBe(true);
  });

  test.prop([
    fc.integer({ min: 1, max: 40 }),
    fc.integer({ min: 1, max: 8 }),
    fc.integer({ min: 2, max: 4 }),
    fc.integer({ min: 1, max: 3 }),
    fc.integer({ min: 0, max: 30 }),
    fc.constantFrom<MetricMode>('min', 'max'),
    fc.integer(),
  ])(
    'follows the promotion rule, spends exactly the budget, never exceeds maxConcurrent',
    (trials, maxConcurrent, eta, minSteps, extra, mode, orderSeed) => {
      const maxSteps = minSteps + extra;
      const study = tunerStudy(
        { kind: 'asha', trials, eta, minSteps, maxSteps, maxConcurrent, seed: orderSeed % 100 },
        { steps: maxSteps, metric: { name: 'm', mode } },
      );
      const { ctx, ended } = runTuner(study, { order: { seed: orderSeed } });
      expect(ended).toBe('finish');
      expect(ctx.actions('propose')).toHaveLength(trials);
      expect(ctx.peakRunning).toBeLessThanOrEqual(maxConcurrent);
      expect(ctx.peakRunning).toBe(Math.min(maxConcurrent, trials));
      checkAshaLog(ctx, shaRungs(minSteps, maxSteps, eta), eta);
    },
  );

  test('createTuner picks ASHA', () => {
    expect(createTuner(tunerStudy({ kind: 'asha', trials: 3, minSteps: 1 }))).toBeInstanceOf(
      AshaTuner,
    );
  });
});
