/**
 * The study file format, version 1: what a user writes (JSON) and what `parseStudy`
 * returns after validation, with defaults applied. See docs/study-format.md.
 */

/** A JSON value as a study file holds it. */
export type JsonValue =
  null | boolean | number | string | readonly JsonValue[] | { readonly [key: string]: JsonValue };

/** The names that make an object a search domain (when it is the object's only key). */
export const DOMAIN_KINDS = ['choice', 'uniform', 'loguniform', 'int'] as const;
export type DomainKind = (typeof DOMAIN_KINDS)[number];

/** One of the options, chosen uniformly by the random tuner; every option in a grid. */
export interface ChoiceDomain {
  readonly choice: readonly JsonValue[];
}
/** A real number in [lo, hi] (lo < hi); random tuner only. */
export interface UniformDomain {
  readonly uniform: readonly [number, number];
}
/** A real number in [lo, hi] whose logarithm is uniform (0 < lo < hi); random tuner only. */
export interface LogUniformDomain {
  readonly loguniform: readonly [number, number];
}
/** An integer in [lo, hi], both included (lo <= hi); a grid enumerates every one. */
export interface IntDomain {
  readonly int: readonly [number, number];
}
export type Domain = ChoiceDomain | UniformDomain | LogUniformDomain | IntDomain;

export const TUNER_KINDS = ['grid', 'random'] as const;
export type TunerKind = (typeof TUNER_KINDS)[number];

/** Every configuration of the cartesian product of the domains (choice and int only). */
export interface GridTunerSpec {
  readonly kind: 'grid';
}
/** `trials` configurations sampled from the domains with a PRNG seeded by `seed`. */
export interface RandomTunerSpec {
  readonly kind: 'random';
  readonly trials: number;
  readonly seed: number;
}
export type TunerSpec = GridTunerSpec | RandomTunerSpec;

export const METRIC_MODES = ['min', 'max'] as const;
export type MetricMode = (typeof METRIC_MODES)[number];

/** The metric the trainer reports and the tuner optimises. */
export interface MetricSpec {
  readonly name: string;
  readonly mode: MetricMode;
}

export const TRAINER_KINDS = ['sim'] as const;
export type TrainerKind = (typeof TRAINER_KINDS)[number];

/** A simulated trainer on a virtual clock: costs in seconds, no real training. */
export interface SimTrainerSpec {
  readonly kind: 'sim';
  /** Seconds per training step (> 0). */
  readonly stepSeconds: number;
  /** Seconds to start a trainer process (>= 0, default 0). */
  readonly startSeconds: number;
  /** Seconds to save a checkpoint (>= 0, default 0). */
  readonly saveSeconds: number;
  /** Seconds to load a checkpoint (>= 0, default 0). */
  readonly loadSeconds: number;
}
export type TrainerSpec = SimTrainerSpec;

/** What one trial's trainer needs; `gpus` may be fractional (0.5 = two trainers per GPU). */
export interface ResourcesSpec {
  readonly gpus: number;
}

/**
 * A validated study. `params` and `space` keep the user's JSON, search domains included;
 * `gridConfigs` / `randomConfigs` resolve them into trial configurations.
 */
export interface Study {
  readonly name: string;
  /** Static params (model, dataset, seed, ...): part of the merge key. Default `{}`. */
  readonly params: { readonly [key: string]: JsonValue };
  /** Hyperparameter name -> constant, schedule object or search domain (domains nest). */
  readonly space: { readonly [hp: string]: JsonValue };
  /** The most steps any trial trains. */
  readonly steps: number;
  /** Report the metric every `evalEvery` steps and at `steps`. Default `steps` (only at the end). */
  readonly evalEvery: number;
  readonly tuner: TunerSpec;
  readonly metric: MetricSpec;
  readonly trainer: TrainerSpec;
  /** Default `{ gpus: 1 }`. */
  readonly resources: ResourcesSpec;
  /** How many workers run trainers concurrently. Default 1. */
  readonly workers: number;
}
