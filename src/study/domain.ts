import { ValidationError } from '../errors.js';
import { STUDY_LIMITS } from './limits.js';
import type { Rng } from './rng.js';
import { DOMAIN_KINDS } from './types.js';
import type { DomainKind, JsonValue } from './types.js';

/**
 * Templates: a JSON value in which search domains may stand anywhere a value may. A
 * template is compiled once into a tree of nodes; subtrees without domains collapse into
 * one literal, so resolving a configuration only rebuilds the parts that vary.
 */

export type Path = readonly (string | number)[];

export type TemplateNode =
  | { readonly t: 'lit'; readonly value: JsonValue }
  | { readonly t: 'arr'; readonly items: readonly TemplateNode[] }
  | {
      readonly t: 'obj';
      readonly keys: readonly string[];
      readonly values: readonly TemplateNode[];
    }
  | {
      readonly t: 'choice';
      readonly options: readonly TemplateNode[];
      readonly path: Path;
      readonly raw: JsonValue;
    }
  | {
      readonly t: 'uniform' | 'loguniform' | 'int';
      readonly lo: number;
      readonly hi: number;
      readonly path: Path;
      readonly raw: JsonValue;
    };

/** The most configurations `gridConfigs` will enumerate: the trial limit of a study. */
export const MAX_GRID_CONFIGS: number = STUDY_LIMITS.maxTrials;

function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return false;
  const proto = Object.getPrototypeOf(x) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Whether `x` is a search domain: an object whose only key is a domain kind. */
export function isDomain(x: unknown): boolean {
  if (!isPlainObject(x)) return false;
  const keys = Object.keys(x);
  return keys.length === 1 && (DOMAIN_KINDS as readonly string[]).includes(keys[0] as string);
}

/** Builds an object from entries without ever touching a prototype (`__proto__` is a key). */
export function objectFrom(
  keys: readonly string[],
  values: readonly unknown[],
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i] as string;
    if (key === '__proto__') {
      Object.defineProperty(out, key, {
        value: values[i],
        enumerable: true,
        writable: true,
        configurable: true,
      });
    } else {
      out[key] = values[i];
    }
  }
  return out;
}

const lit = (value: JsonValue): TemplateNode => ({ t: 'lit', value });

/**
 * Validates a template (JSON values; domains well formed, nested domains included) and
 * compiles it. The literal parts are copied, so later changes to the input do not leak in.
 */
export function compileTemplate(x: unknown, path: Path): TemplateNode {
  if (x === null || typeof x === 'boolean' || typeof x === 'string') return lit(x);
  if (typeof x === 'number') {
    if (!Number.isFinite(x)) throw new ValidationError(path, 'a finite number', x);
    return lit(x);
  }
  if (Array.isArray(x)) {
    const items: TemplateNode[] = [];
    for (let i = 0; i < x.length; i++) items.push(compileTemplate(x[i], [...path, i]));
    return items.every((n) => n.t === 'lit')
      ? lit(items.map((n) => (n as { value: JsonValue }).value))
      : { t: 'arr', items };
  }
  if (isPlainObject(x)) {
    const keys = Object.keys(x);
    if (isDomain(x)) return compileDomain(keys[0] as DomainKind, x, path);
    const values = keys.map((k) => compileTemplate(x[k], [...path, k]));
    return values.every((n) => n.t === 'lit')
      ? lit(
          objectFrom(
            keys,
            values.map((n) => (n as { value: JsonValue }).value),
          ) as JsonValue,
        )
      : { t: 'obj', keys, values };
  }
  throw new ValidationError(
    path,
    'a JSON value (null, boolean, number, string, array or object)',
    x,
  );
}

function compileDomain(kind: DomainKind, obj: Record<string, unknown>, at: Path): TemplateNode {
  const body = obj[kind];
  const path = [...at, kind];
  const raw = obj as JsonValue;
  if (kind === 'choice') {
    if (!Array.isArray(body) || body.length === 0) {
      throw new ValidationError(path, 'a non-empty array of options', body);
    }
    if (body.length > STUDY_LIMITS.maxChoiceOptions) {
      throw new ValidationError(
        path,
        `a choice of at most ${STUDY_LIMITS.maxChoiceOptions} options`,
        body.length,
      );
    }
    const options: TemplateNode[] = [];
    for (let i = 0; i < body.length; i++) options.push(compileTemplate(body[i], [...path, i]));
    return { t: 'choice', options, path: at, raw };
  }
  if (!Array.isArray(body) || body.length !== 2) {
    const what = kind === 'int' ? 'integers' : 'finite numbers';
    throw new ValidationError(path, `an array [lo, hi] of two ${what}`, body);
  }
  const [lo, hi] = body as [unknown, unknown];
  if (kind === 'int') {
    if (typeof lo !== 'number' || !Number.isSafeInteger(lo)) {
      throw new ValidationError([...path, 0], 'an integer', lo);
    }
    if (typeof hi !== 'number' || !Number.isSafeInteger(hi) || hi < lo) {
      throw new ValidationError(
        [...path, 1],
        `an integer >= ${lo} (hi must be >= lo; both are included)`,
        hi,
      );
    }
    return { t: 'int', lo, hi, path: at, raw };
  }
  if (typeof lo !== 'number' || !Number.isFinite(lo)) {
    throw new ValidationError([...path, 0], 'a finite number', lo);
  }
  if (kind === 'loguniform' && lo <= 0) {
    throw new ValidationError([...path, 0], 'a number > 0 (loguniform needs 0 < lo < hi)', lo);
  }
  if (typeof hi !== 'number' || !Number.isFinite(hi) || hi <= lo) {
    throw new ValidationError([...path, 1], `a finite number > ${lo} (hi must be > lo)`, hi);
  }
  return { t: kind, lo, hi, path: at, raw };
}

/**
 * How many configurations a grid enumerates: choices add up their options' counts, int
 * ranges count their integers, arrays and objects multiply their parts. Throws for
 * `uniform` / `loguniform`, which a grid cannot enumerate.
 */
export function gridCount(node: TemplateNode): number {
  switch (node.t) {
    case 'lit':
      return 1;
    case 'arr':
      return node.items.reduce((n, item) => n * gridCount(item), 1);
    case 'obj':
      return node.values.reduce((n, value) => n * gridCount(value), 1);
    case 'choice':
      return node.options.reduce((n, option) => n + gridCount(option), 0);
    case 'int':
      return node.hi - node.lo + 1;
    case 'uniform':
    case 'loguniform':
      throw notInGrid(node);
  }
}

function notInGrid(node: { readonly path: Path; readonly raw: JsonValue }): ValidationError {
  return new ValidationError(
    node.path,
    'a choice or int domain (a grid cannot enumerate a continuous range: ' +
      'list the values with {"choice": [...]} or use the random tuner)',
    node.raw,
  );
}

/**
 * The cartesian product of `lists`, the last list varying fastest. `build` receives the
 * current picks (a reused array: copy what you keep) and the index of the combination.
 */
export function cartesian<T>(
  lists: readonly (readonly unknown[])[],
  build: (picks: readonly unknown[], index: number) => T,
): T[] {
  const total = lists.reduce((n, list) => n * list.length, 1);
  const out = new Array<T>(total);
  if (total === 0) return out;
  const n = lists.length;
  const at = new Array<number>(n).fill(0);
  const picks = lists.map((list) => list[0]);
  for (let k = 0; k < total; k++) {
    out[k] = build(picks, k);
    for (let i = n - 1; i >= 0; i--) {
      const list = lists[i] as readonly unknown[];
      const next = (at[i] as number) + 1;
      if (next < list.length) {
        at[i] = next;
        picks[i] = list[next];
        break;
      }
      at[i] = 0;
      picks[i] = list[0];
    }
  }
  return out;
}

/**
 * Every value a template takes in a grid, in grid order: choice options in the order
 * listed (each expanded in place), int ranges from lo to hi, arrays and objects as the
 * product of their parts with the last index / key varying fastest. Parts without
 * domains are shared, not copied. Call `gridCount` first to bound the size.
 */
export function gridValues(node: TemplateNode): readonly JsonValue[] {
  switch (node.t) {
    case 'lit':
      return [node.value];
    case 'arr':
      return cartesian(node.items.map(gridValues), (picks) => picks.slice() as JsonValue);
    case 'obj':
      return cartesian(
        node.values.map(gridValues),
        (picks) => objectFrom(node.keys, picks) as JsonValue,
      );
    case 'choice':
      return node.options.flatMap((option) => gridValues(option));
    case 'int': {
      const out: number[] = [];
      for (let v = node.lo; v <= node.hi; v++) out.push(v);
      return out;
    }
    case 'uniform':
    case 'loguniform':
      throw notInGrid(node);
  }
}

/** The value with every domain at its first option / lower bound (a reachable value). */
export function firstValue(node: TemplateNode): JsonValue {
  switch (node.t) {
    case 'lit':
      return node.value;
    case 'arr':
      return node.items.map(firstValue);
    case 'obj':
      return objectFrom(node.keys, node.values.map(firstValue)) as JsonValue;
    case 'choice':
      return firstValue(node.options[0] as TemplateNode);
    case 'int':
    case 'uniform':
    case 'loguniform':
      return node.lo;
  }
}

/**
 * One random value of a template. Draws happen depth-first in key order, and only in the
 * chosen option of a choice, so a seed always gives the same value.
 */
export function sampleValue(node: TemplateNode, rng: Rng): JsonValue {
  switch (node.t) {
    case 'lit':
      return node.value;
    case 'arr':
      return node.items.map((item) => sampleValue(item, rng));
    case 'obj':
      return objectFrom(
        node.keys,
        node.values.map((value) => sampleValue(value, rng)),
      ) as JsonValue;
    case 'choice':
      return sampleValue(node.options[rng.int(0, node.options.length - 1)] as TemplateNode, rng);
    case 'int':
      return rng.int(node.lo, node.hi);
    case 'uniform':
      return Math.min(node.hi, node.lo + rng.next() * (node.hi - node.lo));
    case 'loguniform': {
      const a = Math.log(node.lo);
      const v = Math.exp(a + rng.next() * (Math.log(node.hi) - a));
      return Math.min(node.hi, Math.max(node.lo, v));
    }
  }
}

/** A study's templates, compiled: params as one template, then each hyperparameter. */
export interface CompiledStudy {
  readonly params: TemplateNode;
  readonly hps: readonly string[];
  readonly space: readonly TemplateNode[];
}

export function compileStudy(study: {
  readonly params: Readonly<Record<string, unknown>>;
  readonly space: Readonly<Record<string, unknown>>;
}): CompiledStudy {
  // params is a record of names like space, never itself a domain: a param may be called "int".
  const keys = Object.keys(study.params);
  const values = keys.map((k) => compileTemplate(study.params[k], ['params', k]));
  const params: TemplateNode = values.every((n) => n.t === 'lit')
    ? lit(
        objectFrom(
          keys,
          values.map((n) => (n as { value: JsonValue }).value),
        ) as JsonValue,
      )
    : { t: 'obj', keys, values };
  const hps = Object.keys(study.space);
  const space = hps.map((hp) => compileTemplate(study.space[hp], ['space', hp]));
  return { params, hps, space };
}

/** The template as JSON again (domains included): a copy of what was compiled. */
export function templateValue(node: TemplateNode): JsonValue {
  switch (node.t) {
    case 'lit':
      return node.value;
    case 'arr':
      return node.items.map(templateValue);
    case 'obj':
      return objectFrom(node.keys, node.values.map(templateValue)) as JsonValue;
    case 'choice':
      return { choice: node.options.map(templateValue) };
    case 'int':
    case 'uniform':
    case 'loguniform':
      return objectFrom([node.t], [[node.lo, node.hi]]) as JsonValue;
  }
}

/**
 * The number of configurations a grid over the whole study enumerates (params, then each
 * hyperparameter), counted without expanding anything; throws if it exceeds
 * `MAX_GRID_CONFIGS` or a domain is continuous.
 */
export function checkedGridSize(c: CompiledStudy): number {
  const total = c.space.reduce((n, node) => n * gridCount(node), gridCount(c.params));
  if (total > MAX_GRID_CONFIGS) {
    throw new ValidationError(
      'space',
      `a grid of at most ${MAX_GRID_CONFIGS} configurations (the trial limit; ` +
        'params and space multiply out to more: use fewer choices or the random tuner)',
      total,
    );
  }
  return total;
}
