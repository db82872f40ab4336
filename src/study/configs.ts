import { ValidationError } from '../errors.js';
import { canonicalize, parseSchedule } from '../schedule/index.js';
import type { Canonical, Schedule } from '../schedule/index.js';
import {
  cartesian,
  checkedGridSize,
  compileStudy,
  gridValues,
  objectFrom,
  sampleValue,
  type CompiledStudy,
  type Path,
} from './domain.js';
import { STUDY_LIMITS } from './limits.js';
import { createRng } from './rng.js';
import type { Rng } from './rng.js';
import type { JsonValue, Study } from './types.js';

/** One configuration of a study: its static params and one schedule per hyperparameter. */
export interface TrialConfig {
  /** Position in the list returned by `gridConfigs` / `randomConfigs`, from 0. */
  readonly index: number;
  /** Static params with every domain resolved (the merge key). */
  readonly params: Readonly<Record<string, unknown>>;
  /** `parseSchedule(value, ['space', hp])` of each hyperparameter's resolved value. */
  readonly schedules: Readonly<Record<string, Schedule>>;
  /** `canonicalize(schedules[hp])`; equal schedules share one object across trials. */
  readonly canonical: Readonly<Record<string, Canonical>>;
}

interface Parsed {
  readonly schedule: Schedule;
  readonly canonical: Canonical;
}

/**
 * Parses and canonicalises each distinct schedule once, keyed by its JSON text, and shares
 * one `Canonical` per hash. The JSON key is `JSON.stringify` rather than a key-sorting stringify: values resolved
 * from one template have their keys in one order, so equal values get equal keys where it
 * matters, at a fraction of the cost; equal values written in different key orders only
 * cost a second parse and still share their `Canonical` through the hash.
 */
class ScheduleCache {
  private readonly byJson = new Map<string, Parsed>();
  private readonly byHash = new Map<string, Canonical>();

  get(value: JsonValue, path: Path): Parsed {
    const key =
      typeof value === 'number'
        ? `n${value}`
        : typeof value === 'string'
          ? `s${value}`
          : JSON.stringify(value);
    let parsed = this.byJson.get(key);
    if (!parsed) {
      const schedule = parseSchedule(value, path);
      const fresh = canonicalize(schedule);
      let canonical = this.byHash.get(fresh.hash);
      if (!canonical) {
        canonical = fresh;
        this.byHash.set(fresh.hash, fresh);
      }
      parsed = { schedule, canonical };
      this.byJson.set(key, parsed);
    }
    return parsed;
  }
}

function makeConfig(
  index: number,
  params: unknown,
  hps: readonly string[],
  parsed: readonly Parsed[],
): TrialConfig {
  return {
    index,
    params: params as Record<string, unknown>,
    schedules: objectFrom(
      hps,
      parsed.map((p) => p.schedule),
    ) as Record<string, Schedule>,
    canonical: objectFrom(
      hps,
      parsed.map((p) => p.canonical),
    ) as Record<string, Canonical>,
  };
}

/**
 * Every configuration of the study: the cartesian product of every `choice` (nested ones
 * expanded in place) and every `int` range, over params and then each hyperparameter.
 * Order: params before space, JSON key order within each, array items in order, choice
 * options as listed, int ranges from lo to hi; the last varies fastest. Throws a
 * `ValidationError` for `uniform` / `loguniform`, for a grid of more than
 * `MAX_GRID_CONFIGS` configurations (before enumerating), and for a configuration whose
 * schedule is invalid.
 */
export function gridConfigs(study: Study): TrialConfig[] {
  const c = compileStudy(study);
  checkedGridSize(c);
  const cache = new ScheduleCache();
  const paramsList = gridValues(c.params);
  const hpLists = c.space.map((node, i) => {
    const path = ['space', c.hps[i] as string];
    return gridValues(node).map((value) => cache.get(value, path));
  });
  return cartesian([paramsList, ...hpLists], (picks, index) =>
    makeConfig(index, picks[0], c.hps, picks.slice(1) as Parsed[]),
  );
}

/** Draws configurations of one study; holds the compiled templates and the schedule cache. */
class Sampler {
  private readonly c: CompiledStudy;
  private readonly cache = new ScheduleCache();
  private readonly paths: readonly Path[];
  /** Hyperparameters without domains are the same in every trial: parsed once. */
  private readonly fixed: readonly (Parsed | undefined)[];

  constructor(study: Study) {
    this.c = compileStudy(study);
    this.paths = this.c.hps.map((hp) => ['space', hp] as const);
    this.fixed = this.c.space.map((node, i) =>
      node.t === 'lit' ? this.cache.get(node.value, this.paths[i] as Path) : undefined,
    );
  }

  sample(rng: Rng, index: number): TrialConfig {
    const params = sampleValue(this.c.params, rng);
    const parsed = this.c.space.map(
      (node, i) => this.fixed[i] ?? this.cache.get(sampleValue(node, rng), this.paths[i] as Path),
    );
    return makeConfig(index, params, this.c.hps, parsed);
  }
}

/** One sampler per study object, so that drawing one configuration at a time stays cheap. */
const samplers = new WeakMap<Study, Sampler>();

function samplerOf(study: Study): Sampler {
  let sampler = samplers.get(study);
  if (!sampler) {
    sampler = new Sampler(study);
    samplers.set(study, sampler);
  }
  return sampler;
}

/**
 * One configuration sampled from the study's domains with `rng` (the draws of
 * `randomConfigs`, one configuration's worth): params, then each hyperparameter,
 * depth-first in key order. `index` becomes the config's `index`. Tuners call it with
 * their context's generator to draw configurations one at a time; drawing n of them from
 * `createRng(seed)` gives exactly `randomConfigs(study, n, seed)`. Schedules are parsed
 * and canonicalised once per distinct value for each study object (the cache lives as
 * long as the study). Throws a `ValidationError` if a sampled schedule is invalid.
 */
export function sampleConfig(study: Study, rng: Rng, index: number): TrialConfig {
  return samplerOf(study).sample(rng, index);
}

/**
 * `trials` configurations sampled from the study's domains with `createRng(seed)`:
 * choice uniformly among its options (then inside the chosen one), uniform and
 * loguniform in [lo, hi], int uniformly in [lo, hi] inclusive. Each trial samples params
 * and then each hyperparameter, depth-first in key order, so the same seed gives the
 * same configurations and asking for more trials extends the list. Throws a
 * `ValidationError` if a sampled schedule is invalid, and for more trials than
 * `STUDY_LIMITS.maxTrials` (before sampling any).
 */
export function randomConfigs(study: Study, trials: number, seed: number): TrialConfig[] {
  const max = STUDY_LIMITS.maxTrials;
  if (!Number.isSafeInteger(trials) || trials < 0 || trials > max) {
    throw new ValidationError('trials', `an integer from 0 to ${max}`, trials);
  }
  const rng = createRng(seed);
  const sampler = new Sampler(study);
  const out: TrialConfig[] = [];
  for (let index = 0; index < trials; index++) out.push(sampler.sample(rng, index));
  return out;
}
