import type { MetricMode, Study, TrialConfig, TunerSpec } from '../study/index.js';
import type { TrialId } from '../tree/index.js';
import { isBetter } from './types.js';
import type { TunerContext } from './types.js';

/*
 * Helpers shared by the tuners: report points, ranking by the study's metric, proposing a
 * configuration, and the seed of the context's generator.
 */

/**
 * The seed of a study's tuner generator (`ctx.rng` is `createRng(tunerSeed(study.tuner))`):
 * the tuner's `seed`, 0 for a grid.
 */
export function tunerSeed(spec: TunerSpec): number {
  return 'seed' in spec ? spec.seed : 0;
}

/**
 * The study's report steps (every `evalEvery`, see `reportSteps`) strictly between `from`
 * and `until`: the extra reports of a trial that trains from `from` to `until` (which
 * always reports itself). Every tuner asks for them, so that learning curves have the
 * study's resolution whatever the tuner decides on.
 */
export function reportsBetween(
  study: Pick<Study, 'steps' | 'evalEvery'>,
  from: number,
  until: number,
): number[] {
  const out: number[] = [];
  const every = study.evalEvery;
  for (let s = (Math.floor(from / every) + 1) * every; s < until && s < study.steps; s += every) {
    out.push(s);
  }
  return out;
}

/** Proposes `config` trained from step 0 to `until`, reporting at the study's report steps. */
export function proposeConfig(ctx: TunerContext, config: TrialConfig, until: number): TrialId {
  return ctx.propose({
    params: config.params,
    schedules: config.canonical,
    until,
    reports: reportsBetween(ctx.study, 0, until),
  });
}

/** Extends `trial` from `from` to `until`, reporting at the study's report steps in between. */
export function extendTo(ctx: TunerContext, trial: TrialId, from: number, until: number): void {
  ctx.extend(trial, until, reportsBetween(ctx.study, from, until));
}

/**
 * Orders two metric values best first for `mode`: negative when `a` is better. NaN is
 * worse than any number (a diverged trial ranks last), and equal to NaN.
 */
export function compareMetric(mode: MetricMode, a: number, b: number): number {
  const na = Number.isNaN(a);
  const nb = Number.isNaN(b);
  if (na || nb) return na === nb ? 0 : na ? 1 : -1;
  return isBetter(mode, a, b) ? -1 : isBetter(mode, b, a) ? 1 : 0;
}

/** A trial's result: `order` is its proposal order (ids t1, t2, ... sort the same way). */
export interface Scored {
  readonly trial: TrialId;
  readonly order: number;
  readonly value: number;
}

/** Orders scored trials best first; equal values by proposal order (trial id). */
export function compareScored(mode: MetricMode, a: Scored, b: Scored): number {
  return compareMetric(mode, a.value, b.value) || a.order - b.order;
}

/** The scored trials best first (a new array). */
export function rankBest<T extends Scored>(mode: MetricMode, items: readonly T[]): T[] {
  return [...items].sort((a, b) => compareScored(mode, a, b));
}

/** Inserts `item` into `sorted` (best first) keeping the order; O(log n) comparisons. */
export function insertRanked<T extends Scored>(mode: MetricMode, sorted: T[], item: T): void {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareScored(mode, sorted[mid] as T, item) <= 0) lo = mid + 1;
    else hi = mid;
  }
  sorted.splice(lo, 0, item);
}

/**
 * The tuners' proposal order: trial ids in the order the tuner received them, for
 * breaking ties by trial id (t2 before t10).
 */
export class ProposalOrder {
  private readonly orders = new Map<TrialId, number>();

  add(trial: TrialId): number {
    const order = this.orders.size;
    this.orders.set(trial, order);
    return order;
  }

  of(trial: TrialId): number {
    return this.orders.get(trial) ?? Number.MAX_SAFE_INTEGER;
  }
}

/**
 * Keeps at most `limit` trials running (all of them when `limit` is undefined): proposes
 * configurations `draw(0)`, `draw(1)`, ... until `draw` returns undefined, each trained
 * to the study's `steps`. Shared by grid and random search and the median stopping rule.
 */
export class ConcurrentSearch {
  private next = 0;
  private exhausted = false;

  constructor(
    private readonly limit: number | undefined,
    private readonly draw: (ctx: TunerContext, index: number) => TrialConfig | undefined,
  ) {}

  /** Proposes while there is room; returns how many trials it proposed. */
  fill(ctx: TunerContext): number {
    let count = 0;
    while (!this.exhausted && (this.limit === undefined || ctx.running() < this.limit)) {
      const config = this.draw(ctx, this.next);
      if (config === undefined) {
        this.exhausted = true;
        break;
      }
      this.next++;
      count++;
      proposeConfig(ctx, config, ctx.study.steps);
    }
    return count;
  }
}
