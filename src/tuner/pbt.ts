import { constant, splice, valueAt } from '../schedule/index.js';
import type { Canonical } from '../schedule/index.js';
import { isDomain, sampleConfig } from '../study/index.js';
import type { JsonValue, PbtTunerSpec } from '../study/index.js';
import type { TrialId } from '../tree/index.js';
import { extendTo, ProposalOrder, proposeConfig, rankBest, reportsBetween } from './common.js';
import type { Scored } from './common.js';
import type { MetricEvent, Tuner, TunerContext } from './types.js';

type Schedules = Readonly<Record<string, Canonical>>;

/** A member of the population: its trial and its schedules (absolute time). */
interface Member {
  readonly trial: TrialId;
  readonly order: number;
  readonly schedules: Schedules;
}

/** Whether a study value contains a search domain anywhere. */
function searched(value: JsonValue): boolean {
  if (isDomain(value)) return true;
  if (Array.isArray(value)) return value.some(searched);
  if (typeof value === 'object' && value !== null) return Object.values(value).some(searched);
  return false;
}

/**
 * How many members are replaced each round: ceil(population * quantile), at most half the
 * population (so that no member is both in the top and in the bottom).
 */
export function pbtQuantileCount(population: number, quantile: number): number {
  // The small epsilon keeps 10 * 0.3 = 3.0000000000000004 at 3.
  return Math.min(Math.floor(population / 2), Math.max(1, Math.ceil(population * quantile - 1e-9)));
}

/**
 * Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural
 * Networks"), with truncation selection for exploit and perturb / resample for explore.
 *
 * Parameters: `population` (>= 2 members), `interval` (steps between rounds of
 * exploit/explore), `quantile` (default 0.25: the bottom `pbtQuantileCount` members are
 * replaced by copies of the top as many), `perturb` (default [0.8, 1.2]: a perturbed
 * hyperparameter is multiplied by one of these, drawn uniformly), `resample` (default
 * 0.25: the probability that explore draws a fresh configuration instead of perturbing),
 * `seed` (default 0).
 *
 * Synchronous generations: every member trains to the next round step (`interval`,
 * 2 * `interval`, ..., and `steps`) and pauses there; when every member has reported at
 * round step s < steps, the members are ranked by the study's metric (`mode`, equal values
 * by trial id). Each bottom member, worst first, picks a top member uniformly (exploit),
 * and explore makes new schedules: with probability `resample` those of a fresh
 * configuration (`sampleConfig`; its schedules from s on, absolute time), otherwise each
 * hyperparameter that is searched (its `space` entry has a domain) and whose value at s is
 * a number becomes `constant(value * factor)`; fixed hyperparameters and string values
 * continue unchanged. Static params cannot change in a fork: a fresh configuration's
 * params are not used.
 *
 * Context API: `start` proposes `population` configurations drawn from `ctx.rng` with
 * `until` = the first round step. At a round, for each bottom member:
 * `ctx.fork(top, s, explored, next)` (the fork continues the top member's state at s and
 * replaces the bottom member in the population), then `ctx.stop(bottom)`; then every other
 * member is `extend`ed to the next round step. All draws come from `ctx.rng`, in that
 * order: the top member, the resample coin, then the fresh configuration or one factor per
 * perturbed hyperparameter (in key order). After the round at `steps` the tuner calls
 * `finish()`.
 */
export class PbtTuner implements Tuner {
  private members: Member[] = [];
  private readonly order = new ProposalOrder();
  private readonly values = new Map<TrialId, number>();
  /** The step every member trains towards. */
  private target = 0;
  private configs = 0;
  private done = false;

  constructor(private readonly spec: PbtTunerSpec) {}

  start(ctx: TunerContext): void {
    this.target = Math.min(this.spec.interval, ctx.study.steps);
    for (let i = 0; i < this.spec.population; i++) {
      const config = sampleConfig(ctx.study, ctx.rng, this.configs++);
      const trial = proposeConfig(ctx, config, this.target);
      this.members.push({ trial, order: this.order.add(trial), schedules: config.canonical });
    }
  }

  onMetric(ctx: TunerContext, event: MetricEvent): void {
    if (this.done || event.step !== this.target) return;
    if (!this.members.some((m) => m.trial === event.trial)) return;
    this.values.set(event.trial, event.value);
    if (this.values.size === this.members.length) this.round(ctx);
  }

  /** A member failed for good: it counts as the worst of its generation (and is replaced). */
  onTrialFailed(ctx: TunerContext, trial: TrialId): void {
    if (this.done || !this.members.some((m) => m.trial === trial)) return;
    this.values.set(
      trial,
      ctx.study.metric.mode === 'max' ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY,
    );
    if (this.values.size === this.members.length) this.round(ctx);
  }

  onIdle(ctx: TunerContext): void {
    ctx.finish();
  }

  private round(ctx: TunerContext): void {
    const s = this.target;
    if (s >= ctx.study.steps) {
      this.done = true;
      ctx.finish();
      return;
    }
    const next = Math.min(s + this.spec.interval, ctx.study.steps);
    const scored = this.members.map((m) => ({ ...m, value: this.values.get(m.trial) as number }));
    const ranked: (Member & Scored)[] = rankBest(ctx.study.metric.mode, scored);
    const k = pbtQuantileCount(this.members.length, this.spec.quantile);
    const top = ranked.slice(0, k);
    const bottom = ranked.slice(ranked.length - k).reverse(); // worst first
    const replaced = new Map<TrialId, Member>();
    for (const loser of bottom) {
      const source = top[ctx.rng.int(0, top.length - 1)] as Member;
      const schedules = this.explore(ctx, source, s);
      const trial = ctx.fork(source.trial, s, schedules, next, reportsBetween(ctx.study, s, next));
      replaced.set(loser.trial, {
        trial,
        order: this.order.add(trial),
        schedules: spliceAll(source.schedules, schedules, s),
      });
      ctx.stop(loser.trial);
    }
    for (const m of this.members) {
      if (!replaced.has(m.trial)) extendTo(ctx, m.trial, s, next);
    }
    this.members = this.members.map((m) => replaced.get(m.trial) ?? m);
    this.values.clear();
    this.target = next;
  }

  /** New schedules (from step s on) for a copy of `source`. */
  private explore(ctx: TunerContext, source: Member, s: number): Schedules {
    if (ctx.rng.next() < this.spec.resample) {
      return sampleConfig(ctx.study, ctx.rng, this.configs++).canonical;
    }
    // Entries, not assignments: Object.fromEntries makes "__proto__" an own key.
    const out: [string, Canonical][] = [];
    const perturb = this.spec.perturb;
    for (const hp of Object.keys(source.schedules)) {
      const space = Object.hasOwn(ctx.study.space, hp) ? ctx.study.space[hp] : undefined;
      if (space === undefined || !searched(space)) continue;
      const value = valueAt(source.schedules[hp] as Canonical, s);
      if (typeof value !== 'number') continue;
      const factor = perturb[ctx.rng.int(0, perturb.length - 1)] as number;
      out.push([hp, constant(value * factor)]);
    }
    return Object.fromEntries(out);
  }
}

/** `source`'s schedules before `at` and `replacement`'s from `at` on (what a fork trains). */
function spliceAll(source: Schedules, replacement: Schedules, at: number): Schedules {
  return Object.fromEntries(
    Object.keys(source).map((hp) => {
      const a = source[hp] as Canonical;
      const b = Object.hasOwn(replacement, hp) ? replacement[hp] : undefined;
      return [hp, b === undefined ? a : splice(a, b, at)];
    }),
  );
}
