import { gridConfigs } from '../study/index.js';
import type { GridTunerSpec, TrialConfig } from '../study/index.js';
import { ConcurrentSearch } from './common.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

/**
 * Grid search: every configuration of the cartesian product of the study's `choice` and
 * `int` domains (`gridConfigs`, in its order), each trained for the study's `steps` with
 * a report every `evalEvery` steps. No early stopping.
 *
 * Parameters: `maxConcurrent` (optional; default: every configuration is proposed at
 * once, and the stage tree and the scheduler decide what runs when).
 *
 * Context API: `start` proposes the first `maxConcurrent` configurations (all of them
 * without a limit); when a trial pauses at `steps` (its last report) and on `onIdle`, more
 * are proposed while fewer than `maxConcurrent` trials are `running()`; `onIdle` with
 * nothing left to propose calls `finish()`. Uses no randomness.
 */
export class GridTuner implements Tuner {
  private configs: readonly TrialConfig[] = [];
  private readonly search: ConcurrentSearch;

  constructor(spec: GridTunerSpec) {
    this.search = new ConcurrentSearch(spec.maxConcurrent, (_ctx, i) => this.configs[i]);
  }

  start(ctx: TunerContext): void {
    this.configs = gridConfigs(ctx.study);
    this.search.fill(ctx);
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    if (event.paused) this.search.fill(ctx);
  }

  onIdle(ctx: TunerContext): void {
    if (this.search.fill(ctx) === 0) ctx.finish();
  }
}
