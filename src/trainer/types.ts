/**
 * The TypeScript trainer API: what a user implements to train with stagetree. A worker
 * keeps one trainer alive across stages (process reuse) and drives it:
 *
 * - `init(params, seed)`: a fresh model for these static params (may be called again on
 *   the same instance: start over);
 * - `train(from, to, hp)`: train steps [from, to); `hp(step)` gives that step's
 *   hyperparameter values (already evaluated from the study's schedules);
 * - `evaluate()`: the metrics at the current step (the study's metric among them);
 * - `save()` / `load(bytes)`: the whole training state as bytes, and back. They must
 *   copy: bytes returned by `save()` may not change when training goes on, and `load`
 *   may not keep references into `bytes` it later mutates (two stages may load the same
 *   checkpoint).
 *
 * `load` follows `init`: on a checkpoint restore the worker calls `init(params, seed)`
 * with the task's params and then `load(bytes)`, skipping the `init` only when the
 * instance's last `init` was with the same params and no failed or cancelled task has
 * dropped the state since. So `load` only has to overwrite the state of an instance
 * `init` prepared (a model built, as a PyTorch trainer needs before `load_state_dict`);
 * one that rebuilds everything from the bytes (`QuadraticTrainer`) works too. The Python
 * runtime does the same (docs/python.md). The worker makes ONE instance and keeps it for
 * its whole life, also after a task failed.
 *
 * A deterministic trainer (same seed, same values, same results) gets the equivalence
 * guarantee: every trial's metrics under stage-tree execution equal running it alone.
 */
export type HyperparameterValues = Readonly<Record<string, number | string>>;

export interface TrainSignal {
  /** Set when the engine cancelled the task; stop at the next step you can. */
  readonly cancelled: boolean;
}

export interface Trainer {
  init(params: Readonly<Record<string, unknown>>, seed: number): void | Promise<void>;
  train(
    from: number,
    to: number,
    hp: (step: number) => HyperparameterValues,
    signal: TrainSignal,
  ): void | Promise<void>;
  evaluate(): Readonly<Record<string, number>> | Promise<Readonly<Record<string, number>>>;
  save(): Uint8Array | Promise<Uint8Array>;
  load(bytes: Uint8Array): void | Promise<void>;
}

/** How a worker makes trainers (a class with a no-argument constructor, or a function). */
export type TrainerFactory = () => Trainer;
