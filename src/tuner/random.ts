import { sampleConfig } from '../study/index.js';
import type { RandomTunerSpec } from '../study/index.js';
import { ConcurrentSearch } from './common.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

/**
 * Random search (Bergstra & Bengio 2012, "Random Search for Hyper-Parameter
 * Optimization"): `trials` configurations sampled independently from the study's domains,
 * each trained for the study's `steps` with a report every `evalEvery` steps. No early
 * stopping.
 *
 * Parameters: `trials` (required), `seed` (default 0), `maxConcurrent` (optional;
 * default: every trial is proposed at once).
 *
 * Context API: configurations are drawn one at a time from `ctx.rng` with `sampleConfig`
 * as they are proposed; since nothing else draws from it and the engine seeds it with
 * `createRng(seed)`, the trials are exactly `randomConfigs(study, trials, seed)`, in that
 * order. `start` proposes up to `maxConcurrent` of them; a trial pausing at `steps` and
 * `onIdle` propose more while fewer than `maxConcurrent` are `running()`; `onIdle` with
 * the budget spent calls `finish()`.
 */
export class RandomTuner implements Tuner {
  private readonly search: ConcurrentSearch;

  constructor(spec: RandomTunerSpec) {
    this.search = new ConcurrentSearch(spec.maxConcurrent, (ctx, i) =>
      i < spec.trials ? sampleConfig(ctx.study, ctx.rng, i) : undefined,
    );
  }

  start(ctx: TunerContext): void {
    this.search.fill(ctx);
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    if (event.paused) this.search.fill(ctx);
  }

  onIdle(ctx: TunerContext): void {
    if (this.search.fill(ctx) === 0) ctx.finish();
  }
}
