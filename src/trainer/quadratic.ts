import type { HyperparameterValues, Trainer, TrainSignal } from './types.js';

/**
 * A small deterministic trainer for tests and examples: mini-batch SGD with momentum on a
 * synthetic least-squares problem (a seeded 8-dimensional linear model with noise). Uses
 * `lr` (default 0.05), `momentum` (default 0.9) and `batchSize` (default 32) per step; one
 * step is one pass over 256 samples. Plain floating-point arithmetic in a fixed order, so
 * the same seed and values give bit-identical results every time.
 */
const DIM = 8;
const SAMPLES = 256;

/** xorshift32: a tiny seeded generator in [0, 1). */
function rng(seed: number): () => number {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

interface State {
  seed: number;
  step: number;
  w: number[];
  v: number[];
}

export class QuadraticTrainer implements Trainer {
  private xs: number[][] = [];
  private ys: number[] = [];
  private state: State = { seed: 0, step: 0, w: [], v: [] };
  private dataSeed: number | null = null;

  /** Test knobs from the static params: a delay per step, and an lr above which train throws. */
  private delayMs = 0;
  private failAbove = Number.POSITIVE_INFINITY;

  init(params: Readonly<Record<string, unknown>>, seed: number): void {
    this.delayMs = typeof params.stepDelayMs === 'number' ? params.stepDelayMs : 0;
    this.failAbove =
      typeof params.failAboveLr === 'number' ? params.failAboveLr : Number.POSITIVE_INFINITY;
    this.makeData(seed);
    this.state = {
      seed,
      step: 0,
      w: new Array<number>(DIM).fill(0),
      v: new Array<number>(DIM).fill(0),
    };
  }

  /** The synthetic data set of a seed (rebuilt by `load` in a fresh process). */
  private makeData(seed: number): void {
    if (this.dataSeed === seed) return;
    this.dataSeed = seed;
    const r = rng(seed + 1);
    const truth = Array.from({ length: DIM }, () => r() * 2 - 1);
    this.xs = Array.from({ length: SAMPLES }, () => Array.from({ length: DIM }, () => r() * 2 - 1));
    this.ys = this.xs.map(
      (x) => x.reduce((s, xi, i) => s + xi * (truth[i] as number), 0) + (r() - 0.5) * 0.1,
    );
  }

  async train(
    from: number,
    to: number,
    hp: (step: number) => HyperparameterValues,
    signal: TrainSignal,
  ): Promise<void> {
    if (from !== this.state.step)
      throw new Error(`quadratic trainer: at step ${this.state.step}, asked to train from ${from}`);
    const { w, v } = this.state;
    for (let t = from; t < to; t++) {
      if (signal.cancelled) return;
      const h = hp(t);
      const lr = typeof h.lr === 'number' ? h.lr : 0.05;
      if (lr > this.failAbove)
        throw new Error(`learning rate ${lr} diverges (failAboveLr ${this.failAbove})`);
      if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
      const momentum = typeof h.momentum === 'number' ? h.momentum : 0.9;
      const batch = Math.max(1, typeof h.batchSize === 'number' ? Math.round(h.batchSize) : 32);
      for (let start = 0; start < SAMPLES; start += batch) {
        const end = Math.min(SAMPLES, start + batch);
        const grad = new Array<number>(DIM).fill(0);
        for (let n = start; n < end; n++) {
          const x = this.xs[n] as number[];
          let err = -(this.ys[n] as number);
          for (let i = 0; i < DIM; i++) err += (w[i] as number) * (x[i] as number);
          for (let i = 0; i < DIM; i++)
            grad[i] = (grad[i] as number) + (2 * err * (x[i] as number)) / (end - start);
        }
        for (let i = 0; i < DIM; i++) {
          v[i] = momentum * (v[i] as number) + (grad[i] as number);
          w[i] = (w[i] as number) - lr * (v[i] as number);
        }
      }
      this.state.step = t + 1;
    }
  }

  evaluate(): Record<string, number> {
    let sum = 0;
    for (let n = 0; n < SAMPLES; n++) {
      const x = this.xs[n] as number[];
      let err = -(this.ys[n] as number);
      for (let i = 0; i < DIM; i++) err += (this.state.w[i] as number) * (x[i] as number);
      sum += err * err;
    }
    return { loss: sum / SAMPLES };
  }

  save(): Uint8Array {
    const s = this.state;
    const floats = new Float64Array([this.delayMs, this.failAbove, s.seed, s.step, ...s.w, ...s.v]);
    return new Uint8Array(floats.buffer.slice(0));
  }

  load(bytes: Uint8Array): void {
    const floats = new Float64Array(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
    );
    this.delayMs = floats[0] as number;
    this.failAbove = floats[1] as number;
    const seed = floats[2] as number;
    this.makeData(seed);
    this.state = {
      seed,
      step: floats[3] as number,
      w: Array.from(floats.subarray(4, 4 + DIM)),
      v: Array.from(floats.subarray(4 + DIM, 4 + 2 * DIM)),
    };
  }
}
