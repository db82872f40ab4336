/**
 * Study builders: a study written in TypeScript instead of JSON. Every builder returns
 * exactly the JSON object of the study format (docs/study-format.md), with its fields in
 * the format's order (the order the grid walks), and `defineStudy` validates the whole
 * study with `parseStudy`, so a bad value throws the same `ValidationError`, naming the
 * same field path, as the same study in a file. See docs/sdk.md.
 */
import { fileURLToPath } from 'node:url';
import { ValidationError } from '../errors.js';
import { isDomain, parseStudy } from '../study/index.js';
import type { ByHyperparameter, JsonValue, MetricSpec, Study } from '../study/index.js';
import { objectFrom } from '../study/domain.js';

// ---------------------------------------------------------------------------------------
// Search domains

/**
 * A value of type `T`, or a search domain over such values: a `choice` of them, and for
 * numbers also `uniform`, `loguniform` and `int`. The format allows a domain anywhere a
 * value may stand, so every field of every builder is `Tunable`.
 */
export type Tunable<T> = T | Choice<T> | NumericDomain<T>;

/** The domains over numbers; `never` for any `T` that is not a number. */
export type NumericDomain<T> = T extends number ? Uniform | LogUniform | IntRange : never;

/** `{"choice": [...]}`: one of the options (each may hold domains itself). */
export type Choice<T> = { readonly choice: readonly Tunable<T>[] };
/** `{"uniform": [lo, hi]}`: a real number in [lo, hi], lo < hi (random tuners only). */
export type Uniform = { readonly uniform: readonly [number, number] };
/** `{"loguniform": [lo, hi]}`: log-uniform in [lo, hi], 0 < lo < hi (random tuners only). */
export type LogUniform = { readonly loguniform: readonly [number, number] };
/** `{"int": [lo, hi]}`: an integer in [lo, hi], both included; a grid takes every one. */
export type IntRange = { readonly int: readonly [number, number] };

/**
 * `{"choice": options}`. The options may be any values the place takes, domains and whole
 * schedules included; a grid tries every one in order, a random tuner picks one.
 */
export function choice<T = number>(options: readonly T[]): Choice<Produced<T>> {
  return { choice: [...options] } as Choice<Produced<T>>;
}

/**
 * The values an option stands for: a number for `uniform`, `loguniform` and `int`, the
 * options' values for a nested `choice`, the option itself otherwise (literals widened).
 */
export type Produced<T> = T extends Uniform | LogUniform | IntRange
  ? number
  : T extends Choice<infer U>
    ? U
    : T extends number
      ? number
      : T extends string
        ? string
        : T extends boolean
          ? boolean
          : T;

/** `{"uniform": [lo, hi]}`. */
export function uniform(lo: number, hi: number): Uniform {
  return { uniform: [lo, hi] };
}

/** `{"loguniform": [lo, hi]}`. */
export function loguniform(lo: number, hi: number): LogUniform {
  return { loguniform: [lo, hi] };
}

/** `{"int": [lo, hi]}`. */
export function int(lo: number, hi: number): IntRange {
  return { int: [lo, hi] };
}

// ---------------------------------------------------------------------------------------
// Builder plumbing

type AllKeys<T> = T extends unknown ? keyof T : never;

/** A definition's fields without `kind` (distributes over a union such as hyperband's). */
export type Options<D> = D extends unknown ? Omit<D, 'kind'> : never;

/** Every field of a definition but `kind`, each exactly once: the order a builder writes. */
type FieldOrder<D> = { readonly [K in Exclude<AllKeys<D>, 'kind'>]-?: true };

/** A builder's parameters: the options may be left out when every one of them is optional. */
type BuilderArgs<D> = object extends Options<D> ? [options?: Options<D>] : [options: Options<D>];

/**
 * `head`, then the given fields of `options` in `order`, then any other fields (only a
 * JavaScript caller can pass them; they are kept so that `parseStudy` rejects them by
 * name). Fields that are `undefined` are left out, as `JSON.stringify` would.
 */
function ordered(
  head: Readonly<Record<string, unknown>>,
  order: readonly string[],
  options: unknown,
): Record<string, unknown> {
  const given: Readonly<Record<string, unknown>> =
    typeof options === 'object' && options !== null ? (options as Record<string, unknown>) : {};
  const rest = Object.keys(given).filter((k) => !order.includes(k) && !Object.hasOwn(head, k));
  const keys = [...order, ...rest].filter((k) => Object.hasOwn(given, k) && given[k] !== undefined);
  return objectFrom(
    [...Object.keys(head), ...keys],
    [...Object.values(head), ...keys.map((k) => given[k])],
  );
}

/** A builder of `{kind, ...fields}` objects with the fields in the format's order. */
function builder<D extends { readonly kind: string }>(
  kind: D['kind'],
  fields: FieldOrder<D>,
): (...args: BuilderArgs<D>) => D {
  const order = Object.keys(fields);
  return (...args) => ordered({ kind }, order, args[0]) as D;
}

// ---------------------------------------------------------------------------------------
// Schedules (src/schedule/types.ts; the validated forms there, with domains allowed)

/** A constant: a number or a string (an optimizer's name). */
export type Value = number | string;

/** `value` all along. */
export type ConstantDefinition = { readonly kind: 'constant'; readonly value: Tunable<Value> };
/** `values[k]` where k is the number of boundaries <= t (one more value than boundaries). */
export type PiecewiseDefinition = {
  readonly kind: 'piecewise';
  readonly values: Tunable<readonly Tunable<Value>[]>;
  readonly boundaries: Tunable<readonly Tunable<number>[]>;
};
/** `init * factor^floor(t / every)`. */
export type StepDefinition = {
  readonly kind: 'step';
  readonly init: Tunable<number>;
  readonly factor: Tunable<number>;
  readonly every: Tunable<number>;
};
/** `init * factor^(number of milestones <= t)`; milestones strictly increasing. */
export type MultistepDefinition = {
  readonly kind: 'multistep';
  readonly init: Tunable<number>;
  readonly factor: Tunable<number>;
  readonly milestones: Tunable<readonly Tunable<number>[]>;
};
/** `init * gamma^t`, gamma > 0. */
export type ExponentialDefinition = {
  readonly kind: 'exponential';
  readonly init: Tunable<number>;
  readonly gamma: Tunable<number>;
};
/** From `max` down to `min` along half a cosine over `period` steps, then `min`. */
export type CosineDefinition = {
  readonly kind: 'cosine';
  readonly max: Tunable<number>;
  readonly min: Tunable<number>;
  readonly period: Tunable<number>;
};
/** A linear ramp from `from` to `then`'s first value over `steps` steps, then `then`. */
export type WarmupDefinition = {
  readonly kind: 'warmup';
  readonly steps: Tunable<number>;
  readonly from: Tunable<number>;
  readonly then: Tunable<ScheduleDefinition>;
};
/** Triangular cycles between `low` and `high`, `halfPeriod` steps each way. */
export type CyclicDefinition = {
  readonly kind: 'cyclic';
  readonly low: Tunable<number>;
  readonly high: Tunable<number>;
  readonly halfPeriod: Tunable<number>;
};
/** Schedules one after another: part k runs until step `until` and sees time from 0. */
export type ConcatDefinition = {
  readonly kind: 'concat';
  readonly parts: Tunable<readonly Tunable<ConcatPartDefinition>[]>;
};
/** One part of a `concat`: every part but the last has an `until`, the last has none. */
export type ConcatPartDefinition = {
  readonly until?: Tunable<number>;
  readonly schedule: Tunable<ScheduleDefinition>;
};

/** A schedule as a study file writes it: a bare number or string is a constant. */
export type ScheduleDefinition =
  | Value
  | ConstantDefinition
  | PiecewiseDefinition
  | StepDefinition
  | MultistepDefinition
  | ExponentialDefinition
  | CosineDefinition
  | WarmupDefinition
  | CyclicDefinition
  | ConcatDefinition;

/** One hyperparameter of `space`: a constant, a schedule or a search domain over them. */
export type HyperparameterDefinition = Tunable<ScheduleDefinition>;

export const constant = builder<ConstantDefinition>('constant', { value: true });
export const piecewise = builder<PiecewiseDefinition>('piecewise', {
  values: true,
  boundaries: true,
});
export const step = builder<StepDefinition>('step', { init: true, factor: true, every: true });
export const multistep = builder<MultistepDefinition>('multistep', {
  init: true,
  factor: true,
  milestones: true,
});
export const exponential = builder<ExponentialDefinition>('exponential', {
  init: true,
  gamma: true,
});
export const cosine = builder<CosineDefinition>('cosine', { max: true, min: true, period: true });
export const warmup = builder<WarmupDefinition>('warmup', { steps: true, from: true, then: true });
export const cyclic = builder<CyclicDefinition>('cyclic', {
  low: true,
  high: true,
  halfPeriod: true,
});

const concatOf = builder<ConcatDefinition>('concat', { parts: true });
const PART_ORDER = Object.keys({
  until: true,
  schedule: true,
} satisfies FieldOrder<ConcatPartDefinition>);

/**
 * `{"kind": "concat", "parts": parts}`. Each part written as a plain object gets its
 * fields in the format's order (`until`, then `schedule`), as the grid walks them.
 */
export function concat(options: Options<ConcatDefinition>): ConcatDefinition {
  const parts: unknown = (options as { parts?: unknown } | undefined)?.parts;
  const inOrder = (part: unknown): unknown =>
    typeof part === 'object' && part !== null && !Array.isArray(part) && !isDomain(part)
      ? ordered({}, PART_ORDER, part)
      : part;
  return concatOf({
    ...options,
    parts: (Array.isArray(parts) ? parts.map(inOrder) : parts) as ConcatDefinition['parts'],
  });
}

// ---------------------------------------------------------------------------------------
// Tuners (src/study/types.ts; defaults in brackets in docs/study-format.md)

export type GridTunerDefinition = { readonly kind: 'grid'; readonly maxConcurrent?: number };
export type RandomTunerDefinition = {
  readonly kind: 'random';
  readonly trials: number;
  readonly seed?: number;
  readonly maxConcurrent?: number;
};
export type ShaTunerDefinition = {
  readonly kind: 'sha';
  readonly trials: number;
  readonly eta?: number;
  readonly minSteps: number;
  readonly maxSteps?: number;
  readonly seed?: number;
};
export type AshaTunerDefinition = {
  readonly kind: 'asha';
  readonly trials: number;
  readonly eta?: number;
  readonly minSteps: number;
  readonly maxSteps?: number;
  readonly seed?: number;
  readonly maxConcurrent?: number;
};
type HyperbandFields = {
  readonly kind: 'hyperband';
  readonly eta?: number;
  readonly minSteps: number;
  readonly maxSteps?: number;
  readonly seed?: number;
};
/** Synchronous (one iteration of brackets) or `async: true`, which alone takes `trials` and `maxConcurrent`. */
export type HyperbandTunerDefinition =
  | (HyperbandFields & {
      readonly async?: false;
      readonly trials?: never;
      readonly maxConcurrent?: never;
    })
  | (HyperbandFields & {
      readonly async: true;
      readonly trials?: number;
      readonly maxConcurrent?: number;
    });
export type MedianTunerDefinition = {
  readonly kind: 'median';
  readonly trials: number;
  readonly seed?: number;
  readonly graceSteps?: number;
  readonly minTrials?: number;
  readonly maxConcurrent?: number;
};
export type PbtTunerDefinition = {
  readonly kind: 'pbt';
  readonly population: number;
  readonly interval: number;
  readonly quantile?: number;
  readonly perturb?: readonly number[];
  readonly resample?: number;
  readonly seed?: number;
};
export type TunerDefinition =
  | GridTunerDefinition
  | RandomTunerDefinition
  | ShaTunerDefinition
  | AshaTunerDefinition
  | HyperbandTunerDefinition
  | MedianTunerDefinition
  | PbtTunerDefinition;

export const grid = builder<GridTunerDefinition>('grid', { maxConcurrent: true });
export const random = builder<RandomTunerDefinition>('random', {
  trials: true,
  seed: true,
  maxConcurrent: true,
});
export const sha = builder<ShaTunerDefinition>('sha', {
  trials: true,
  eta: true,
  minSteps: true,
  maxSteps: true,
  seed: true,
});
export const asha = builder<AshaTunerDefinition>('asha', {
  trials: true,
  eta: true,
  minSteps: true,
  maxSteps: true,
  seed: true,
  maxConcurrent: true,
});
export const hyperband = builder<HyperbandTunerDefinition>('hyperband', {
  eta: true,
  minSteps: true,
  maxSteps: true,
  seed: true,
  async: true,
  trials: true,
  maxConcurrent: true,
});
export const median = builder<MedianTunerDefinition>('median', {
  trials: true,
  seed: true,
  graceSteps: true,
  minTrials: true,
  maxConcurrent: true,
});
export const pbt = builder<PbtTunerDefinition>('pbt', {
  population: true,
  interval: true,
  quantile: true,
  perturb: true,
  resample: true,
  seed: true,
});

// ---------------------------------------------------------------------------------------
// Trainers

export type SimTrainerDefinition = {
  readonly kind: 'sim';
  readonly stepSeconds: number;
  readonly startSeconds?: number;
  readonly saveSeconds?: number;
  readonly loadSeconds?: number;
  readonly stepScale?: ByHyperparameter;
  readonly sharing?: readonly number[];
};
/**
 * `module`: relative to the study file when it starts with ".", else a package name or an
 * absolute path; `export` ["default"]: a `Trainer` class with a no-argument constructor.
 */
export type NodeTrainerDefinition = {
  readonly kind: 'node';
  readonly module: string;
  readonly export?: string;
  readonly version?: string;
};
/** `module`: "package.module:Class"; `path` [[]]: PYTHONPATH dirs relative to the study file. */
export type PythonTrainerDefinition = {
  readonly kind: 'python';
  readonly module: string;
  readonly path?: readonly string[];
  readonly python?: string;
  readonly version?: string;
};
export type TrainerDefinition =
  SimTrainerDefinition | NodeTrainerDefinition | PythonTrainerDefinition;

export const simTrainer = builder<SimTrainerDefinition>('sim', {
  stepSeconds: true,
  startSeconds: true,
  saveSeconds: true,
  loadSeconds: true,
  stepScale: true,
  sharing: true,
});
export const nodeTrainer = builder<NodeTrainerDefinition>('node', {
  module: true,
  export: true,
  version: true,
});
export const pythonTrainer = builder<PythonTrainerDefinition>('python', {
  module: true,
  path: true,
  python: true,
  version: true,
});

/**
 * A node trainer from a module of the caller's own project: `moduleUrl` is a `file:` URL,
 * usually `import.meta.url` (the calling module) or `new URL('./trainer.js',
 * import.meta.url)`; the trainer's `module` is its absolute path. The worker imports that
 * file with Node: a `.js` file, or a `.ts` file when the run has a TypeScript loader
 * (`NODE_OPTIONS="--import tsx"`); see docs/sdk.md.
 */
export function trainerFrom(
  moduleUrl: string | URL,
  exportName = 'default',
  options: { readonly version?: string } = {},
): NodeTrainerDefinition {
  const href = String(moduleUrl);
  let module: string;
  try {
    module = fileURLToPath(href);
  } catch {
    throw new ValidationError(
      ['trainer', 'module'],
      'a file: URL of a module (import.meta.url)',
      href,
    );
  }
  return nodeTrainer({ module, export: exportName, ...options });
}

// ---------------------------------------------------------------------------------------
// The study

/** `resources`: the GPU share of a stage (0: CPU-only) and the number of GPUs. */
export type ResourcesDefinition = {
  readonly gpus: number | ByHyperparameter;
  readonly cluster?: number;
};

/**
 * A study as a study file writes it: the input `parseStudy` accepts (fields left out get
 * their defaults there). `params` values are any JSON, search domains included.
 */
export type StudyDefinition = {
  readonly name: string;
  readonly params?: { readonly [key: string]: JsonValue };
  readonly space: { readonly [hp: string]: HyperparameterDefinition };
  readonly steps: number;
  readonly evalEvery?: number;
  readonly tuner: TunerDefinition;
  readonly metric: MetricSpec;
  readonly trainer: TrainerDefinition;
  readonly resources?: ResourcesDefinition;
  readonly workers?: number;
  readonly checkpointEvery?: number;
  readonly keepBest?: boolean;
  readonly retries?: number;
  readonly taskTimeout?: number;
};

/**
 * A copy of a validated JSON value: objects and arrays are copied (an own "__proto__"
 * key stays a key), fields that are `undefined` are left out, as `JSON.stringify` would.
 */
function copyJson(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(copyJson);
  if (typeof value !== 'object' || value === null) return value;
  const record = value as Readonly<Record<string, unknown>>;
  const keys = Object.keys(record).filter((k) => record[k] !== undefined);
  return objectFrom(
    keys,
    keys.map((k) => copyJson(record[k])),
  );
}

/**
 * Validates a study with `parseStudy` (throws its `ValidationError`, naming the field
 * path) and returns it as the plain JSON object of the study format: a copy, so that
 * `JSON.stringify` of it is a study file the CLI runs.
 */
export function defineStudy(definition: StudyDefinition): StudyDefinition {
  parseStudy(definition);
  return copyJson(definition) as StudyDefinition;
}

/** The validated `Study`, with every default applied: `parseStudy(definition)`. */
export function toStudy(definition: StudyDefinition): Study {
  return parseStudy(definition);
}
