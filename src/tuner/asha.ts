import { sampleConfig } from '../study/index.js';
import type { AshaTunerSpec, MetricMode } from '../study/index.js';
import type { TrialId } from '../tree/index.js';
import { extendTo, insertRanked, ProposalOrder, proposeConfig } from './common.js';
import type { Scored } from './common.js';
import { shaRungs } from './sha.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

/**
 * One asynchronous successive-halving bracket: per rung, the results so far (best first)
 * and the trials already promoted from it. A trial is promotable from rung k when it is in
 * the top `floor(|results at k| / eta)` of rung k and was not promoted yet.
 */
export class AshaBracket {
  /** Per rung: results best first (equal values by trial id). */
  private readonly results: Scored[][];
  /** Per rung: trials promoted from it. */
  private readonly promoted: Set<TrialId>[];
  /** The rung each trial of the bracket trains towards (or paused at). */
  private readonly at = new Map<TrialId, number>();

  constructor(
    readonly rungs: readonly number[],
    private readonly eta: number,
    private readonly mode: MetricMode,
  ) {
    this.results = rungs.map(() => []);
    this.promoted = rungs.map(() => new Set<TrialId>());
  }

  /** A new trial, training towards rung 0. */
  add(trial: TrialId): void {
    this.at.set(trial, 0);
  }

  has(trial: TrialId): boolean {
    return this.at.has(trial);
  }

  /** Records `event` if it is the trial's report at its rung; returns whether it was. */
  record(event: MetricEvent, order: number): boolean {
    const k = this.at.get(event.trial);
    if (k === undefined || event.step !== this.rungs[k]) return false;
    insertRanked(this.mode, this.results[k] as Scored[], {
      trial: event.trial,
      order,
      value: event.value,
    });
    return true;
  }

  /**
   * The trial to promote next, if any: the highest rung below the top first, and within a
   * rung the best unpromoted trial of its top `1/eta` (Algorithm 2 of Li et al. 2020).
   */
  promotable(): { readonly trial: TrialId; readonly rung: number } | undefined {
    for (let k = this.rungs.length - 2; k >= 0; k--) {
      const list = this.results[k] as Scored[];
      const promoted = this.promoted[k] as Set<TrialId>;
      const top = Math.floor(list.length / this.eta);
      for (let i = 0; i < top; i++) {
        const trial = (list[i] as Scored).trial;
        if (!promoted.has(trial)) return { trial, rung: k };
      }
    }
    return undefined;
  }

  /** Extends `trial` from rung k to rung k + 1. */
  promote(ctx: TunerContext, trial: TrialId, k: number): void {
    (this.promoted[k] as Set<TrialId>).add(trial);
    this.at.set(trial, k + 1);
    extendTo(ctx, trial, this.rungs[k] as number, this.rungs[k + 1] as number);
  }
}

/** What an ASHA run needs: its brackets' rungs and its budgets. */
export interface AshaPlan {
  /** The rungs of each bracket; new configurations go to the brackets round-robin. */
  readonly brackets: readonly (readonly number[])[];
  readonly eta: number;
  /** Configurations to try in all. */
  readonly trials: number;
  readonly maxConcurrent: number;
}

/**
 * Asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel
 * Hyperparameter Tuning", MLSys; Algorithm 2), with one bracket (early-stopping rate 0).
 * Several brackets, assigned round-robin, make the asynchronous Hyperband
 * (`AsyncHyperbandTuner`).
 *
 * Parameters: `trials` (configurations to try in all), `eta` (default 3), `minSteps`,
 * `maxSteps` (default the study's `steps`), `seed` (default 0), `maxConcurrent` (default
 * the study's `workers`). Rungs as successive halving's: `shaRungs(minSteps, maxSteps, eta)`.
 *
 * Context API: `get_job` of the paper runs whenever a slot is free, i.e. while
 * `ctx.running() < maxConcurrent`: promote a promotable trial if there is one (checking
 * the highest rung first; `extend` it to the next rung), else propose a new configuration
 * (drawn from `ctx.rng` with `sampleConfig`) at rung 0 while the `trials` budget lasts.
 * This runs at `start`, after every report at a trial's rung (a trial pausing frees its
 * slot, so promotion is eager: the report that puts a trial in its rung's top `1/eta`
 * promotes it at once, before the rung fills), and on `onIdle`. Trials that are not
 * promoted stay paused, never stopped, since a later report may still promote them; trials
 * at the top rung are done. `onIdle` with nothing to promote or propose calls `finish()`,
 * which stops the paused trials.
 */
export class AshaTuner implements Tuner {
  private brackets: AshaBracket[] = [];
  private readonly order = new ProposalOrder();
  private proposed = 0;

  constructor(private readonly plan: AshaPlan) {}

  /** The single-bracket ASHA of a study's `asha` tuner. */
  static of(spec: AshaTunerSpec): AshaTuner {
    return new AshaTuner({
      brackets: [shaRungs(spec.minSteps, spec.maxSteps, spec.eta)],
      eta: spec.eta,
      trials: spec.trials,
      maxConcurrent: spec.maxConcurrent,
    });
  }

  start(ctx: TunerContext): void {
    const mode = ctx.study.metric.mode;
    this.brackets = this.plan.brackets.map((rungs) => new AshaBracket(rungs, this.plan.eta, mode));
    this.fill(ctx);
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    const bracket = this.brackets.find((b) => b.has(event.trial));
    if (bracket?.record(event, this.order.of(event.trial))) this.fill(ctx);
  }

  onIdle(ctx: TunerContext): void {
    if (this.fill(ctx) === 0) ctx.finish();
  }

  /** Promotes, else proposes, while a slot is free; returns how many trials it started. */
  private fill(ctx: TunerContext): number {
    let started = 0;
    while (ctx.running() < this.plan.maxConcurrent) {
      const next = this.nextPromotion();
      if (next) {
        next.bracket.promote(ctx, next.trial, next.rung);
      } else if (this.proposed < this.plan.trials && this.brackets.length > 0) {
        const bracket = this.brackets[this.proposed % this.brackets.length] as AshaBracket;
        const config = sampleConfig(ctx.study, ctx.rng, this.proposed);
        this.proposed++;
        const trial = proposeConfig(ctx, config, bracket.rungs[0] as number);
        this.order.add(trial);
        bracket.add(trial);
      } else {
        break;
      }
      started++;
    }
    return started;
  }

  private nextPromotion():
    { readonly bracket: AshaBracket; readonly trial: TrialId; readonly rung: number } | undefined {
    for (const bracket of this.brackets) {
      const p = bracket.promotable();
      if (p) return { bracket, ...p };
    }
    return undefined;
  }
}
