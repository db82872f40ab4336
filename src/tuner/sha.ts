import { sampleConfig } from '../study/index.js';
import type { MetricMode, ShaTunerSpec, TrialConfig } from '../study/index.js';
import type { TrialId } from '../tree/index.js';
import { extendTo, ProposalOrder, proposeConfig, rankBest } from './common.js';
import type { Scored } from './common.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

/**
 * The rungs of successive halving: `minSteps * eta^k` for k = 0, 1, ... while below
 * `maxSteps`, then `maxSteps` itself (so the last rung may be less than `eta` times the one
 * before it). `minSteps = maxSteps` gives one rung.
 */
export function shaRungs(minSteps: number, maxSteps: number, eta: number): number[] {
  const out: number[] = [];
  for (let r = minSteps; r < maxSteps; r *= eta) out.push(r);
  out.push(maxSteps);
  return out;
}

/**
 * One synchronous successive-halving bracket over given rungs (also a bracket of the
 * synchronous Hyperband). All its trials train to rung 0; when every live trial has
 * reported at rung k, the best `max(1, floor(n_k / eta))` are extended to rung k + 1 and
 * the rest are stopped; the bracket is done when every live trial reported at the last
 * rung (those trials stay paused there).
 */
export class ShaBracket {
  private live: { readonly trial: TrialId; readonly order: number }[] = [];
  private readonly liveSet = new Set<TrialId>();
  private readonly results = new Map<TrialId, number>();
  private rung = 0;
  private finished = false;

  constructor(
    readonly rungs: readonly number[],
    private readonly eta: number,
    private readonly mode: MetricMode,
  ) {}

  /** Whether every live trial has reported at the last rung. */
  get done(): boolean {
    return this.finished;
  }

  /** Proposes `configs` to rung 0. */
  start(ctx: TunerContext, configs: readonly TrialConfig[], order: ProposalOrder): TrialId[] {
    const first = this.rungs[0] as number;
    const ids = configs.map((config) => proposeConfig(ctx, config, first));
    for (const trial of ids) {
      this.live.push({ trial, order: order.add(trial) });
      this.liveSet.add(trial);
    }
    if (ids.length === 0) this.finished = true;
    return ids;
  }

  /** Records a rung report; decides the rung once every live trial has reported there. */
  onMetric(ctx: TunerContext, event: MetricEvent): void {
    if (this.finished || !this.liveSet.has(event.trial)) return;
    if (event.step !== this.rungs[this.rung]) return;
    this.results.set(event.trial, event.value);
    if (this.results.size === this.live.length) this.decide(ctx);
  }

  /** A trial failed for good: the rung no longer waits for it. */
  onTrialFailed(ctx: TunerContext, trial: TrialId): void {
    if (this.finished || !this.liveSet.has(trial)) return;
    this.liveSet.delete(trial);
    this.results.delete(trial);
    this.live = this.live.filter((m) => m.trial !== trial);
    if (this.live.length === 0) this.finished = true;
    else if (this.results.size === this.live.length) this.decide(ctx);
  }

  private decide(ctx: TunerContext): void {
    if (this.rung === this.rungs.length - 1) {
      this.finished = true;
      return;
    }
    const scored: Scored[] = this.live.map((m) => ({
      ...m,
      value: this.results.get(m.trial) as number,
    }));
    const keep = Math.max(1, Math.floor(this.live.length / this.eta));
    const ranked = rankBest(this.mode, scored);
    const kept = new Set(ranked.slice(0, keep).map((m) => m.trial));
    const from = this.rungs[this.rung] as number;
    const to = this.rungs[this.rung + 1] as number;
    // Withdraw demand before adding more, in trial-id order.
    for (const m of this.live) {
      if (!kept.has(m.trial)) {
        ctx.stop(m.trial);
        this.liveSet.delete(m.trial);
      }
    }
    this.live = this.live.filter((m) => kept.has(m.trial));
    for (const m of this.live) extendTo(ctx, m.trial, from, to);
    this.rung++;
    this.results.clear();
  }
}

/**
 * Successive halving, synchronous (Jamieson & Talwalkar 2016, "Non-stochastic Best Arm
 * Identification and Hyperparameter Optimization"; the form used inside Hyperband, Li et
 * al. 2018): `trials` random configurations all train to the first rung; at each rung the
 * best `1/eta` go on to the next, until the last.
 *
 * Parameters: `trials` n (>= 1), `eta` (>= 2, default 3), `minSteps` (first rung),
 * `maxSteps` (last rung; default the study's `steps`), `seed` (default 0). Rungs:
 * `shaRungs(minSteps, maxSteps, eta)` = minSteps * eta^k below maxSteps, then maxSteps.
 * At rung k with n_k live trials the best `max(1, floor(n_k / eta))` by the study's metric
 * (its `mode`; equal values by trial id) continue.
 *
 * Context API: `start` draws the n configurations from `ctx.rng` (`sampleConfig`) and
 * proposes them with `until` = rung 0 (and the study's `evalEvery` reports before it).
 * Each report at a trial's current rung is recorded; when every live trial has one, the
 * losers are `stop`ped and the winners `extend`ed to the next rung. After the last rung
 * the tuner calls `finish()` (so does `onIdle`, which can only come then).
 */
export class ShaTuner implements Tuner {
  private bracket: ShaBracket | undefined;

  constructor(private readonly spec: ShaTunerSpec) {}

  start(ctx: TunerContext): void {
    const { trials, eta, minSteps, maxSteps } = this.spec;
    const configs: TrialConfig[] = [];
    for (let i = 0; i < trials; i++) configs.push(sampleConfig(ctx.study, ctx.rng, i));
    this.bracket = new ShaBracket(shaRungs(minSteps, maxSteps, eta), eta, ctx.study.metric.mode);
    this.bracket.start(ctx, configs, new ProposalOrder());
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    if (!this.bracket) return;
    this.bracket.onMetric(ctx, event);
    if (this.bracket.done) ctx.finish();
  }

  onIdle(ctx: TunerContext): void {
    ctx.finish();
  }

  onTrialFailed(ctx: TunerContext, trial: TrialId): void {
    if (!this.bracket) return;
    this.bracket.onTrialFailed(ctx, trial);
    if (this.bracket.done) ctx.finish();
  }
}
