/**
 * Schedules: a hyperparameter as a function of the integer step `t >= 0` (the value used
 * while training step `t`). These are the validated, user-level forms; see `canonical.ts`
 * for the normal form the stage tree compares and hashes.
 */

/** A hyperparameter value: a number (learning rate, batch size) or a string (optimizer). */
export type Value = number | string;

export const SCHEDULE_KINDS = [
  'constant',
  'piecewise',
  'step',
  'multistep',
  'exponential',
  'cosine',
  'warmup',
  'cyclic',
  'concat',
] as const;
export type ScheduleKind = (typeof SCHEDULE_KINDS)[number];

export interface ConstantSchedule {
  readonly kind: 'constant';
  readonly value: Value;
}
/** values[k] where k = number of boundaries <= t. */
export interface PiecewiseSchedule {
  readonly kind: 'piecewise';
  readonly values: readonly Value[];
  readonly boundaries: readonly number[];
}
/** init * factor^floor(t / every). */
export interface StepSchedule {
  readonly kind: 'step';
  readonly init: number;
  readonly factor: number;
  readonly every: number;
}
/** init * factor^(number of milestones <= t). */
export interface MultistepSchedule {
  readonly kind: 'multistep';
  readonly init: number;
  readonly factor: number;
  readonly milestones: readonly number[];
}
/** init * gamma^t. */
export interface ExponentialSchedule {
  readonly kind: 'exponential';
  readonly init: number;
  readonly gamma: number;
}
/** min + (max - min) * (1 + cos(pi * min(t, period) / period)) / 2. */
export interface CosineSchedule {
  readonly kind: 'cosine';
  readonly max: number;
  readonly min: number;
  readonly period: number;
}
/** t < steps: from + (then(0) - from) * t / steps; else then(t - steps). */
export interface WarmupSchedule {
  readonly kind: 'warmup';
  readonly steps: number;
  readonly from: number;
  readonly then: Schedule;
}
/** Triangular: p = t mod 2h; low + (high - low) * (p < h ? p / h : (2h - p) / h). */
export interface CyclicSchedule {
  readonly kind: 'cyclic';
  readonly low: number;
  readonly high: number;
  readonly halfPeriod: number;
}
/** Part k covers [until_{k-1}, until_k) and sees time t - until_{k-1}. */
export interface ConcatSchedule {
  readonly kind: 'concat';
  readonly parts: readonly ConcatPart[];
}
export interface ConcatPart {
  readonly until?: number;
  readonly schedule: Schedule;
}

export type Schedule =
  | ConstantSchedule
  | PiecewiseSchedule
  | StepSchedule
  | MultistepSchedule
  | ExponentialSchedule
  | CosineSchedule
  | WarmupSchedule
  | CyclicSchedule
  | ConcatSchedule;
