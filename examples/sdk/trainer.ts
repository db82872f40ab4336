import type { HyperparameterValues, Trainer } from 'stagetree';

/**
 * A trainer written in the study's own TypeScript project: logistic regression with
 * mini-batch SGD and momentum on a seeded synthetic two-class problem. One step is one
 * epoch over 1,024 samples in a seeded order; `lr` and `momentum` come from the study's
 * schedules per step. The worker imports this file itself (with tsx from this project),
 * so it only defines the class.
 */
const FEATURES = 32;
const TRAIN = 1024;
const VALIDATION = 512;
const BATCH = 64;

/** mulberry32: a small seeded generator in [0, 1). */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Data {
  readonly x: Float64Array[];
  readonly y: Uint8Array;
}

/** Two overlapping Gaussian classes around a seeded direction. */
function makeData(seed: number, n: number): Data {
  const next = generator(seed);
  const gauss = (): number => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  const direction = Float64Array.from({ length: FEATURES }, () => gauss());
  const x: Float64Array[] = [];
  const y = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = next() < 0.5 ? 0 : 1;
    const sign = y[i] === 1 ? 0.12 : -0.12;
    x.push(Float64Array.from(direction, (d) => sign * d + gauss()));
  }
  return { x, y };
}

const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));

export class RegressionTrainer implements Trainer {
  private seed = 0;
  private train_: Data = { x: [], y: new Uint8Array() };
  private validation: Data = { x: [], y: new Uint8Array() };
  private w = new Float64Array(FEATURES + 1); // the last weight is the bias
  private v = new Float64Array(FEATURES + 1);

  init(params: Readonly<Record<string, unknown>>, seed: number): void {
    const dataSeed = typeof params.dataSeed === 'number' ? params.dataSeed : 1;
    const all = makeData(dataSeed, TRAIN + VALIDATION);
    this.train_ = { x: all.x.slice(0, TRAIN), y: all.y.slice(0, TRAIN) };
    this.validation = { x: all.x.slice(TRAIN), y: all.y.slice(TRAIN) };
    this.seed = seed;
    const next = generator(seed);
    this.w = Float64Array.from({ length: FEATURES + 1 }, () => (next() - 0.5) * 0.01);
    this.v = new Float64Array(FEATURES + 1);
  }

  train(from: number, to: number, hp: (step: number) => HyperparameterValues): void {
    for (let step = from; step < to; step++) {
      const { lr, momentum } = hp(step) as { lr: number; momentum: number };
      // The epoch's order depends only on the seed and the step (not on earlier epochs of
      // this call): a stage split anywhere trains exactly as the whole.
      const order = Array.from({ length: TRAIN }, (_, i) => i);
      const next = generator(this.seed * 7919 + step);
      for (let i = TRAIN - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [order[i], order[j]] = [order[j] as number, order[i] as number];
      }
      for (let b = 0; b < TRAIN; b += BATCH) {
        const grad = new Float64Array(FEATURES + 1);
        for (const i of order.slice(b, b + BATCH)) {
          const x = this.train_.x[i] as Float64Array;
          const err = sigmoid(this.score(x)) - (this.train_.y[i] as number);
          for (let k = 0; k < FEATURES; k++) grad[k] = (grad[k] as number) + err * (x[k] as number);
          grad[FEATURES] = (grad[FEATURES] as number) + err;
        }
        for (let k = 0; k <= FEATURES; k++) {
          this.v[k] = momentum * (this.v[k] as number) + (grad[k] as number) / BATCH;
          this.w[k] = (this.w[k] as number) - lr * (this.v[k] as number);
        }
      }
    }
  }

  private score(x: Float64Array): number {
    let z = this.w[FEATURES] as number;
    for (let k = 0; k < FEATURES; k++) z += (this.w[k] as number) * (x[k] as number);
    return z;
  }

  evaluate(): Record<string, number> {
    let loss = 0;
    let correct = 0;
    this.validation.x.forEach((x, i) => {
      const p = Math.min(Math.max(sigmoid(this.score(x)), 1e-12), 1 - 1e-12);
      const y = this.validation.y[i] as number;
      loss -= y * Math.log(p) + (1 - y) * Math.log(1 - p);
      if ((p >= 0.5 ? 1 : 0) === y) correct++;
    });
    return { loss: loss / VALIDATION, accuracy: correct / VALIDATION };
  }

  save(): Uint8Array {
    return new TextEncoder().encode(JSON.stringify({ w: [...this.w], v: [...this.v] }));
  }

  load(bytes: Uint8Array): void {
    const state = JSON.parse(new TextDecoder().decode(bytes)) as { w: number[]; v: number[] };
    this.w = Float64Array.from(state.w);
    this.v = Float64Array.from(state.v);
  }
}
