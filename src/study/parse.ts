import { z } from 'zod';
import { formatPath, ValidationError } from '../errors.js';
import { parseSchedule } from '../schedule/index.js';
import {
  compileStudy,
  firstValue,
  checkedGridSize,
  objectFrom,
  type Path,
  templateValue,
  type TemplateNode,
} from './domain.js';
import { checkInputShape, checkJsonBytes, STUDY_LIMITS } from './limits.js';
import { DOMAIN_KINDS, METRIC_MODES, TRAINER_KINDS, TUNER_KINDS } from './types.js';
import { lookupBy } from './types.js';
import type { ByHyperparameter, ResourcesSpec, Study, TrainerSpec, TunerSpec } from './types.js';

/*
 * First the limits that must hold before anything recurses into the input (nesting
 * depth, string sizes: `checkInputShape`). Then the structure is checked by a zod schema
 * in which every node carries the phrase a user reads after "expected" (`{ error: ... }`);
 * zod issues are turned into one `ValidationError` naming the field path and the value
 * found there. Search domains and schedules are checked afterwards by hand: they may nest
 * anywhere.
 */

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Zod params whose message is the phrase a user reads after "expected". */
const says = (phrase: string) => ({ error: phrase });

const nonEmptyString = (): z.ZodString =>
  z.string(says('a non-empty string')).min(1, says('a non-empty string'));

const integerFrom = (min: number) => {
  const phrase = `an integer >= ${min}`;
  return z.int(says(phrase)).min(min, says(phrase));
};

const integerIn = (min: number, max: number) => {
  const phrase = `an integer from ${min} to ${max}`;
  return z.int(says(phrase)).min(min, says(phrase)).max(max, says(phrase));
};

/** A number of trials (or of trials at once): 1 to `maxTrials`. */
const trialCount = () => integerIn(1, STUDY_LIMITS.maxTrials);

const positive = () => z.number(says('a number > 0')).positive(says('a number > 0'));

const nonNegative = () => z.number(says('a number >= 0')).min(0, says('a number >= 0'));

/**
 * A strict object: unknown fields are rejected, and the message lists the allowed ones.
 * `what` names the object in messages ("a random tuner").
 */
function strict<S extends z.ZodRawShape>(what: string, shape: S) {
  const allowed = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (issue) =>
      issue.code === 'unrecognized_keys'
        ? `no such field (${what} takes ${allowed})`
        : `${what} object {${allowed}}`,
  });
}

const kindOf = (kinds: readonly string[]) =>
  `one of ${kinds.map((k) => JSON.stringify(k)).join(', ')}`;

const seed = () => z.int(says('an integer')).default(0);
const eta = () => integerFrom(2).default(3);
const maxConcurrent = () => trialCount().optional();

/** A union over `kind`. Cross-field rules (steps ranges) are checked in `checkTuner`. */
const tunerSchema = z.discriminatedUnion(
  'kind',
  [
    strict('a grid tuner', {
      kind: z.literal('grid'),
      maxConcurrent: maxConcurrent(),
    }),
    strict('a random tuner', {
      kind: z.literal('random'),
      trials: trialCount(),
      seed: seed(),
      maxConcurrent: maxConcurrent(),
    }),
    strict('a sha tuner', {
      kind: z.literal('sha'),
      trials: trialCount(),
      eta: eta(),
      minSteps: integerFrom(1),
      maxSteps: integerFrom(1).optional(),
      seed: seed(),
    }),
    strict('an asha tuner', {
      kind: z.literal('asha'),
      trials: trialCount(),
      eta: eta(),
      minSteps: integerFrom(1),
      maxSteps: integerFrom(1).optional(),
      seed: seed(),
      maxConcurrent: maxConcurrent(),
    }),
    strict('a hyperband tuner', {
      kind: z.literal('hyperband'),
      eta: eta(),
      minSteps: integerFrom(1),
      maxSteps: integerFrom(1).optional(),
      seed: seed(),
      async: z.boolean(says('a boolean')).default(false),
      trials: trialCount().optional(),
      maxConcurrent: maxConcurrent(),
    }),
    strict('a median tuner', {
      kind: z.literal('median'),
      trials: trialCount(),
      seed: seed(),
      graceSteps: integerFrom(0).optional(),
      minTrials: trialCount().default(3),
      maxConcurrent: maxConcurrent(),
    }),
    strict('a pbt tuner', {
      kind: z.literal('pbt'),
      population: integerIn(2, STUDY_LIMITS.maxTrials),
      interval: integerFrom(1),
      quantile: z
        .number(says('a number in (0, 0.5]'))
        .gt(0, says('a number in (0, 0.5]'))
        .max(0.5, says('a number in (0, 0.5]'))
        .default(0.25),
      perturb: z
        .array(positive(), says('a non-empty array of numbers > 0'))
        .min(1, says('a non-empty array of numbers > 0'))
        .default(() => [0.8, 1.2]),
      resample: z
        .number(says('a number from 0 to 1'))
        .min(0, says('a number from 0 to 1'))
        .max(1, says('a number from 0 to 1'))
        .default(0.25),
      seed: seed(),
    }),
  ],
  {
    error: (issue) =>
      isRecord(issue.input) ? kindOf(TUNER_KINDS) : 'a tuner object with a "kind"',
  },
);

/** A declared trainer version: 1 to `maxVersionLength` characters. */
const version = () => {
  const phrase = `a non-empty string of at most ${STUDY_LIMITS.maxVersionLength} characters`;
  return z
    .string(says(phrase))
    .min(1, says(phrase))
    .max(STUDY_LIMITS.maxVersionLength, says(phrase))
    .optional();
};

/** A union over `kind`. */
const trainerSchema = z.discriminatedUnion(
  'kind',
  [
    strict('a sim trainer', {
      kind: z.literal('sim'),
      stepSeconds: positive(),
      startSeconds: nonNegative().default(0),
      saveSeconds: nonNegative().default(0),
      loadSeconds: nonNegative().default(0),
      stepScale: byHyperparameter('a step-time scale', positive(), 'number > 0').optional(),
      sharing: z
        .array(positive(), says('an array of throughputs (numbers > 0), starting with 1'))
        .min(1, says('an array of throughputs (numbers > 0), starting with 1'))
        .refine((a) => a[0] === 1, says('an array of throughputs (numbers > 0), starting with 1'))
        .optional(),
    }),
    strict('a node trainer', {
      kind: z.literal('node'),
      module: nonEmptyString(),
      export: nonEmptyString().default('default'),
      version: version(),
    }),
    strict('a python trainer', {
      kind: z.literal('python'),
      module: z
        .string(says('"package.module:Class"'))
        .regex(/^[A-Za-z_][\w.]*:[A-Za-z_]\w*$/, says('"package.module:Class"')),
      path: z.array(nonEmptyString(), says('an array of directories')).default(() => []),
      python: nonEmptyString().default('/usr/bin/python3'),
      version: version(),
    }),
  ],
  {
    error: (issue) =>
      isRecord(issue.input) ? kindOf(TRAINER_KINDS) : 'a trainer object with a "kind"',
  },
);

const metricSchema = strict('a metric', {
  name: nonEmptyString(),
  mode: z.enum(METRIC_MODES, says(kindOf(METRIC_MODES))),
});

/**
 * `{by, values, default}` whose numbers satisfy `value`. Zod skips a "__proto__" key of
 * `values`: `toTable` rebuilds the table from the input and checks that entry too.
 */
function byHyperparameter(what: string, value: z.ZodNumber, valuePhrase: string) {
  return strict(what, {
    by: nonEmptyString(),
    values: z.record(z.string(), value, says(`an object of value -> ${valuePhrase}`)),
    default: value,
  });
}

const resourcesSchema = strict('resources', {
  gpus: z.union(
    [
      nonNegative(),
      byHyperparameter('a GPU share by hyperparameter', nonNegative(), 'number >= 0'),
    ],
    { error: 'a GPU share in [0, 1] (0: CPU-only) or {by, values, default}' },
  ),
  cluster: integerIn(0, STUDY_LIMITS.maxClusterGpus).optional(),
});

const record = (what: string) => z.record(z.string(), z.unknown(), says(`an object of ${what}`));

const NAME_PHRASE =
  `a study name: 1 to ${STUDY_LIMITS.maxNameLength} characters from A-Z, a-z, 0-9, ` +
  '".", "_" and "-", not starting with "."';

/** Safe as a file name on every system: no separators, no "." or "..", not hidden. */
const nameSchema = z
  .string(says(NAME_PHRASE))
  .max(STUDY_LIMITS.maxNameLength, says(NAME_PHRASE))
  .regex(/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/, says(NAME_PHRASE));

const TIMEOUT_PHRASE =
  `a number of seconds from ${STUDY_LIMITS.minTaskTimeout} to ` +
  `${STUDY_LIMITS.maxTaskTimeout} (7 days)`;

const studySchema = strict('a study', {
  name: nameSchema,
  params: record('static params').default(() => ({})),
  space: record('hyperparameters (name -> constant, schedule or search domain)'),
  steps: integerIn(1, STUDY_LIMITS.maxSteps),
  evalEvery: integerFrom(1).optional(),
  tuner: tunerSchema,
  metric: metricSchema,
  trainer: trainerSchema,
  resources: resourcesSchema.default(() => ({ gpus: 1 })),
  workers: integerIn(1, STUDY_LIMITS.maxWorkers).default(1),
  checkpointEvery: integerIn(1, STUDY_LIMITS.maxSteps).optional(),
  keepBest: z.boolean(says('true or false')).default(true),
  retries: integerIn(0, STUDY_LIMITS.maxRetries).default(2),
  taskTimeout: z
    .number(says(TIMEOUT_PHRASE))
    .min(STUDY_LIMITS.minTaskTimeout, says(TIMEOUT_PHRASE))
    .max(STUDY_LIMITS.maxTaskTimeout, says(TIMEOUT_PHRASE))
    .optional(),
});

/** The value found at `path` in `input` (undefined where there is none). */
function valueAtPath(input: unknown, path: Path): unknown {
  let at: unknown = input;
  for (const part of path) {
    if (Array.isArray(at) && typeof part === 'number') at = at[part];
    else if (isRecord(at) && typeof part === 'string' && Object.hasOwn(at, part)) at = at[part];
    else return undefined;
  }
  return at;
}

/**
 * One `ValidationError` for a failed parse: the first unknown field, else the first issue.
 * `at` is the path of `input` in the study (empty for the study itself).
 */
function fromZod(error: z.ZodError, input: unknown, at: Path = []): ValidationError {
  const issue =
    error.issues.find((i) => i.code === 'unrecognized_keys') ??
    (error.issues[0] as z.core.$ZodIssue);
  const path: (string | number)[] = issue.path.filter(
    (p): p is string | number => typeof p !== 'symbol',
  );
  if (issue.code === 'unrecognized_keys' && issue.keys[0] !== undefined) path.push(issue.keys[0]);
  const received = valueAtPath(input, path);
  const full = [...at, ...path];
  const required = received === undefined && issue.code !== 'unrecognized_keys' && full.length > 0;
  return new ValidationError(
    full,
    required ? `${issue.message} (field is required)` : issue.message,
    received,
  );
}

/** Finds the value whose formatted path is `target` (a path a `ValidationError` names). */
function findByPath(value: unknown, path: Path, target: string): unknown {
  const here = formatPath(path);
  if (here === target) return value;
  if (!target.startsWith(here)) return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findByPath(value[i], [...path, i], target);
      if (found !== undefined) return found;
    }
  } else if (isRecord(value)) {
    for (const key of Object.keys(value)) {
      const found = findByPath(value[key], [...path, key], target);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

const isDomainKind = (k: string): boolean => (DOMAIN_KINDS as readonly string[]).includes(k);

const SPACE_VALUE =
  'a number, a string, a schedule object with a "kind" or a search domain ' +
  `(an object with one key: ${DOMAIN_KINDS.join(', ')})`;

/**
 * Checks what can be checked of one hyperparameter before any configuration exists:
 * a schedule without domains is parsed as it is; each option of a choice standing for a
 * whole schedule is checked on its own; a schedule with domains inside is parsed with
 * every domain at its first value (first option, lower bound): a configuration both
 * tuners can produce, so an error there is an error in the study.
 */
function checkScheduleSlot(node: TemplateNode, path: Path): void {
  switch (node.t) {
    case 'lit': {
      const v = node.value;
      if (typeof v !== 'number' && typeof v !== 'string' && !isRecord(v)) {
        throw new ValidationError(path, SPACE_VALUE, v);
      }
      if (isRecord(v) && !('kind' in v) && Object.keys(v).some((k) => isDomainKind(k))) {
        throw new ValidationError(
          path,
          `a search domain (an object with exactly one key: ${DOMAIN_KINDS.join(', ')}) ` +
            'or a schedule object with a "kind"',
          v,
        );
      }
      parseSchedule(v, path);
      return;
    }
    case 'choice':
      node.options.forEach((option, i) => {
        checkScheduleSlot(option, [...node.path, 'choice', i]);
      });
      return;
    case 'int':
    case 'uniform':
    case 'loguniform':
      return; // a number: a constant schedule
    case 'arr':
      throw new ValidationError(path, SPACE_VALUE, templateValue(node));
    case 'obj': {
      const first = firstValue(node);
      try {
        parseSchedule(first, path);
      } catch (e) {
        if (!(e instanceof ValidationError)) throw e;
        throw new ValidationError(
          e.path,
          `${e.expected}, with every search domain at its first value`,
          findByPath(first, path, e.path),
        );
      }
    }
  }
}

type TunerInput = z.output<typeof tunerSchema>;
type StudyInput = z.output<typeof studySchema>;

/** `maxSteps` (default `steps`) after checking minSteps <= maxSteps <= steps. */
function stepRange(t: { minSteps: number; maxSteps?: number | undefined }, steps: number): number {
  const maxSteps = t.maxSteps ?? steps;
  if (maxSteps > steps) {
    throw new ValidationError(
      'tuner.maxSteps',
      `an integer from minSteps (${t.minSteps}) to steps (${steps})`,
      maxSteps,
    );
  }
  if (t.minSteps > maxSteps) {
    const max = t.maxSteps === undefined ? `steps (${steps})` : `maxSteps (${maxSteps})`;
    throw new ValidationError('tuner.minSteps', `an integer from 1 to ${max}`, t.minSteps);
  }
  return maxSteps;
}

/**
 * Configurations one hyperband iteration starts: the sum over its brackets s = s_max..0
 * of ceil((s_max + 1) / (s + 1) * eta^s), as `hyperbandBrackets` (src/tuner/) computes
 * them. Exact: eta^s <= maxSteps / minSteps <= `maxSteps`, far below 2^53.
 */
export function hyperbandIterationSize(eta: number, minSteps: number, maxSteps: number): number {
  let sMax = 0;
  while (minSteps * eta ** (sMax + 1) <= maxSteps) sMax++;
  let total = 0;
  for (let s = sMax; s >= 0; s--) total += Math.floor(((sMax + 1) * eta ** s + s) / (s + 1));
  return total;
}

/** Rejects a hyperband whose one iteration would start more than `maxTrials` configurations. */
function checkHyperbandSize(eta: number, minSteps: number, maxSteps: number): void {
  const size = hyperbandIterationSize(eta, minSteps, maxSteps);
  if (size > STUDY_LIMITS.maxTrials) {
    throw new ValidationError(
      'tuner',
      `a hyperband iteration of at most ${STUDY_LIMITS.maxTrials} configurations ` +
        '(the trial limit; its brackets start more: raise minSteps or eta, or lower maxSteps)',
      size,
    );
  }
}

/** Checks the rules that relate tuner fields to the study, and applies study-dependent defaults. */
function toTuner(t: TunerInput, s: StudyInput): TunerSpec {
  const evalEvery = s.evalEvery ?? s.steps;
  const concurrency = (m: number | undefined) => (m === undefined ? {} : { maxConcurrent: m });
  switch (t.kind) {
    case 'grid':
      return { kind: 'grid', ...concurrency(t.maxConcurrent) };
    case 'random':
      return { kind: 'random', trials: t.trials, seed: t.seed, ...concurrency(t.maxConcurrent) };
    case 'sha': {
      const maxSteps = stepRange(t, s.steps);
      return {
        kind: 'sha',
        trials: t.trials,
        eta: t.eta,
        minSteps: t.minSteps,
        maxSteps,
        seed: t.seed,
      };
    }
    case 'asha': {
      const maxSteps = stepRange(t, s.steps);
      return {
        kind: 'asha',
        trials: t.trials,
        eta: t.eta,
        minSteps: t.minSteps,
        maxSteps,
        seed: t.seed,
        maxConcurrent: t.maxConcurrent ?? s.workers,
      };
    }
    case 'hyperband': {
      const maxSteps = stepRange(t, s.steps);
      if (!t.async) {
        const only =
          'with "async": true (a synchronous hyperband runs one iteration of its brackets)';
        if (t.trials !== undefined) {
          throw new ValidationError('tuner.trials', `no trials budget, except ${only}`, t.trials);
        }
        if (t.maxConcurrent !== undefined) {
          throw new ValidationError(
            'tuner.maxConcurrent',
            `no maxConcurrent, except ${only}`,
            t.maxConcurrent,
          );
        }
      }
      // Without a trials budget the tuner runs one iteration: bound its size.
      if (t.trials === undefined) checkHyperbandSize(t.eta, t.minSteps, maxSteps);
      return {
        kind: 'hyperband',
        eta: t.eta,
        minSteps: t.minSteps,
        maxSteps,
        seed: t.seed,
        async: t.async,
        ...(t.trials === undefined ? {} : { trials: t.trials }),
        maxConcurrent: t.maxConcurrent ?? s.workers,
      };
    }
    case 'median':
      if (t.graceSteps !== undefined && t.graceSteps > s.steps) {
        throw new ValidationError(
          'tuner.graceSteps',
          `an integer from 0 to steps (${s.steps})`,
          t.graceSteps,
        );
      }
      return {
        kind: 'median',
        trials: t.trials,
        seed: t.seed,
        graceSteps: t.graceSteps ?? evalEvery,
        minTrials: t.minTrials,
        maxConcurrent: t.maxConcurrent ?? s.workers,
      };
    case 'pbt':
      if (t.interval > s.steps) {
        throw new ValidationError(
          'tuner.interval',
          `an integer from 1 to steps (${s.steps})`,
          t.interval,
        );
      }
      return {
        kind: 'pbt',
        population: t.population,
        interval: t.interval,
        quantile: t.quantile,
        perturb: [...t.perturb],
        resample: t.resample,
        seed: t.seed,
      };
  }
}

function toTrainer(t: z.output<typeof trainerSchema>, json: unknown): TrainerSpec {
  switch (t.kind) {
    case 'node':
      return { kind: 'node', module: t.module, export: t.export, version: t.version ?? null };
    case 'python':
      return {
        kind: 'python',
        module: t.module,
        path: [...t.path],
        python: t.python,
        version: t.version ?? null,
      };
    case 'sim':
      return {
        kind: t.kind,
        stepSeconds: t.stepSeconds,
        startSeconds: t.startSeconds,
        saveSeconds: t.saveSeconds,
        loadSeconds: t.loadSeconds,
        stepScale: t.stepScale
          ? toTable(t.stepScale, json, ['trainer', 'stepScale'], positive())
          : null,
        sharing: t.sharing ?? [1, 1.95, 2.15, 2.3],
      };
  }
}

/**
 * A by-hyperparameter table as `lookupBy` reads it, its `values` rebuilt from the input
 * (`json`, the table at `path`): zod neither checks nor copies a "__proto__" entry, which
 * is data here (a hyperparameter may take the value "__proto__"); it is checked against
 * `value` like the others.
 */
function toTable(t: ByHyperparameter, json: unknown, path: Path, value: z.ZodNumber) {
  const given = valueAtPath(json, [...path, 'values']);
  const source: Readonly<Record<string, unknown>> = isRecord(given) ? given : t.values;
  const keys = Object.keys(source);
  const numbers = keys.map((k) => {
    const v = source[k];
    if (!Object.hasOwn(t.values, k)) {
      const checked = value.safeParse(v);
      if (!checked.success) throw fromZod(checked.error, v, [...path, 'values', k]);
    }
    return v as number;
  });
  const values = objectFrom(keys, numbers) as Record<string, number>;
  return { by: t.by, values, default: t.default } satisfies ByHyperparameter;
}

/** Every GPU share a `resources.gpus` names, with its path. */
function sharesOf(gpus: number | ByHyperparameter): { share: number; path: Path }[] {
  const at = ['resources', 'gpus'];
  if (typeof gpus === 'number') return [{ share: gpus, path: at }];
  return [
    { share: gpus.default, path: [...at, 'default'] },
    ...Object.keys(gpus.values).map((k) => ({
      share: gpus.values[k] as number,
      path: [...at, 'values', k],
    })),
  ];
}

/**
 * Checks the GPU shares: each in [0, 1], and either all 0 (a CPU-only study) or none.
 * Returns whether the study is CPU-only.
 */
function checkShares(gpus: number | ByHyperparameter): boolean {
  const shares = sharesOf(gpus);
  for (const { share, path } of shares) {
    if (share > 1) {
      throw new ValidationError(path, 'a GPU share in (0, 1] (one stage runs on one GPU)', share);
    }
  }
  if (shares.every((s) => s.share === 0)) return true;
  const zero = shares.find((s) => s.share === 0);
  if (zero) {
    throw new ValidationError(
      zero.path,
      'a GPU share in (0, 1] like the others (0, CPU-only, only when every share is 0: ' +
        'a stage cannot claim no GPU while another claims one)',
      zero.share,
    );
  }
  return false;
}

/**
 * The resources with defaults applied, and whether the study is CPU-only. A CPU-only
 * study claims no GPU: its cluster is 0 (a `cluster` above 0 contradicts it). Otherwise
 * the cluster is at least 1, by default enough GPUs for `workers` trainers of the
 * default share.
 */
function toResources(s: StudyInput, json: unknown): { resources: ResourcesSpec; cpuOnly: boolean } {
  const g = s.resources.gpus;
  const gpus = typeof g === 'number' ? g : toTable(g, json, ['resources', 'gpus'], nonNegative());
  const cpuOnly = checkShares(gpus);
  const cluster = s.resources.cluster;
  if (cpuOnly) {
    if (cluster !== undefined && cluster !== 0) {
      throw new ValidationError(
        ['resources', 'cluster'],
        'no cluster, or 0: a CPU-only study (every GPU share 0) claims no GPU',
        cluster,
      );
    }
    return { resources: { gpus, cluster: 0 }, cpuOnly };
  }
  if (cluster === 0) {
    throw new ValidationError(
      ['resources', 'cluster'],
      `an integer from 1 to ${STUDY_LIMITS.maxClusterGpus} (0 only for a CPU-only study, gpus 0)`,
      cluster,
    );
  }
  const byDefault = Math.max(1, Math.ceil(s.workers * lookupBy(gpus, {}) - 1e-9));
  return { resources: { gpus, cluster: cluster ?? byDefault }, cpuOnly };
}

/** Checks evalEvery against steps: at most `steps`, and at most `maxReports` reports. */
function checkEvalEvery(s: StudyInput): void {
  if (s.evalEvery === undefined) return;
  const least = Math.ceil(s.steps / STUDY_LIMITS.maxReports);
  if (s.evalEvery > s.steps || s.evalEvery < least) {
    const reports =
      least > 1 ? ` (at most ${STUDY_LIMITS.maxReports} metric reports per trial)` : '';
    throw new ValidationError(
      'evalEvery',
      `an integer from ${least} to steps (${s.steps})${reports}`,
      s.evalEvery,
    );
  }
}

/** Rejects more hyperparameters than `maxHyperparameters` (before compiling any). */
function checkHyperparameterCount(space: Readonly<Record<string, unknown>>): void {
  const count = Object.keys(space).length;
  if (count > STUDY_LIMITS.maxHyperparameters) {
    throw new ValidationError(
      'space',
      `at most ${STUDY_LIMITS.maxHyperparameters} hyperparameters`,
      count,
    );
  }
  if (Object.hasOwn(space, '')) {
    throw new ValidationError('space', 'non-empty hyperparameter names', space);
  }
}

/**
 * Validates a study (usually `JSON.parse` of a study file) and applies defaults. Throws a
 * `ValidationError` naming the first bad field: values nested too deep and strings too
 * long (before anything else: see `STUDY_LIMITS`), unknown fields, wrong types, values
 * beyond a limit, a bad name, GPU shares mixing 0 and more, bad search domains, schedules
 * that cannot be valid, tuner fields out of the study's range (`tuner.maxSteps` > steps,
 * `tuner.minSteps` > maxSteps, `tuner.interval` or `tuner.graceSteps` > steps), a
 * hyperband iteration larger than the trial limit, and (grid tuner) continuous domains or
 * a grid larger than `MAX_GRID_CONFIGS` (counted, not expanded). Never throws anything
 * else for any input.
 */
export function parseStudy(json: unknown): Study {
  checkInputShape(json);
  const parsed = studySchema.safeParse(json);
  if (!parsed.success) throw fromZod(parsed.error, json);
  const s = parsed.data;
  checkEvalEvery(s);
  const tuner = toTuner(s.tuner, s);
  const trainer = toTrainer(s.trainer, json);
  const { resources, cpuOnly } = toResources(s, json);
  // Validates JSON values and domain shapes everywhere, copying the literal parts. It reads
  // params and space from the input: zod's copies of records drop a "__proto__" key.
  const input = json as { params?: Record<string, unknown>; space: Record<string, unknown> };
  checkHyperparameterCount(input.space);
  const compiled = compileStudy({ params: input.params ?? {}, space: input.space });
  const params = templateValue(compiled.params) as Study['params'];
  checkJsonBytes(params, ['params'], STUDY_LIMITS.maxParamsBytes, 'params');
  const space = objectFrom(
    compiled.hps,
    compiled.space.map((node) => templateValue(node)),
  ) as Study['space'];
  checkJsonBytes(space, ['space'], STUDY_LIMITS.maxSpaceBytes, 'a space');
  compiled.space.forEach((node, i) => {
    checkScheduleSlot(node, ['space', compiled.hps[i] as string]);
  });
  if (s.tuner.kind === 'grid') {
    checkedGridSize(compiled);
  }
  return {
    name: s.name,
    params,
    space,
    steps: s.steps,
    evalEvery: s.evalEvery ?? s.steps,
    tuner,
    metric: { name: s.metric.name, mode: s.metric.mode },
    trainer,
    resources,
    workers: s.workers,
    checkpointEvery: s.checkpointEvery ?? null,
    retries: s.retries,
    keepBest: s.keepBest,
    taskTimeout: s.taskTimeout ?? null,
    cpuOnly,
  };
}

/** An excerpt of a text for an error message: its first 40 characters. */
function excerpt(text: string): string {
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}

/**
 * Parses the text of a study file: strips one leading UTF-8 byte order mark (U+FEFF),
 * parses the JSON (invalid JSON is a `ValidationError` at "(root)" with the parser's
 * message) and validates the result with `parseStudy`.
 */
export function parseStudyText(text: string): Study {
  if (typeof text !== 'string') {
    throw new ValidationError([], 'the text of a study file (a string)', text);
  }
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    throw new ValidationError([], `valid JSON (${message})`, excerpt(body));
  }
  return parseStudy(json);
}
