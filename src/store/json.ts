import stringify from 'fast-json-stable-stringify';
import { describeValue, formatPath, ValidationError } from '../errors.js';
import type { LogEntry } from '../engine/types.js';

/**
 * JSON as the study store writes it: canonical text for the study (sorted keys, so two
 * equal studies compare equal byte for byte) and a lossless encoding of log entries.
 */

/** Canonical JSON: object keys sorted, no whitespace. Throws on values JSON cannot hold. */
export function canonicalJson(value: unknown, what: string): string {
  checkJson(value, [what]);
  return stringify(value);
}

function checkJson(value: unknown, path: (string | number)[]): void {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new ValidationError(path, 'a finite number', value);
      return;
    case 'object':
      if (value === null) return;
      if (Array.isArray(value)) {
        value.forEach((v, i) => {
          checkJson(v, [...path, i]);
        });
        return;
      }
      for (const [k, v] of Object.entries(value)) {
        if (v !== undefined) checkJson(v, [...path, k]);
      }
      return;
    case 'undefined':
    case 'bigint':
    case 'symbol':
    case 'function':
      throw new ValidationError(path, 'a JSON value', value);
  }
}

/**
 * Where two parsed JSON values first differ, as a field path and the two values there
 * (for an error message), or null when they are equal.
 */
export function firstJsonDifference(
  a: unknown,
  b: unknown,
  path: (string | number)[] = [],
): { path: string; stored: string; given: string } | null {
  const differ = () => ({
    path: formatPath(path),
    stored: describeValue(a),
    given: describeValue(b),
  });
  if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      if (i >= a.length || i >= b.length) return differ();
      const d = firstJsonDifference(a[i], b[i], [...path, i]);
      if (d) return d;
    }
    return null;
  }
  if (isRecord(a) && isRecord(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const k of keys) {
      const d = firstJsonDifference(a[k], b[k], [...path, k]);
      if (d) return d;
    }
    return null;
  }
  return Object.is(a, b) ? null : differ();
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/*
 * Log entries. A metric may be NaN or infinite (a diverged run); JSON cannot hold those, so
 * the metric fields (`metric.value`, `done.metric`, `reuse.metric`) are written as the
 * strings "NaN", "Infinity" or "-Infinity" and read back as numbers. Any other non-finite
 * number is rejected: nothing else in a log comes from outside a validated study.
 */

const NON_FINITE: Readonly<Record<string, number>> = {
  NaN: Number.NaN,
  Infinity: Number.POSITIVE_INFINITY,
  '-Infinity': Number.NEGATIVE_INFINITY,
};

function encodeMetric(x: number): number | string {
  return Number.isFinite(x) ? x : String(x);
}

function decodeMetric(x: unknown, where: string): number {
  if (typeof x === 'number') return x;
  if (typeof x === 'string') {
    const v = NON_FINITE[x];
    if (v !== undefined) return v;
  }
  throw new ValidationError(where, 'a number, "NaN", "Infinity" or "-Infinity"', x);
}

/** The JSON text of one log entry (`where` names it in errors, e.g. `entries[3]`). */
export function encodeEntry(entry: LogEntry, where: string): string {
  let e: unknown = entry;
  if (entry.kind === 'metric') e = { ...entry, value: encodeMetric(entry.value) };
  else if (entry.kind === 'done' || entry.kind === 'reuse') {
    e = { ...entry, metric: encodeMetric(entry.metric) };
  }
  checkJson(e, [where]);
  return JSON.stringify(e);
}

/** The log entry a JSON text (from `encodeEntry`) holds. */
export function decodeEntry(json: string, where: string): LogEntry {
  const e = JSON.parse(json) as Record<string, unknown>;
  if (e['kind'] === 'metric') e['value'] = decodeMetric(e['value'], `${where}.value`);
  else if (e['kind'] === 'done' || e['kind'] === 'reuse') {
    e['metric'] = decodeMetric(e['metric'], `${where}.metric`);
  }
  return e as unknown as LogEntry;
}
