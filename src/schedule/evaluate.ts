import { InternalError } from '../errors.js';
import type { Schedule, Value } from './types.js';

/** Significant digits at which numeric hyperparameter values are compared and used. */
export const SIGNIFICANT_DIGITS = 12;

/**
 * Rounds a value to 12 significant digits (strings are returned as they are), so that
 * `0.1 * 0.1` and `0.01` are the same value. Minus zero becomes zero.
 */
export function roundValue<V extends Value>(v: V): V {
  if (typeof v === 'string') return v;
  if (v === 0) return 0 as V;
  return Number(v.toPrecision(SIGNIFICANT_DIGITS)) as V;
}

/** Non-negative remainder. */
export function mod(a: number, n: number): number {
  const r = a % n;
  return r < 0 ? r + n : r;
}

export function cosineAt(max: number, min: number, period: number, t: number): number {
  return min + ((max - min) * (1 + Math.cos((Math.PI * Math.min(t, period)) / period))) / 2;
}

export function triangleAt(low: number, high: number, h: number, t: number): number {
  const p = mod(t, 2 * h);
  return low + (high - low) * (p < h ? p / h : (2 * h - p) / h);
}

/**
 * The value of a schedule at step `t`, straight from the definition of its kind (no
 * rounding). The stage tree and trainers use `valueAt` on the canonical form, which
 * agrees with this after rounding to 12 significant digits.
 */
export function evaluate(s: Schedule, t: number): Value {
  switch (s.kind) {
    case 'constant':
      return s.value;
    case 'piecewise': {
      let k = 0;
      while (k < s.boundaries.length && (s.boundaries[k] ?? Infinity) <= t) k++;
      return s.values[k] as Value;
    }
    case 'step':
      return s.init * s.factor ** Math.floor(t / s.every);
    case 'multistep': {
      const passed = s.milestones.filter((m) => m <= t).length;
      return s.init * s.factor ** passed;
    }
    case 'exponential':
      return s.init * s.gamma ** t;
    case 'cosine':
      return cosineAt(s.max, s.min, s.period, t);
    case 'warmup': {
      if (t >= s.steps) return evaluate(s.then, t - s.steps);
      const to = evaluate(s.then, 0) as number;
      return s.from + ((to - s.from) * t) / s.steps;
    }
    case 'cyclic':
      return triangleAt(s.low, s.high, s.halfPeriod, t);
    case 'concat': {
      let begin = 0;
      for (const part of s.parts) {
        if (part.until === undefined || t < part.until) return evaluate(part.schedule, t - begin);
        begin = part.until;
      }
      /* c8 ignore next */
      throw new InternalError('unreachable: a validated concat has an open last part');
    }
  }
}
