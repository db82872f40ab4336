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

export const TUNER_KINDS = ['grid', 'random', 'sha', 'asha', 'hyperband', 'median', 'pbt'] as const;
export type TunerKind = (typeof TUNER_KINDS)[number];

/**
 * Every configuration of the cartesian product of the domains (choice and int only).
 * With `maxConcurrent`, at most that many trials run at once (more are proposed as
 * trials finish); without it every configuration is proposed at once.
 */
export interface GridTunerSpec {
  readonly kind: 'grid';
  readonly maxConcurrent?: number;
}
/** `trials` configurations sampled from the domains with a PRNG seeded by `seed`. */
export interface RandomTunerSpec {
  readonly kind: 'random';
  readonly trials: number;
  readonly seed: number;
  /** At most this many trials running at once; absent: all proposed at once. */
  readonly maxConcurrent?: number;
}
/**
 * Synchronous successive halving: `trials` random configurations train to `minSteps`;
 * at each rung (`minSteps * eta^k`, the last one `maxSteps`) the best `1/eta` continue.
 */
export interface ShaTunerSpec {
  readonly kind: 'sha';
  readonly trials: number;
  /** Reduction factor, >= 2. Default 3. */
  readonly eta: number;
  readonly minSteps: number;
  /** Default `steps`; `minSteps <= maxSteps <= steps`. */
  readonly maxSteps: number;
  readonly seed: number;
}
/** Asynchronous successive halving: promote as soon as a trial is in its rung's top `1/eta`. */
export interface AshaTunerSpec {
  readonly kind: 'asha';
  /** How many configurations to try in all. */
  readonly trials: number;
  readonly eta: number;
  readonly minSteps: number;
  readonly maxSteps: number;
  readonly seed: number;
  /** At most this many trials running at once. Default `workers`. */
  readonly maxConcurrent: number;
}
/**
 * Hyperband: brackets of successive halving with different starting steps. `async: false`
 * runs one iteration of synchronous brackets; `async: true` runs ASHA brackets, assigning
 * new configurations to brackets round-robin, until `trials` configurations were tried.
 */
export interface HyperbandTunerSpec {
  readonly kind: 'hyperband';
  readonly eta: number;
  readonly minSteps: number;
  readonly maxSteps: number;
  readonly seed: number;
  readonly async: boolean;
  /** Async only: configurations to try in all. Absent: one iteration (the sum of the bracket sizes). */
  readonly trials?: number;
  /** Async only: at most this many trials running at once. Default `workers`. */
  readonly maxConcurrent: number;
}
/** Random search with the median stopping rule. */
export interface MedianTunerSpec {
  readonly kind: 'median';
  readonly trials: number;
  readonly seed: number;
  /** No trial is stopped before this step. Default `evalEvery`. */
  readonly graceSteps: number;
  /** A trial is compared only with at least this many others. Default 3. */
  readonly minTrials: number;
  /** Default `workers`. */
  readonly maxConcurrent: number;
}
/** Population-based training. */
export interface PbtTunerSpec {
  readonly kind: 'pbt';
  /** Members trained at once, >= 2. */
  readonly population: number;
  /** Steps between exploit/explore rounds, 1..steps. */
  readonly interval: number;
  /** Fraction of the population that is replaced each round, in (0, 0.5]. Default 0.25. */
  readonly quantile: number;
  /** Factors a numeric hyperparameter is multiplied by (one drawn uniformly). Default [0.8, 1.2]. */
  readonly perturb: readonly number[];
  /** Probability of a fresh sampled configuration instead of a perturbation. Default 0.25. */
  readonly resample: number;
  readonly seed: number;
}
export type TunerSpec =
  | GridTunerSpec
  | RandomTunerSpec
  | ShaTunerSpec
  | AshaTunerSpec
  | HyperbandTunerSpec
  | MedianTunerSpec
  | PbtTunerSpec;

export const METRIC_MODES = ['min', 'max'] as const;
export type MetricMode = (typeof METRIC_MODES)[number];

/** The metric the trainer reports and the tuner optimises. */
export interface MetricSpec {
  readonly name: string;
  readonly mode: MetricMode;
}

export const TRAINER_KINDS = ['sim', 'node', 'python'] as const;
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
  /** Multiplies `stepSeconds` by a hyperparameter's value (e.g. bigger batches: faster epochs). Default 1. */
  readonly stepScale: ByHyperparameter | null;
  /**
   * Total throughput of k stages sharing one GPU relative to one alone, for k = 1, 2, ...
   * (each runs at sharing[k-1] / k of full speed). Default [1, 1.95, 2.15, 2.3], measured
   * with ResNet-20 on an H100.
   */
  readonly sharing: readonly number[];
}
/**
 * A TypeScript / JavaScript trainer: the module (a path, relative to the study file) and
 * its export: a class implementing `Trainer` (src/trainer/types.ts) with a no-argument
 * constructor.
 */
export interface NodeTrainerSpec {
  readonly kind: 'node';
  readonly module: string;
  /** Default "default". */
  readonly export: string;
  /**
   * The trainer code's version as the user declares it (1 to 200 characters): when
   * given it identifies the trainer instead of a hash of the module file. Default null.
   */
  readonly version: string | null;
}

/** A Python trainer: `module:Class` importable from `path` (relative to the study file). */
export interface PythonTrainerSpec {
  readonly kind: 'python';
  readonly module: string;
  /** Directories added to PYTHONPATH, relative to the study file. Default []. */
  readonly path: readonly string[];
  /** The interpreter. Default "/usr/bin/python3". */
  readonly python: string;
  /** As for a node trainer: the declared version of the trainer code, or null. */
  readonly version: string | null;
}

export type TrainerSpec = SimTrainerSpec | NodeTrainerSpec | PythonTrainerSpec;

/**
 * A number that depends on a hyperparameter's value at a stage's first step:
 * `values[String(value)]`, or `default` for a value not listed.
 */
export interface ByHyperparameter {
  readonly by: string;
  readonly values: Readonly<Record<string, number>>;
  readonly default: number;
}

/** What a stage's trainer needs and what the cluster has. */
export interface ResourcesSpec {
  /**
   * GPU share of a stage: a number (0.5 = two trainers per GPU) or by a hyperparameter.
   * Every share is in (0, 1], or every share is 0: a CPU-only study (`Study.cpuOnly`).
   */
  readonly gpus: number | ByHyperparameter;
  /**
   * GPUs in the cluster. Default: enough for `workers` trainers of the default share.
   * 0 exactly when the study is CPU-only (it claims no GPU).
   */
  readonly cluster: number;
}

/**
 * A validated study. `params` and `space` keep the user's JSON, search domains included;
 * `gridConfigs` / `randomConfigs` resolve them into trial configurations.
 */
export interface Study {
  /** 1 to 100 characters from [A-Za-z0-9._-], not starting with ".": safe in a file name. */
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
  /** A safety checkpoint at least every this many steps along each path; null: none. */
  readonly checkpointEvery: number | null;
  /** Times a failed stage is retried before the trials through it fail. Default 2. */
  readonly retries: number;
  /**
   * Real runs: keep the best trial's final state as a checkpoint when the study ends
   * (every other checkpoint is deleted). Default true.
   */
  readonly keepBest: boolean;
  /**
   * Seconds one task may run on a worker before it counts as failed; null: automatic
   * (the engine derives it from measured step times, with a floor). Default null.
   */
  readonly taskTimeout: number | null;
  /**
   * Derived: the GPU share is 0 everywhere (`resources.gpus` is 0, or a table of zeros),
   * so no stage claims a GPU and `resources.cluster` is 0.
   */
  readonly cpuOnly: boolean;
}

/**
 * The number a `ByHyperparameter` (or a plain number) gives for these values. Only own
 * entries count: a value such as "constructor" or "__proto__" is looked up as data.
 */
export function lookupBy(
  spec: number | ByHyperparameter,
  values: Readonly<Record<string, unknown>>,
): number {
  if (typeof spec === 'number') return spec;
  const v = Object.hasOwn(values, spec.by) ? values[spec.by] : undefined;
  if (typeof v !== 'number' && typeof v !== 'string') return spec.default;
  const key = String(v);
  return Object.hasOwn(spec.values, key) ? (spec.values[key] as number) : spec.default;
}
