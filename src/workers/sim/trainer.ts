import { valueAt } from '../../schedule/index.js';
import type { Canonical } from '../../schedule/index.js';
import type { StageRun } from '../../engine/index.js';
import { InternalError } from '../../errors.js';

/**
 * The simulated trainer: a small deterministic dynamical system standing in for SGD.
 * The loss after step t depends on every hyperparameter value used before t and on the
 * seed, so merging trials is meaningful (the state at a stage end is shared by every
 * trial through it) and tuners have something real to optimise:
 *
 * - effective learning rate eta = lr * sqrt(128 / batchSize) * 0.1 / (1 - momentum);
 * - each step the loss moves towards a noise floor 0.05 + 2 eta (+ a weight-decay
 *   penalty, + a small fixed effect per other hyperparameter value) at rate 0.5 eta:
 *   a high learning rate learns fast but plateaus high, a decayed one learns slowly but
 *   lower, so when to decay matters, as on CIFAR;
 * - eta above 1 diverges; a seeded hash adds +-0.002 of noise per step.
 *
 * `evaluate` gives the loss for a `min` metric and an accuracy-like 1 - loss / 2.5 for a
 * `max` metric.
 */
export interface SimState {
  /** The step the state has reached (the end of the last trained stage). */
  readonly step: number;
  readonly loss: number;
  readonly seed: number;
}

function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A deterministic number in [0, 1) from integers. */
function unit(a: number, b: number): number {
  let x = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35);
  x ^= x >>> 13;
  x = Math.imul(x, 0x27d4eb2d);
  x ^= x >>> 15;
  return (x >>> 0) / 4294967296;
}

const num = (v: unknown, fallback: number): number =>
  typeof v === 'number' && Number.isFinite(v) ? v : fallback;

const KNOWN = new Set(['lr', 'learningRate', 'batchSize', 'momentum', 'weightDecay']);

export function simInit(params: Readonly<Record<string, unknown>>): SimState {
  const seed = hash32(JSON.stringify(params.seed ?? 0));
  return { step: 0, loss: 2.3 + 0.05 * unit(seed, -1), seed };
}

/** Trains steps [run.start, run.end) from `state` (which must be at run.start). */
export function simTrain(state: SimState, run: StageRun): SimState {
  if (state.step !== run.start) {
    throw new InternalError(
      `sim trainer: state is at step ${state.step}, stage starts at ${run.start}`,
    );
  }
  const hps = Object.keys(run.schedules).sort();
  let loss = state.loss;
  for (let t = run.start; t < run.end; t++) {
    const v: Record<string, unknown> = {};
    let other = 0;
    for (const h of hps) {
      const value = valueAt(run.schedules[h] as Canonical, t);
      v[h] = value;
      if (!KNOWN.has(h)) other += unit(hash32(`${h}=${String(value)}`), 7) - 0.5;
    }
    const lr = num(v.lr ?? v.learningRate, 0.1);
    const bs = num(v.batchSize, 128);
    const momentum = Math.min(num(v.momentum, 0.9), 0.99);
    const wd = num(v.weightDecay, 5e-4);
    const eta = (lr * Math.sqrt(128 / Math.max(bs, 1)) * 0.1) / (1 - momentum);
    const floor = (0.05 + 2 * eta + 60 * Math.abs(wd - 5e-4)) * (1 + 0.1 * other);
    if (eta > 1) loss += 0.05 * (eta - 1);
    else loss -= 0.5 * eta * (loss - floor);
    loss += 0.002 * (unit(state.seed, t) - 0.5);
  }
  return { step: run.end, loss, seed: state.seed };
}

export function simEvaluate(state: SimState, mode: 'min' | 'max'): number {
  return mode === 'min' ? state.loss : Math.min(1, Math.max(0, 1 - state.loss / 2.5));
}
