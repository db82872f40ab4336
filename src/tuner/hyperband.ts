import { sampleConfig } from '../study/index.js';
import type { HyperbandTunerSpec, TrialConfig } from '../study/index.js';
import type { TrialId } from '../tree/index.js';
import { AshaTuner } from './asha.js';
import { ProposalOrder } from './common.js';
import { ShaBracket } from './sha.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

/** One Hyperband bracket: `n` configurations starting at `r` steps, over `rungs`. */
export interface HyperbandBracket {
  /** The bracket index s, from s_max (most configurations, fewest steps) down to 0. */
  readonly s: number;
  /** Configurations: ceil((s_max + 1) / (s + 1) * eta^s). */
  readonly n: number;
  /** Starting steps: maxSteps * eta^-s (rounded down). */
  readonly r: number;
  /** Rung i (0..s) at floor(maxSteps * eta^(i - s)); the last is maxSteps. */
  readonly rungs: readonly number[];
}

/**
 * The brackets of one Hyperband iteration (Li et al. 2018, Algorithm 1), with R =
 * `maxSteps` and a smallest resource of `minSteps`: s_max = floor(log_eta(maxSteps /
 * minSteps)) (computed exactly in integers), and for s = s_max, ..., 0 a bracket of
 * n = ceil((s_max + 1) / (s + 1) * eta^s) configurations whose rungs are
 * floor(maxSteps * eta^(i - s)) for i = 0..s. For eta = 3, R = 81 (minSteps 1) that is
 * the paper's table: n = 81, 34, 15, 8, 5 and r = 1, 3, 9, 27, 81. Steps are integers, so
 * when maxSteps is not minSteps times a power of eta the rungs are rounded down (never
 * below minSteps).
 */
export function hyperbandBrackets(
  eta: number,
  minSteps: number,
  maxSteps: number,
): HyperbandBracket[] {
  let sMax = 0;
  while (minSteps * eta ** (sMax + 1) <= maxSteps) sMax++;
  const out: HyperbandBracket[] = [];
  for (let s = sMax; s >= 0; s--) {
    // ceil(a / b) in integers, a = (s_max + 1) * eta^s, b = s + 1
    const n = Math.floor(((sMax + 1) * eta ** s + s) / (s + 1));
    const rungs: number[] = [];
    for (let i = 0; i <= s; i++) rungs.push(Math.floor(maxSteps / eta ** (s - i)));
    out.push({ s, n, r: rungs[0] as number, rungs });
  }
  return out;
}

/**
 * Hyperband, synchronous (Li et al. 2018, "Hyperband: A Novel Bandit-Based Approach to
 * Hyperparameter Optimization", JMLR): one iteration of its brackets
 * (`hyperbandBrackets`), each a synchronous successive halving of n configurations from r
 * steps, keeping the best `floor(n_i / eta)` at each rung.
 *
 * Parameters: `eta` (default 3), `minSteps` (the smallest resource), `maxSteps` (R;
 * default the study's `steps`), `seed` (default 0), `async: false`.
 *
 * Choice: the brackets run concurrently, not one after the other. They are independent
 * (each one's decisions depend only on its own trials' metrics), so the decisions are
 * exactly those of the sequential loop in the paper; proposing every bracket at `start`
 * lets the scheduler fill all workers instead of idling while a bracket's last rungs run.
 *
 * Context API: `start` draws every bracket's configurations from `ctx.rng` (bracket
 * s_max first) and proposes them to their bracket's first rung; reports go to the
 * trial's bracket, which stops its losers and extends its winners when a rung is complete
 * (`ShaBracket`). When every bracket is done the tuner calls `finish()`.
 */
export class HyperbandTuner implements Tuner {
  private brackets: ShaBracket[] = [];
  private readonly owner = new Map<TrialId, ShaBracket>();

  constructor(private readonly spec: HyperbandTunerSpec) {}

  start(ctx: TunerContext): void {
    const { eta, minSteps, maxSteps } = this.spec;
    const order = new ProposalOrder();
    let index = 0;
    for (const b of hyperbandBrackets(eta, minSteps, maxSteps)) {
      const configs: TrialConfig[] = [];
      for (let i = 0; i < b.n; i++) configs.push(sampleConfig(ctx.study, ctx.rng, index++));
      const bracket = new ShaBracket(b.rungs, eta, ctx.study.metric.mode);
      for (const trial of bracket.start(ctx, configs, order)) this.owner.set(trial, bracket);
      this.brackets.push(bracket);
    }
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    const bracket = this.owner.get(event.trial);
    if (!bracket) return;
    bracket.onMetric(ctx, event);
    if (this.brackets.every((b) => b.done)) ctx.finish();
  }

  onIdle(ctx: TunerContext): void {
    ctx.finish();
  }

  onTrialFailed(ctx: TunerContext, trial: TrialId): void {
    const bracket = this.owner.get(trial);
    if (!bracket) return;
    bracket.onTrialFailed(ctx, trial);
    if (this.brackets.every((b) => b.done)) ctx.finish();
  }
}

/**
 * Hyperband, asynchronous (Li et al. 2020, "A System for Massively Parallel
 * Hyperparameter Tuning", section 3.3): the brackets of `hyperbandBrackets`, each run as
 * ASHA over its rungs; new configurations are assigned to the brackets round-robin (s_max
 * first), and promotions are checked bracket by bracket (s_max first), highest rung first.
 *
 * Parameters: `eta` (default 3), `minSteps`, `maxSteps` (default `steps`), `seed`
 * (default 0), `async: true`, `trials` (configurations in all; default one iteration's
 * worth, the sum of the bracket sizes n), `maxConcurrent` (default the study's `workers`).
 *
 * Context API: that of `AshaTuner` (promote else propose while `running() <
 * maxConcurrent`; unpromoted trials stay paused until `finish()`).
 */
export class AsyncHyperbandTuner extends AshaTuner {
  constructor(spec: HyperbandTunerSpec) {
    const brackets = hyperbandBrackets(spec.eta, spec.minSteps, spec.maxSteps);
    super({
      brackets: brackets.map((b) => b.rungs),
      eta: spec.eta,
      trials: spec.trials ?? brackets.reduce((sum, b) => sum + b.n, 0),
      maxConcurrent: spec.maxConcurrent,
    });
  }
}
