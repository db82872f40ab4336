import { ValidationError } from '../errors.js';

/**
 * Upper bounds on what a study may ask for. A study file is hostile input: these keep
 * validating and expanding any study fast and small, and every one is checked before the
 * work it bounds is done (a grid is counted, never expanded, to be rejected). See
 * docs/study-format.md, "Limits".
 */
export const STUDY_LIMITS = {
  /**
   * Trials of one study: every tuner's `trials`, a pbt `population`, the configurations
   * of a grid and of one hyperband iteration.
   */
  maxTrials: 100_000,
  /** `steps`: the most steps any trial trains. */
  maxSteps: 1_000_000_000,
  /** Metric reports of one trial, `ceil(steps / evalEvery)`. */
  maxReports: 100_000,
  /** `retries`: times a failed stage is retried. */
  maxRetries: 100,
  /** `workers`: trainers alive at once. */
  maxWorkers: 1024,
  /** `resources.cluster`: GPUs in the cluster. */
  maxClusterGpus: 1024,
  /**
   * Nesting depth of one value (a param, a hyperparameter, any other field): each object
   * (a search domain, a schedule, a concat part, ...) is one level, and so is an array
   * that is not an object's field (an array inside an array, or the value itself).
   */
  maxDepth: 32,
  /** `params` serialised as JSON, in bytes (UTF-8). */
  maxParamsBytes: 1_048_576,
  /** `space` serialised as JSON, in bytes (UTF-8). */
  maxSpaceBytes: 1_048_576,
  /** Any one string or object key, in bytes (UTF-8). */
  maxStringBytes: 65_536,
  /** Hyperparameters in `space`. */
  maxHyperparameters: 256,
  /** Options of one `choice` domain. */
  maxChoiceOptions: 10_000,
  /** Characters of `name`. */
  maxNameLength: 100,
  /** Characters of `trainer.version`. */
  maxVersionLength: 200,
  /** `taskTimeout`, in seconds: from 1 s to 7 days. */
  minTaskTimeout: 1,
  maxTaskTimeout: 604_800,
} as const;

type Path = readonly (string | number)[];

/** One value still to visit in `checkValue`: where it is and how deep. */
interface Frame {
  readonly value: unknown;
  /** Levels above it (objects, and arrays not directly an object's field). */
  readonly depth: number;
  /** Whether it is an object's field (an array there adds no level of its own). */
  readonly inObject: boolean;
  readonly parent: Frame | null;
  readonly key: string | number | null;
}

function pathOf(frame: Frame | null, at: Path): (string | number)[] {
  const keys: (string | number)[] = [];
  for (let f = frame; f !== null; f = f.parent) if (f.key !== null) keys.push(f.key);
  return [...at, ...keys.reverse()];
}

/** The depth `value` adds as an object's field (`inObject`) or not. */
function levelOf(value: object, inObject: boolean): number {
  return Array.isArray(value) && inObject ? 0 : 1;
}

/**
 * How deep the chain of first nested containers below `value` goes, from `depth`: the
 * depth a too-deep value is reported with. Bounded, so that a cyclic object (possible
 * from a programmatic caller, never from JSON) still ends.
 */
function chainDepth(value: object, depth: number, inObject: boolean): number {
  let v: object = value;
  let d = depth;
  let inObj = inObject;
  for (let i = 0; i < 1_000_000; i++) {
    d += levelOf(v, inObj);
    const children: unknown[] = Array.isArray(v) ? v : Object.values(v);
    const next = children.find((c): c is object => typeof c === 'object' && c !== null);
    if (next === undefined) break;
    inObj = !Array.isArray(v);
    v = next;
  }
  return d;
}

/** A string's size in bytes (UTF-8), computed only when it may exceed `max`. */
function exceedsBytes(s: string, max: number): number | null {
  // A UTF-16 code unit takes 1 to 3 bytes in UTF-8 (a surrogate pair 4 for 2 units).
  if (s.length * 3 <= max) return null;
  const bytes = Buffer.byteLength(s, 'utf8');
  return bytes > max ? bytes : null;
}

/** Rejects a string (or, `key`, an object key) larger than `maxStringBytes`. */
function checkString(s: string, path: Path, key: boolean): void {
  const max = STUDY_LIMITS.maxStringBytes;
  const bytes = exceedsBytes(s, max);
  if (bytes === null) return;
  // A key is reported at its object's path: the path must not hold the key itself.
  const what = key ? 'object keys' : 'a string';
  throw new ValidationError(path, `${what} of at most ${max} bytes (UTF-8)`, bytes);
}

/**
 * Checks one value without recursion: nesting depth at most `maxDepth` and strings
 * (values and keys) at most `maxStringBytes`. `at` is the value's path in the study.
 */
function checkValue(root: unknown, at: Path): void {
  const stack: Frame[] = [{ value: root, depth: 0, inObject: false, parent: null, key: null }];
  for (let f = stack.pop(); f !== undefined; f = stack.pop()) {
    const v = f.value;
    if (typeof v === 'string') checkString(v, pathOf(f, at), false);
    if (typeof v !== 'object' || v === null) continue;
    const depth = f.depth + levelOf(v, f.inObject);
    if (depth > STUDY_LIMITS.maxDepth) {
      throw new ValidationError(
        at,
        `at most ${STUDY_LIMITS.maxDepth} levels of nesting (each object, such as a search ` +
          'domain or a schedule, is a level, and so is an array inside an array)',
        chainDepth(v, f.depth, f.inObject),
      );
    }
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) {
        stack.push({ value: v[i] as unknown, depth, inObject: false, parent: f, key: i });
      }
    } else {
      const obj = v as Record<string, unknown>;
      const keys = Object.keys(obj);
      for (let i = keys.length - 1; i >= 0; i--) {
        const key = keys[i] as string;
        checkString(key, pathOf(f, at), true);
        stack.push({ value: obj[key], depth, inObject: true, parent: f, key });
      }
    }
  }
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * The checks that must come before anything recurses into a study or prints a part of
 * it: nesting depth (a 10,000-deep `choice` would overflow the stack of any recursive
 * walk, `JSON.stringify` in an error message included) and string sizes. Iterative, so
 * any input, however deep, gets a `ValidationError`. Each param and each hyperparameter
 * is one value (named `params.<name>`, `space.<name>`); every other field is one value.
 */
export function checkInputShape(json: unknown): void {
  if (!isRecord(json)) {
    checkValue(json, []);
    return;
  }
  for (const field of Object.keys(json)) {
    checkString(field, [], true);
    const value = json[field];
    if ((field === 'params' || field === 'space') && isRecord(value)) {
      for (const name of Object.keys(value)) {
        checkString(name, [field], true);
        checkValue(value[name], [field, name]);
      }
    } else {
      checkValue(value, [field]);
    }
  }
}

/** Rejects a value whose JSON text is larger than `max` bytes (UTF-8); `what` names it. */
export function checkJsonBytes(value: unknown, path: Path, max: number, what: string): void {
  const bytes = exceedsBytes(JSON.stringify(value), max);
  if (bytes !== null) {
    throw new ValidationError(path, `${what} of at most ${max} bytes as JSON (UTF-8)`, bytes);
  }
}
