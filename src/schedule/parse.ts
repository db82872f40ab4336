import { ValidationError } from '../errors.js';
import { evaluate } from './evaluate.js';
import { SCHEDULE_KINDS } from './types.js';
import type { ConcatPart, Schedule, ScheduleKind, Value } from './types.js';

type Path = readonly (string | number)[];

/** The fields each kind takes, in the order error messages list them. */
const FIELDS: Readonly<Record<ScheduleKind, readonly string[]>> = {
  constant: ['value'],
  piecewise: ['values', 'boundaries'],
  step: ['init', 'factor', 'every'],
  multistep: ['init', 'factor', 'milestones'],
  exponential: ['init', 'gamma'],
  cosine: ['max', 'min', 'period'],
  warmup: ['steps', 'from', 'then'],
  cyclic: ['low', 'high', 'halfPeriod'],
  concat: ['parts'],
};

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function field(obj: Record<string, unknown>, name: string, path: Path): unknown {
  if (!(name in obj))
    throw new ValidationError([...path, name], 'a value (field is required)', undefined);
  return obj[name];
}

/** A finite number. */
export function parseNumber(x: unknown, path: Path): number {
  if (typeof x !== 'number' || !Number.isFinite(x)) {
    throw new ValidationError(path, 'a finite number', x);
  }
  return x;
}

function parsePositive(x: unknown, path: Path): number {
  const n = parseNumber(x, path);
  if (n <= 0) throw new ValidationError(path, 'a number > 0', x);
  return n;
}

/** An integer step count; `min` is the smallest allowed value. */
export function parseStepInt(x: unknown, path: Path, min: number): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min) {
    throw new ValidationError(path, `an integer >= ${min}`, x);
  }
  return x;
}

function parseValue(x: unknown, path: Path): Value {
  if (typeof x === 'string') return x;
  if (typeof x === 'number') return parseNumber(x, path);
  throw new ValidationError(path, 'a finite number or a string', x);
}

function parseIncreasing(x: unknown, path: Path, what: string): number[] {
  if (!Array.isArray(x)) throw new ValidationError(path, `an array of ${what}`, x);
  const out: number[] = [];
  x.forEach((item, i) => {
    const n = parseStepInt(item, [...path, i], 1);
    const prev = out[i - 1];
    if (prev !== undefined && n <= prev) {
      throw new ValidationError(
        [...path, i],
        `an integer > ${prev} (${what} must be strictly increasing)`,
        item,
      );
    }
    out.push(n);
  });
  return out;
}

function rejectUnknownFields(obj: Record<string, unknown>, kind: ScheduleKind, path: Path): void {
  const allowed = FIELDS[kind];
  for (const key of Object.keys(obj)) {
    if (key !== 'kind' && !allowed.includes(key)) {
      throw new ValidationError(
        [...path, key],
        `no such field (a ${kind} schedule takes ${allowed.join(', ')})`,
        obj[key],
      );
    }
  }
}

/**
 * Validates a schedule as written in a study file. A bare number or string means a
 * constant. Throws a `ValidationError` naming the field path (prefixed by `path`).
 */
export function parseSchedule(input: unknown, path: Path = []): Schedule {
  if (typeof input === 'number' || typeof input === 'string') {
    return { kind: 'constant', value: parseValue(input, path) };
  }
  if (!isRecord(input)) {
    throw new ValidationError(path, 'a number, a string or a schedule object with a "kind"', input);
  }
  const kind = input.kind;
  if (typeof kind !== 'string' || !(SCHEDULE_KINDS as readonly string[]).includes(kind)) {
    throw new ValidationError([...path, 'kind'], `one of ${SCHEDULE_KINDS.join(', ')}`, kind);
  }
  const k = kind as ScheduleKind;
  rejectUnknownFields(input, k, path);
  const num = (name: string): number => parseNumber(field(input, name, path), [...path, name]);
  switch (k) {
    case 'constant':
      return { kind: k, value: parseValue(field(input, 'value', path), [...path, 'value']) };
    case 'piecewise': {
      const rawValues = field(input, 'values', path);
      if (!Array.isArray(rawValues) || rawValues.length === 0) {
        throw new ValidationError([...path, 'values'], 'a non-empty array of values', rawValues);
      }
      const values = rawValues.map((v, i) => parseValue(v, [...path, 'values', i]));
      const boundaries = parseIncreasing(
        field(input, 'boundaries', path),
        [...path, 'boundaries'],
        'steps',
      );
      if (values.length !== boundaries.length + 1) {
        throw new ValidationError(
          [...path, 'values'],
          `${boundaries.length + 1} values (one more than boundaries)`,
          rawValues,
        );
      }
      return { kind: k, values, boundaries };
    }
    case 'step':
      return {
        kind: k,
        init: num('init'),
        factor: num('factor'),
        every: parseStepInt(field(input, 'every', path), [...path, 'every'], 1),
      };
    case 'multistep':
      return {
        kind: k,
        init: num('init'),
        factor: num('factor'),
        milestones: parseIncreasing(
          field(input, 'milestones', path),
          [...path, 'milestones'],
          'steps',
        ),
      };
    case 'exponential':
      return {
        kind: k,
        init: num('init'),
        gamma: parsePositive(field(input, 'gamma', path), [...path, 'gamma']),
      };
    case 'cosine':
      return {
        kind: k,
        max: num('max'),
        min: num('min'),
        period: parseStepInt(field(input, 'period', path), [...path, 'period'], 1),
      };
    case 'warmup': {
      const steps = parseStepInt(field(input, 'steps', path), [...path, 'steps'], 0);
      const from = num('from');
      const then = parseSchedule(field(input, 'then', path), [...path, 'then']);
      const start = evaluate(then, 0);
      if (typeof start !== 'number') {
        throw new ValidationError(
          [...path, 'then'],
          'a numeric schedule (warmup ramps towards its value at 0)',
          start,
        );
      }
      return { kind: k, steps, from, then };
    }
    case 'cyclic':
      return {
        kind: k,
        low: num('low'),
        high: num('high'),
        halfPeriod: parseStepInt(field(input, 'halfPeriod', path), [...path, 'halfPeriod'], 1),
      };
    case 'concat':
      return { kind: k, parts: parseConcatParts(field(input, 'parts', path), [...path, 'parts']) };
  }
}

function parseConcatParts(x: unknown, path: Path): ConcatPart[] {
  if (!Array.isArray(x) || x.length === 0) {
    throw new ValidationError(path, 'a non-empty array of {until?, schedule} parts', x);
  }
  const parts: ConcatPart[] = [];
  let previous = 0;
  x.forEach((raw, i) => {
    const p = [...path, i];
    if (!isRecord(raw)) throw new ValidationError(p, 'an object {until?, schedule}', raw);
    for (const key of Object.keys(raw)) {
      if (key !== 'until' && key !== 'schedule') {
        throw new ValidationError(
          [...p, key],
          'no such field (a concat part takes until, schedule)',
          raw[key],
        );
      }
    }
    const schedule = parseSchedule(field(raw, 'schedule', p), [...p, 'schedule']);
    const last = i === x.length - 1;
    if (raw.until === undefined) {
      if (!last) {
        throw new ValidationError(
          [...p, 'until'],
          'an integer step (only the last part may omit until)',
          undefined,
        );
      }
      parts.push({ schedule });
      return;
    }
    if (last) {
      throw new ValidationError(
        [...p, 'until'],
        'no until on the last part (it must be open-ended)',
        raw.until,
      );
    }
    const until = parseStepInt(raw.until, [...p, 'until'], previous + 1);
    previous = until;
    parts.push({ until, schedule });
  });
  return parts;
}
