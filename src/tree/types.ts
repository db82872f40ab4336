import type { Canonical } from '../schedule/index.js';
import type { Shards } from './shards.js';

export type StageId = string;
export type TrialId = string;

/** What a caller hands the tree to add a trial. */
export interface TrialInput {
  readonly id: TrialId;
  /** Static parameters (model, dataset, seed, ...): with the hyperparameter names, the merge key. */
  readonly params: Readonly<Record<string, unknown>>;
  /** One canonical schedule per hyperparameter. */
  readonly schedules: Readonly<Record<string, Canonical>>;
  /** Train until this step (exclusive end of the last stage). */
  readonly until: number;
  /** Other steps (in [1, until)) at which a metric is wanted; `until` is always reported. */
  readonly reports?: readonly number[];
}

/** A new trial that continues `source`'s state from step `at` with new schedules from `at` on. */
export interface ForkInput {
  readonly id: TrialId;
  readonly source: TrialId;
  readonly at: number;
  /** Schedules that replace the source's from `at` on (they keep absolute time); omitted ones continue. */
  readonly schedules: Readonly<Record<string, Canonical>>;
  readonly until: number;
  readonly reports?: readonly number[];
}

export const TrialStatus = { active: 'active', stopped: 'stopped' } as const;
export type TrialStatus = (typeof TrialStatus)[keyof typeof TrialStatus];

export interface TrialRecord {
  readonly id: TrialId;
  readonly mergeKey: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly schedules: Readonly<Record<string, Canonical>>;
  /** Hyperparameter names, sorted: the order of values in stage keys. */
  readonly hps: readonly string[];
  readonly until: number;
  /** Steps with a metric report, sorted, ending with `until`. */
  readonly reports: readonly number[];
  /** Steps at which the trial's path must have a stage boundary (reports and fork steps). */
  readonly cuts: readonly number[];
  /** The stage on this trial's path whose end is `until`. */
  readonly leaf: StageId;
  readonly status: TrialStatus;
  readonly forkOf: { readonly trial: TrialId; readonly at: number } | null;
}

/**
 * A node of the stage tree: steps [start, end) during which every trial through it has
 * identical hyperparameter values. A root (start = end = 0, done) stands for the freshly
 * initialised state of one merge key.
 */
export interface Stage {
  readonly id: StageId;
  readonly mergeKey: string;
  readonly parent: StageId | null;
  readonly start: number;
  readonly end: number;
  /** A trial through this stage; its schedules give the stage's values. */
  readonly rep: TrialId;
  /**
   * Children by the JSON of their hyperparameter values at their first step (sharded:
   * a root of a random study can have a child per trial).
   */
  readonly children: Shards<StageId>;
  /** How many active trials demand this stage. */
  readonly refs: number;
  /** Trained, and its trials have seen their metrics at `end`. */
  readonly done: boolean;
  /** Trials whose `until` is `end` on this path (this is their leaf). */
  readonly ends: readonly TrialId[];
}

export interface StageTree {
  /** Root stage of each merge key. */
  readonly roots: Shards<StageId>;
  readonly stages: Shards<Stage>;
  readonly trials: Shards<TrialRecord>;
  /** Ids of ready stages: demanded, not done, parent done. */
  readonly ready: Shards<true>;
  /** `splits` counts stage splits ever made: a change tells holders of stage ids to re-resolve. */
  readonly counts: { readonly stages: number; readonly trials: number; readonly splits: number };
}
