import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import type { MetricEvent, Tuner, TunerContext, TrialSpec } from '../../src/tuner/types.js';
import { upfrontTrials } from '../../src/tuner/upfront.js';
import { simEvaluate, simInit, simTrain } from '../../src/workers/sim/index.js';

export const c = (x: unknown): Canonical => canonicalize(parseSchedule(x));

/** A small multistep grid: 3 initial LRs x 2 milestones, 40 steps, reports every 10. */
export function smallStudy(overrides: Record<string, unknown> = {}): Study {
  return parseStudy({
    name: 'small',
    params: { model: 'resnet20', seed: 0 },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.05, 0.1, 0.2] },
        factor: 0.1,
        milestones: [{ choice: [20, 30] }],
      },
      batchSize: 128,
    },
    steps: 40,
    evalEvery: 10,
    tuner: { kind: 'grid' },
    metric: { name: 'accuracy', mode: 'max' },
    trainer: { kind: 'sim', stepSeconds: 2, startSeconds: 5, saveSeconds: 0.5, loadSeconds: 0.25 },
    workers: 2,
    ...overrides,
  });
}

/** Proposes every grid trial at once and never stops anything. */
export function gridTuner(study: Study): Tuner {
  return {
    start(ctx) {
      for (const t of upfrontTrials(study)) {
        ctx.propose({
          params: t.params,
          schedules: t.schedules,
          until: t.until,
          reports: t.reports ?? [],
        });
      }
    },
    onMetric() {},
    onIdle() {},
  };
}

/** A tuner driven by callbacks, for tests that script decisions. */
export function scriptedTuner(script: {
  start: (ctx: TunerContext) => void;
  onMetric?: (ctx: TunerContext, e: MetricEvent) => void;
  onIdle?: (ctx: TunerContext) => void;
}): Tuner {
  return {
    start: script.start,
    onMetric: script.onMetric ?? (() => undefined),
    onIdle: script.onIdle ?? (() => undefined),
  };
}

export function spec(lr: unknown, until: number, reports: number[] = [], seed = 0): TrialSpec {
  return {
    params: { model: 'resnet20', seed },
    schedules: { lr: c(lr), batchSize: c(128) },
    until,
    reports,
  };
}

/** The metric the sim trainer gives a trial trained alone from scratch to `step`. */
export function simAlone(
  spec: Pick<TrialSpec, 'params' | 'schedules'>,
  step: number,
  mode: 'min' | 'max',
): number {
  const state = simTrain(simInit(spec.params), {
    stage: 'alone',
    start: 0,
    end: step,
    params: spec.params,
    schedules: spec.schedules,
  });
  return simEvaluate(state, mode);
}
