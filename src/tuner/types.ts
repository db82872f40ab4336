import type { Canonical } from '../schedule/index.js';
import type { Rng, Study } from '../study/index.js';
import type { TrialId, TrialInput } from '../tree/index.js';

/**
 * The tuner side of a study: search algorithms and early stopping as pure logic. A tuner
 * never sees workers, stages or clocks; it proposes trials, extends or stops them, forks
 * new ones from existing state, and reacts to metrics. The engine calls it and applies
 * what it asks through a `TunerContext`. Everything a tuner decides depends only on the
 * events it was given (in order) and its seeded random generator, so a study replays.
 */

/** A trial as a tuner proposes it: a stage-tree trial without its id (the engine assigns it). */
export type TrialSpec = Omit<TrialInput, 'id'>;

/** A trial reached a report step: the study's metric there. */
export interface MetricEvent {
  readonly trial: TrialId;
  readonly step: number;
  /** The study's metric (`study.metric.name`) at `step`. */
  readonly value: number;
  /** True when `step` is the trial's current `until`: it is paused until extended or stopped. */
  readonly paused: boolean;
}

/** What a tuner may ask of the engine. Every call takes effect at once. */
export interface TunerContext {
  /** The study (read-only): its space, steps, evalEvery, metric and tuner settings. */
  readonly study: Study;
  /** The study's seeded generator; the only source of randomness a tuner may use. */
  readonly rng: Rng;
  /** Adds a trial; returns its id (ids are assigned in proposal order: t1, t2, ...). */
  propose(spec: TrialSpec): TrialId;
  /** Extends an active trial's demand to `until` (> its current until), reporting there and at `reports`. */
  extend(trial: TrialId, until: number, reports?: readonly number[]): void;
  /** Withdraws a trial's demand; its unshared work is cancelled. No metric events follow. */
  stop(trial: TrialId): void;
  /**
   * Adds a trial that continues `source`'s state at step `at` (<= source's until) with
   * `schedules` (absolute time) replacing the source's from `at` on. Returns its id.
   */
  fork(
    source: TrialId,
    at: number,
    schedules: Readonly<Record<string, Canonical>>,
    until: number,
    reports?: readonly number[],
  ): TrialId;
  /** Ends the study: stops every active trial; the engine ignores the tuner from then on. */
  finish(): void;
  /** Trials that are active and have not reached their `until` yet. */
  running(): number;
}

export interface Tuner {
  /** Called once, first: propose the initial trials. */
  start(ctx: TunerContext): void;
  /**
   * A metric report. Events for trials that share a stage end arrive in trial-id order;
   * a tuner sees every report of every trial it did not stop.
   */
  onMetric(ctx: TunerContext, event: MetricEvent): void;
  /**
   * Nothing is running or ready (every active trial is paused or done). Propose, extend
   * or finish; doing nothing ends the study.
   */
  onIdle(ctx: TunerContext): void;
  /**
   * Optional: the engine stopped `trial` because a stage of it failed more than the
   * study's `retries` allow; no metric of it follows. Tuners that wait for every trial
   * of a rung or generation must stop waiting for it.
   */
  onTrialFailed?(ctx: TunerContext, trial: TrialId, message: string): void;
}

/** Better-than for the study's metric mode. */
export function isBetter(mode: 'min' | 'max', a: number, b: number): boolean {
  return mode === 'max' ? a > b : a < b;
}
