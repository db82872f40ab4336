import { readdirSync, readFileSync } from 'node:fs';
import { fc } from '@fast-check/vitest';
import { describe, expect, test } from 'vitest';
import { StagetreeError, ValidationError } from '../../src/errors.js';
import { checkedGridSize, compileStudy } from '../../src/study/domain.js';
import { gridConfigs, parseStudy, parseStudyText, randomConfigs } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';

/*
 * Every input, however hostile, ends in a study or a ValidationError (a StagetreeError at
 * worst), never in another exception, and never takes long. Expanding a study that
 * parsed gives configurations or a ValidationError (a combination of domains whose
 * schedule is invalid) too.
 */

/** A generous guard against a call that hangs or explodes: far above any normal call. */
const GUARD_MS = 5_000;

type Outcome = 'study' | 'rejected';

/**
 * Runs `fn`: a result, or an error of class `allowed`, is fine; any other exception fails
 * the property, and so does a call over the guard.
 */
function outcome(fn: () => unknown, allowed: typeof StagetreeError = ValidationError): Outcome {
  const started = performance.now();
  let result: Outcome;
  try {
    fn();
    result = 'study';
  } catch (e) {
    if (!(e instanceof allowed)) throw e;
    result = 'rejected';
  }
  expect(performance.now() - started).toBeLessThan(GUARD_MS);
  return result;
}

/** Expands a study that parsed, bounded: a few random draws, the grid if it is small. */
function expand(study: Study): void {
  outcome(() => randomConfigs(study, 5, 1), StagetreeError);
  if (study.tuner.kind === 'grid' && checkedGridSize(compileStudy(study)) <= 2_000) {
    outcome(() => gridConfigs(study), StagetreeError);
  }
}

/** Parses `input`; on success, expands the study. */
function parseAndExpand(input: unknown): Outcome {
  const parsed: Study[] = [];
  const result = outcome(() => parsed.push(parseStudy(input)));
  for (const study of parsed) expand(study);
  return result;
}

const EXAMPLES = new URL('../../examples/', import.meta.url);
const examples: unknown[] = readdirSync(EXAMPLES)
  .filter((f) => f.endsWith('.json'))
  .map((f) => JSON.parse(readFileSync(new URL(f, EXAMPLES), 'utf8')) as unknown);

type Json = unknown;
type Key = string | number;

/** The paths in a JSON value (the root included) down to depth 40, without recursion. */
function pathsOf(value: Json): Key[][] {
  const out: Key[][] = [];
  const stack: [Json, Key[]][] = [[value, []]];
  for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
    const [v, path] = top;
    out.push(path);
    if (path.length >= 40 || typeof v !== 'object' || v === null) continue;
    for (const [k, item] of Object.entries(v)) {
      stack.push([item, [...path, Array.isArray(v) ? Number(k) : k]]);
    }
  }
  return out;
}

/** JSON text of a value, or null where it is too deep for `JSON.stringify`. */
function textOf(value: Json): string | null {
  try {
    return JSON.stringify(value);
  } catch {
    return null;
  }
}

/** Deep-nests `value` `depth` levels in one kind of wrapper, without recursion. */
function nest(value: Json, depth: number, wrapper: 'array' | 'object' | 'choice'): Json {
  let v = value;
  for (let i = 0; i < depth; i++) {
    v = wrapper === 'array' ? [v] : wrapper === 'object' ? { x: v } : { choice: [v] };
  }
  return v;
}

/** A strange value: huge and tiny numbers, NaN-like strings, long strings, deep nests. */
const strange: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom(
    0,
    -0,
    -1,
    0.5,
    1e308,
    -1e308,
    5e-324,
    2 ** 53 + 2,
    1e9 + 1,
    100_001,
    1e15,
    'NaN',
    'Infinity',
    '-Infinity',
    '1e999',
    '0x10',
    '',
    '.',
    '..',
    '__proto__',
    'constructor',
    '\uFEFF',
    null,
    true,
    [],
    {},
    { choice: [] },
    { int: [0, 1e15] },
    { uniform: [0, 1] },
    { kind: 'warmup', steps: 1, from: 0, then: 'x' },
  ),
  fc.constantFrom('a'.repeat(70_000), '€'.repeat(30_000), 'x'.repeat(65_536)),
  fc
    .tuple(
      fc.jsonValue({ maxDepth: 2 }),
      fc.constantFrom(33, 1_000, 10_000),
      fc.constantFrom('array' as const, 'object' as const, 'choice' as const),
    )
    .map(([v, depth, wrapper]) => nest(v, depth, wrapper)),
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 20 }),
  fc.jsonValue({ maxDepth: 3 }),
);

/** One edit at a path (an index into the value's paths, taken modulo their count). */
type Mutation =
  | { readonly op: 'replace'; readonly at: number; readonly value: Json }
  | { readonly op: 'delete'; readonly at: number }
  | { readonly op: 'nest'; readonly at: number; readonly depth: number }
  | { readonly op: 'add'; readonly at: number; readonly key: string; readonly value: Json };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('replace' as const), at: fc.nat(), value: strange }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat() }),
  fc.record({
    op: fc.constant('nest' as const),
    at: fc.nat(),
    depth: fc.constantFrom(1, 2, 31, 32, 33, 10_000),
  }),
  fc.record({
    op: fc.constant('add' as const),
    at: fc.nat(),
    key: fc.constantFrom('extra', 'trials', 'version', 'taskTimeout', 'cluster', '__proto__'),
    value: strange,
  }),
);

/** The container at `path` and the last key (null for the root). */
function locate(root: Json, path: Key[]): { parent: Json; key: Key } | null {
  if (path.length === 0) return null;
  let parent = root;
  for (const k of path.slice(0, -1)) parent = (parent as Record<Key, Json>)[k];
  return { parent, key: path[path.length - 1] as Key };
}

/** Applies `m` to `root` (mutated in place); returns the new root. */
function apply(root: Json, m: Mutation): Json {
  const paths = pathsOf(root);
  const path = paths[m.at % paths.length] as Key[];
  const where = locate(root, path);
  const current = where ? (where.parent as Record<Key, Json>)[where.key] : root;
  const set = (v: Json): Json => {
    if (!where) return v;
    Object.defineProperty(where.parent, where.key, {
      value: v,
      enumerable: true,
      writable: true,
      configurable: true,
    });
    return root;
  };
  switch (m.op) {
    case 'replace':
      return set(m.value);
    case 'nest':
      return set(nest(current, m.depth, m.depth % 2 === 0 ? 'choice' : 'array'));
    case 'delete':
      if (!where) return root;
      if (Array.isArray(where.parent)) where.parent.splice(where.key as number, 1);
      else Reflect.deleteProperty(where.parent as object, where.key);
      return root;
    case 'add':
      if (typeof current !== 'object' || current === null || Array.isArray(current)) {
        return set(m.value);
      }
      Object.defineProperty(current, m.key, {
        value: m.value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      return root;
  }
}

const RUNS = { numRuns: 300, seed: 20240501 } as const;

describe('fuzz: parseStudy never throws anything but a ValidationError', () => {
  test('arbitrary JSON values', { timeout: 120_000 }, () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        parseAndExpand(value);
      }),
      RUNS,
    );
  });

  test('objects with the study’s fields holding arbitrary JSON', { timeout: 120_000 }, () => {
    const field = fc.oneof(fc.jsonValue({ maxDepth: 3 }), strange);
    const study = fc.record(
      {
        name: field,
        params: field,
        space: field,
        steps: field,
        evalEvery: field,
        tuner: field,
        metric: field,
        trainer: field,
        resources: field,
        workers: field,
        retries: field,
        taskTimeout: field,
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(study, (value) => {
        parseAndExpand(value);
      }),
      RUNS,
    );
  });

  test('mutations of the example studies', { timeout: 300_000 }, () => {
    expect(examples.length).toBeGreaterThan(0);
    for (const example of examples) expect(parseAndExpand(example)).toBe('study');
    const counts = { study: 0, rejected: 0 };
    fc.assert(
      fc.property(
        fc.nat({ max: examples.length - 1 }),
        fc.array(mutation, { minLength: 1, maxLength: 3 }),
        (which, mutations) => {
          let value = structuredClone(examples[which]);
          for (const m of mutations) value = apply(value, m);
          counts[parseAndExpand(value)]++;
          // the same input through the text of a file, with a byte order mark
          const text = textOf(value);
          if (text !== null) outcome(() => parseStudyText(`\uFEFF${text}`));
        },
      ),
      { numRuns: 1_000, seed: 20240502 },
    );
    expect(counts.study).toBeGreaterThan(0);
    expect(counts.rejected).toBeGreaterThan(0);
  });

  test('arbitrary text', { timeout: 120_000 }, () => {
    const text = fc.oneof(
      fc.string(),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.constantFrom('', '\uFEFF', '\uFEFF{}', '{', '[]', 'null', '"x"', '{"name":'),
    );
    fc.assert(
      fc.property(text, (t) => {
        expect(outcome(() => parseStudyText(t))).toBe('rejected');
      }),
      RUNS,
    );
  });
});
