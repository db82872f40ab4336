import { z } from 'zod';
import { formatPath, ValidationError } from '../errors.js';
import { parseSchedule } from '../schedule/index.js';
import {
  compileStudy,
  firstValue,
  checkedGridSize,
  type Path,
  templateValue,
  type TemplateNode,
} from './domain.js';
import { DOMAIN_KINDS, METRIC_MODES, TRAINER_KINDS, TUNER_KINDS } from './types.js';
import { lookupBy } from './types.js';
import type { ByHyperparameter, Study, TrainerSpec, TunerSpec } from './types.js';

/*
 * The structure is checked by a zod schema in which every node carries the phrase a user
 * reads after "expected" (`{ error: ... }`); zod issues are then turned into one
 * `ValidationError` naming the field path and the value found there. Search domains and
 * schedules are checked afterwards by hand: they may nest anywhere.
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

/** A union over `kind`. Cross-field rules (steps ranges) are checked in `checkTuner`. */
const tunerSchema = z.discriminatedUnion(
  'kind',
  [
    strict('a grid tuner', {
      kind: z.literal('grid'),
      maxConcurrent: integerFrom(1).optional(),
    }),
    strict('a random tuner', {
      kind: z.literal('random'),
      trials: integerFrom(1),
      seed: seed(),
      maxConcurrent: integerFrom(1).optional(),
    }),
    strict('a sha tuner', {
      kind: z.literal('sha'),
      trials: integerFrom(1),
      eta: eta(),
      minSteps: integerFrom(1),
      maxSteps: integerFrom(1).optional(),
      seed: seed(),
    }),
    strict('an asha tuner', {
      kind: z.literal('asha'),
      trials: integerFrom(1),
      eta: eta(),
      minSteps: integerFrom(1),
      maxSteps: integerFrom(1).optional(),
      seed: seed(),
      maxConcurrent: integerFrom(1).optional(),
    }),
    strict('a hyperband tuner', {
      kind: z.literal('hyperband'),
      eta: eta(),
      minSteps: integerFrom(1),
      maxSteps: integerFrom(1).optional(),
      seed: seed(),
      async: z.boolean(says('a boolean')).default(false),
      trials: integerFrom(1).optional(),
      maxConcurrent: integerFrom(1).optional(),
    }),
    strict('a median tuner', {
      kind: z.literal('median'),
      trials: integerFrom(1),
      seed: seed(),
      graceSteps: integerFrom(0).optional(),
      minTrials: integerFrom(1).default(3),
      maxConcurrent: integerFrom(1).optional(),
    }),
    strict('a pbt tuner', {
      kind: z.literal('pbt'),
      population: integerFrom(2),
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

/** A union over `kind`; `node` and `python` trainers come later. */
const trainerSchema = z.discriminatedUnion(
  'kind',
  [
    strict('a sim trainer', {
      kind: z.literal('sim'),
      stepSeconds: positive(),
      startSeconds: nonNegative().default(0),
      saveSeconds: nonNegative().default(0),
      loadSeconds: nonNegative().default(0),
      stepScale: byHyperparameter('a step-time scale').optional(),
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
    }),
    strict('a python trainer', {
      kind: z.literal('python'),
      module: z
        .string(says('"package.module:Class"'))
        .regex(/^[A-Za-z_][\w.]*:[A-Za-z_]\w*$/, says('"package.module:Class"')),
      path: z.array(nonEmptyString(), says('an array of directories')).default(() => []),
      python: nonEmptyString().default('/usr/bin/python3'),
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

function byHyperparameter(what: string) {
  return strict(what, {
    by: nonEmptyString(),
    values: z.record(z.string(), positive(), says('an object of value -> number > 0')),
    default: positive(),
  });
}

const resourcesSchema = strict('resources', {
  gpus: z.union([positive(), byHyperparameter('a GPU share by hyperparameter')], {
    error: 'a number > 0 (at most 1) or {by, values, default}',
  }),
  cluster: integerFrom(1).optional(),
});

const record = (what: string) => z.record(z.string(), z.unknown(), says(`an object of ${what}`));

const studySchema = strict('a study', {
  name: nonEmptyString(),
  params: record('static params').default(() => ({})),
  space: record('hyperparameters (name -> constant, schedule or search domain)'),
  steps: integerFrom(1),
  evalEvery: integerFrom(1).optional(),
  tuner: tunerSchema,
  metric: metricSchema,
  trainer: trainerSchema,
  resources: resourcesSchema.default(() => ({ gpus: 1 })),
  workers: integerFrom(1).default(1),
  checkpointEvery: integerFrom(1).optional(),
  keepBest: z.boolean(says('true or false')).default(true),
  retries: z.int(says('an integer >= 0')).min(0, says('an integer >= 0')).default(2),
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

/** One `ValidationError` for a failed parse: the first unknown field, else the first issue. */
function fromZod(error: z.ZodError, input: unknown): ValidationError {
  const issue =
    error.issues.find((i) => i.code === 'unrecognized_keys') ??
    (error.issues[0] as z.core.$ZodIssue);
  const path: (string | number)[] = issue.path.filter(
    (p): p is string | number => typeof p !== 'symbol',
  );
  if (issue.code === 'unrecognized_keys' && issue.keys[0] !== undefined) path.push(issue.keys[0]);
  const received = valueAtPath(input, path);
  const required = received === undefined && issue.code !== 'unrecognized_keys' && path.length > 0;
  return new ValidationError(
    path,
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

function toTrainer(t: z.output<typeof trainerSchema>): TrainerSpec {
  if (t.kind === 'node') return { kind: 'node', module: t.module, export: t.export };
  if (t.kind === 'python')
    return { kind: 'python', module: t.module, path: [...t.path], python: t.python };
  return {
    kind: t.kind,
    stepSeconds: t.stepSeconds,
    startSeconds: t.startSeconds,
    saveSeconds: t.saveSeconds,
    loadSeconds: t.loadSeconds,
    stepScale: t.stepScale ?? null,
    sharing: t.sharing ?? [1, 1.95, 2.15, 2.3],
  };
}

function checkShare(gpus: number | ByHyperparameter): void {
  const check = (v: number, path: (string | number)[]): void => {
    if (v > 1)
      throw new ValidationError(path, 'a GPU share in (0, 1] (one stage runs on one GPU)', v);
  };
  if (typeof gpus === 'number') check(gpus, ['resources', 'gpus']);
  else {
    check(gpus.default, ['resources', 'gpus', 'default']);
    for (const [k, v] of Object.entries(gpus.values)) check(v, ['resources', 'gpus', 'values', k]);
  }
}

/**
 * Validates a study (usually `JSON.parse` of a study file) and applies defaults. Throws a
 * `ValidationError` naming the first bad field: unknown fields, wrong types, bad search
 * domains, schedules that cannot be valid, tuner fields out of the study's range
 * (`tuner.maxSteps` > steps, `tuner.minSteps` > maxSteps, `tuner.interval` or
 * `tuner.graceSteps` > steps), and (grid tuner) continuous domains or a grid larger than
 * `MAX_GRID_CONFIGS`.
 */
export function parseStudy(json: unknown): Study {
  const parsed = studySchema.safeParse(json);
  if (!parsed.success) throw fromZod(parsed.error, json);
  const s = parsed.data;
  if (s.evalEvery !== undefined && s.evalEvery > s.steps) {
    throw new ValidationError('evalEvery', `an integer from 1 to steps (${s.steps})`, s.evalEvery);
  }
  const tuner = toTuner(s.tuner, s);
  checkShare(s.resources.gpus);
  if (Object.hasOwn(s.space, '')) {
    throw new ValidationError('space', 'non-empty hyperparameter names', s.space);
  }
  // Validates JSON values and domain shapes everywhere, copying the literal parts. It reads
  // params and space from the input: zod's copies of records drop a "__proto__" key.
  const input = json as { params?: Record<string, unknown>; space: Record<string, unknown> };
  const compiled = compileStudy({ params: input.params ?? {}, space: input.space });
  compiled.space.forEach((node, i) => {
    checkScheduleSlot(node, ['space', compiled.hps[i] as string]);
  });
  if (s.tuner.kind === 'grid') {
    checkedGridSize(compiled);
  }
  return {
    name: s.name,
    params: templateValue(compiled.params) as Study['params'],
    space: Object.fromEntries(
      compiled.hps.map((hp, i) => [hp, templateValue(compiled.space[i] as TemplateNode)]),
    ),
    steps: s.steps,
    evalEvery: s.evalEvery ?? s.steps,
    tuner,
    metric: { name: s.metric.name, mode: s.metric.mode },
    trainer: toTrainer(s.trainer),
    resources: {
      gpus: s.resources.gpus,
      cluster:
        s.resources.cluster ??
        Math.max(1, Math.ceil(s.workers * lookupBy(s.resources.gpus, {}) - 1e-9)),
    },
    workers: s.workers,
    checkpointEvery: s.checkpointEvery ?? null,
    retries: s.retries,
    keepBest: s.keepBest,
  };
}
