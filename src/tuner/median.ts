import { sampleConfig } from '../study/index.js';
import type { MedianTunerSpec, MetricMode } from '../study/index.js';
import type { TrialId } from '../tree/index.js';
import { compareMetric, ConcurrentSearch } from './common.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

/** A trial's reports so far: their sum and count (the running average) and the best one. */
interface History {
  sum: number;
  count: number;
  best: number;
}

/** The median of `values` (mean of the two middle ones for an even count); NaN sorts last. */
export function median(mode: MetricMode, values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => compareMetric(mode, a, b));
  const mid = sorted.length >> 1;
  if (sorted.length % 2 === 1) return sorted[mid] as number;
  return ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/**
 * Random search with the median stopping rule (Golovin et al. 2017, "Google Vizier: A
 * Service for Black-Box Optimization", KDD, section 3.2.2): a trial is stopped at step s
 * if its best value so far is strictly worse than the median of the other trials' running
 * averages (the mean of their values reported up to s).
 *
 * Parameters: `trials` (random configurations in all), `seed` (default 0), `graceSteps`
 * (no stopping before this step; default the study's `evalEvery`), `minTrials` (the rule
 * applies only when at least this many other trials reported at s; default 3),
 * `maxConcurrent` (default the study's `workers`).
 *
 * Context API: configurations are drawn one at a time from `ctx.rng` (`sampleConfig`,
 * so they are `randomConfigs(study, trials, seed)` in order), each proposed for the
 * study's `steps` with a report every `evalEvery`, at most `maxConcurrent` running. On a
 * report at step s (graceSteps <= s < steps: a trial at `steps` has finished), the
 * trial's running average at s is recorded and compared with the running averages at s of
 * every other trial that reported at s before it (trials stopped since included: their
 * curves are evidence too); with at least `minTrials` of them and a median better than
 * the trial's best, the trial is `stop`ped. A stop or a trial finishing frees a slot for
 * the next configuration; `onIdle` proposes, or calls `finish()` once the budget is spent.
 * Values are compared with the study's `mode`; NaN counts as worse than any number.
 */
export class MedianStoppingTuner implements Tuner {
  private readonly search: ConcurrentSearch;
  private readonly histories = new Map<TrialId, History>();
  /** Step -> running averages at that step, one per trial that reported there. */
  private readonly averages = new Map<number, number[]>();

  constructor(private readonly spec: MedianTunerSpec) {
    this.search = new ConcurrentSearch(spec.maxConcurrent, (ctx, i) =>
      i < spec.trials ? sampleConfig(ctx.study, ctx.rng, i) : undefined,
    );
  }

  start(ctx: TunerContext): void {
    this.search.fill(ctx);
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    const mode = ctx.study.metric.mode;
    let h = this.histories.get(event.trial);
    if (!h) {
      h = { sum: 0, count: 0, best: event.value };
      this.histories.set(event.trial, h);
    }
    h.sum += event.value;
    h.count++;
    if (compareMetric(mode, event.value, h.best) < 0) h.best = event.value;

    let others = this.averages.get(event.step);
    if (!others) {
      others = [];
      this.averages.set(event.step, others);
    }
    const stop =
      event.step >= this.spec.graceSteps &&
      event.step < ctx.study.steps &&
      others.length >= this.spec.minTrials &&
      compareMetric(mode, median(mode, others), h.best) < 0;
    others.push(h.sum / h.count);

    if (stop) ctx.stop(event.trial);
    if (stop || event.paused) this.search.fill(ctx);
  }

  onIdle(ctx: TunerContext): void {
    if (this.search.fill(ctx) === 0) ctx.finish();
  }
}
