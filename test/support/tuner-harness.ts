/**
 * A pure test harness for tuners: a fake `TunerContext` that records what a tuner asks
 * (proposals, extensions, stops, forks), and a driver that "trains" instantly. The driver
 * keeps each active trial's pending report steps and delivers them one at a time, in a
 * deterministic order (by step, then trial id; or a seeded pick among the trials that have
 * a report pending, to model asynchrony; or a custom pick), with a metric computed from the
 * trial's schedules and the step. When nothing is pending it calls `onIdle`, and stops when
 * the tuner finishes or does nothing.
 *
 * Every call is checked the way the engine would check it (unknown or stopped trials,
 * ranges, report points, calls after `finish`), so a tuner bug shows up as a thrown error.
 */
import { splice, valueAt } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { createRng, parseStudy } from '../../src/study/index.js';
import type { Rng, Study } from '../../src/study/index.js';
import type { TrialId } from '../../src/tree/index.js';
import { createTuner, tunerSeed } from '../../src/tuner/index.js';
import type { TrialSpec, Tuner, TunerContext } from '../../src/tuner/index.js';

export interface HarnessTrial {
  readonly id: TrialId;
  /** 1 for t1, 2 for t2, ... */
  readonly n: number;
  readonly params: Readonly<Record<string, unknown>>;
  readonly schedules: Readonly<Record<string, Canonical>>;
  readonly forkOf: { readonly trial: TrialId; readonly at: number } | null;
  until: number;
  /** Report steps not delivered yet, ascending (each <= until). */
  pending: number[];
  /** The last step reported (or the fork step, or 0). */
  reached: number;
  status: 'active' | 'stopped';
  /** Delivered metric values by step. */
  readonly values: Map<number, number>;
}

export type Action =
  | { readonly op: 'propose'; readonly trial: TrialId; readonly until: number }
  | { readonly op: 'extend'; readonly trial: TrialId; readonly until: number }
  | { readonly op: 'stop'; readonly trial: TrialId }
  | {
      readonly op: 'fork';
      readonly trial: TrialId;
      readonly source: TrialId;
      readonly at: number;
      readonly until: number;
      readonly hps: readonly string[];
    }
  | {
      readonly op: 'metric';
      readonly trial: TrialId;
      readonly step: number;
      readonly value: number;
      readonly paused: boolean;
    }
  | { readonly op: 'idle' }
  | { readonly op: 'finish' };

/** The metric a trial reports at `step`. */
export type MetricFn = (trial: HarnessTrial, step: number) => number;

/** A trial with a report pending, and the step of its next one. */
export interface Candidate {
  readonly trial: HarnessTrial;
  readonly step: number;
}

/**
 * Which pending report is delivered next: 'step' (smallest step, then trial id), a
 * seeded pick among the trials with a pending report, or a function that gets the
 * candidates (sorted by step, then trial id) and returns the index of the one to deliver.
 */
export type Order = 'step' | { readonly seed: number } | ((c: readonly Candidate[]) => number);

function checkReports(reports: readonly number[], from: number, until: number, what: string): void {
  let last = from;
  for (const r of reports) {
    if (!Number.isInteger(r) || r <= last || r >= until) {
      throw new Error(`${what}: reports must increase strictly inside (${from}, ${until}): ${r}`);
    }
    last = r;
  }
}

/** A fake engine: records and checks what a tuner asks; trains nothing by itself. */
export class FakeContext implements TunerContext {
  readonly rng: Rng;
  readonly trials = new Map<TrialId, HarnessTrial>();
  readonly log: Action[] = [];
  private done = false;
  /** The most trials `running()` at once, after any call. */
  peakRunning = 0;

  constructor(readonly study: Study) {
    this.rng = createRng(tunerSeed(study.tuner));
  }

  private open(): void {
    if (this.done) throw new Error('the tuner called its context after finish()');
  }

  private trial(id: TrialId): HarnessTrial {
    const t = this.trials.get(id);
    if (!t) throw new Error(`no such trial ${id}`);
    return t;
  }

  private add(
    spec: Omit<HarnessTrial, 'id' | 'n' | 'pending' | 'status' | 'values'>,
    reports: readonly number[],
  ): HarnessTrial {
    const n = this.trials.size + 1;
    const t: HarnessTrial = {
      ...spec,
      id: `t${n}`,
      n,
      pending: [...reports, spec.until],
      status: 'active',
      values: new Map(),
    };
    this.trials.set(t.id, t);
    return t;
  }

  private noteRunning(): void {
    this.peakRunning = Math.max(this.peakRunning, this.running());
  }

  propose(spec: TrialSpec): TrialId {
    this.open();
    if (!Number.isInteger(spec.until) || spec.until < 1) throw new Error(`bad until ${spec.until}`);
    const reports = spec.reports ?? [];
    checkReports(reports, 0, spec.until, 'propose');
    const t = this.add(
      {
        params: spec.params,
        schedules: spec.schedules,
        forkOf: null,
        until: spec.until,
        reached: 0,
      },
      reports,
    );
    this.log.push({ op: 'propose', trial: t.id, until: t.until });
    this.noteRunning();
    return t.id;
  }

  extend(id: TrialId, until: number, reports: readonly number[] = []): void {
    this.open();
    const t = this.trial(id);
    if (t.status !== 'active') throw new Error(`extend of stopped trial ${id}`);
    if (!Number.isInteger(until) || until <= t.until) {
      throw new Error(`extend ${id} to ${until}: not beyond its until ${t.until}`);
    }
    checkReports(reports, t.until, until, `extend ${id}`);
    t.pending.push(...reports, until);
    t.until = until;
    this.log.push({ op: 'extend', trial: id, until });
    this.noteRunning();
  }

  stop(id: TrialId): void {
    this.open();
    const t = this.trial(id);
    if (t.status !== 'active') throw new Error(`stop of stopped trial ${id}`);
    t.status = 'stopped';
    t.pending = [];
    this.log.push({ op: 'stop', trial: id });
  }

  fork(
    source: TrialId,
    at: number,
    schedules: Readonly<Record<string, Canonical>>,
    until: number,
    reports: readonly number[] = [],
  ): TrialId {
    this.open();
    const s = this.trial(source);
    if (!Number.isInteger(at) || at < 0 || at > s.until) {
      throw new Error(`fork of ${source} at ${at}: beyond its until ${s.until}`);
    }
    if (!Number.isInteger(until) || until <= at) throw new Error(`fork until ${until} <= at ${at}`);
    checkReports(reports, at, until, 'fork');
    const hps = Object.keys(schedules);
    for (const hp of hps) {
      if (!Object.hasOwn(s.schedules, hp)) throw new Error(`fork: unknown hyperparameter ${hp}`);
    }
    const merged = Object.fromEntries(
      Object.entries(s.schedules).map(([hp, c]) => {
        const b = Object.hasOwn(schedules, hp) ? schedules[hp] : undefined;
        return [hp, b === undefined ? c : splice(c, b, at)];
      }),
    );
    const t = this.add(
      { params: s.params, schedules: merged, forkOf: { trial: source, at }, until, reached: at },
      reports,
    );
    this.log.push({ op: 'fork', trial: t.id, source, at, until, hps });
    this.noteRunning();
    return t.id;
  }

  finish(): void {
    this.open();
    this.done = true;
    this.log.push({ op: 'finish' });
  }

  /** Whether the tuner called finish(). */
  isFinished(): boolean {
    return this.done;
  }

  running(): number {
    if (this.done) return 0;
    let n = 0;
    for (const t of this.trials.values()) if (t.status === 'active' && t.reached < t.until) n++;
    return n;
  }

  /** Trials in proposal order. */
  all(): HarnessTrial[] {
    return [...this.trials.values()];
  }

  /** The actions of one kind, in order. */
  actions<K extends Action['op']>(op: K): Extract<Action, { op: K }>[] {
    return this.log.filter((a): a is Extract<Action, { op: K }> => a.op === op);
  }
}

/**
 * The default synthetic metric: a loss that is smallest for a learning rate of 0.01 and
 * falls with training, `|log10(lr at step - 1) + 2| + 1 / step` (negated when the study
 * maximises), so a trial's quality follows its `lr` schedule (forks included).
 */
export function lrMetric(study: Study): MetricFn {
  const sign = study.metric.mode === 'min' ? 1 : -1;
  return (trial, step) => {
    const lr = trial.schedules.lr;
    if (!lr) throw new Error('lrMetric needs an "lr" hyperparameter');
    const v = valueAt(lr, Math.max(0, step - 1));
    if (typeof v !== 'number') throw new Error('lrMetric needs a numeric lr');
    return sign * (Math.abs(Math.log10(v) + 2) + 1 / step);
  };
}

export interface RunOptions {
  readonly order?: Order;
  readonly metric?: MetricFn;
  /** Give up (throw) after this many metric deliveries. Default 100,000. */
  readonly maxEvents?: number;
}

export interface RunResult {
  readonly ctx: FakeContext;
  /** `finish`: the tuner called finish(); `idle`: onIdle did nothing. */
  readonly ended: 'finish' | 'idle';
}

function sortCandidates(ctx: FakeContext): Candidate[] {
  const out: Candidate[] = [];
  for (const t of ctx.trials.values()) {
    const step = t.pending[0];
    if (t.status === 'active' && step !== undefined) out.push({ trial: t, step });
  }
  return out.sort((a, b) => a.step - b.step || a.trial.n - b.trial.n);
}

/** Runs `tuner` (default: the study's) against a `FakeContext` until the study ends. */
export function runTuner(
  study: Study,
  options: RunOptions = {},
  tuner: Tuner = createTuner(study),
): RunResult {
  const ctx = new FakeContext(study);
  const metric = options.metric ?? lrMetric(study);
  const order = options.order ?? 'step';
  const pickRng = typeof order === 'object' ? createRng(order.seed) : undefined;
  const maxEvents = options.maxEvents ?? 100_000;
  let events = 0;

  tuner.start(ctx);
  while (!ctx.isFinished()) {
    const candidates = sortCandidates(ctx);
    if (candidates.length > 0) {
      if (++events > maxEvents) throw new Error(`more than ${maxEvents} metric events`);
      const index =
        order === 'step'
          ? 0
          : pickRng
            ? pickRng.int(0, candidates.length - 1)
            : (order as (c: readonly Candidate[]) => number)(candidates);
      const c = candidates[index];
      if (!c) throw new Error(`order picked candidate ${index} of ${candidates.length}`);
      const t = c.trial;
      t.pending.shift();
      t.reached = c.step;
      const value = metric(t, c.step);
      t.values.set(c.step, value);
      const paused = c.step === t.until;
      ctx.log.push({ op: 'metric', trial: t.id, step: c.step, value, paused });
      tuner.onMetric(ctx, { trial: t.id, step: c.step, value, paused });
      continue;
    }
    const before = ctx.log.length;
    ctx.log.push({ op: 'idle' });
    tuner.onIdle(ctx);
    if (ctx.isFinished()) break;
    if (ctx.log.length === before + 1) return { ctx, ended: 'idle' };
  }
  return { ctx, ended: 'finish' };
}

/** A trial's schedules as their hashes (for comparing with study configurations). */
export function scheduleHashes(
  schedules: Readonly<Record<string, Canonical>>,
): Record<string, string> {
  return Object.fromEntries(Object.entries(schedules).map(([hp, c]) => [hp, c.hash]));
}

/**
 * A study for tuner tests: `lr` log-uniform in [1e-4, 1] (best near 0.01 under
 * `lrMetric`), a fixed `momentum`, `steps` 81, loss minimised; `extra` overrides fields.
 */
export function tunerStudy(tuner: unknown, extra: Record<string, unknown> = {}): Study {
  return parseStudy({
    name: 'tuner-test',
    params: { model: 'mlp' },
    space: { lr: { loguniform: [1e-4, 1] }, momentum: 0.9 },
    steps: 81,
    tuner,
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'sim', stepSeconds: 1 },
    ...extra,
  });
}

/**
 * An order that delivers the pending reports of the listed trials first (in the listed
 * order), then the rest by step and trial id.
 */
export function preferring(ids: readonly TrialId[]): (c: readonly Candidate[]) => number {
  return (candidates) => {
    for (const id of ids) {
      const i = candidates.findIndex((c) => c.trial.id === id);
      if (i >= 0) return i;
    }
    return 0;
  };
}

/** A metric from a fixed score per trial (lower is better in a 'min' study), plus 1/step. */
export function scoreMetric(scores: Readonly<Record<TrialId, number>>, fallback = 1): MetricFn {
  return (trial, step) => (scores[trial.id] ?? fallback) + 1 / step;
}
