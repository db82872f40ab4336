/**
 * The reference side of equivalence tests: a trial trained alone from scratch, one step at
 * a time, with the hyperparameter values it must see at each step. The values come from a
 * function of the step that the test builds itself (for a fork: the source's values before
 * the fork step, the new ones from there), so the reference shares neither the engine's
 * stage cuts nor its canonical splices: only the sim trainer's per-step dynamics.
 */
import { constant, valueAt } from '../../src/schedule/index.js';
import type { Canonical, Value } from '../../src/schedule/index.js';
import { simEvaluate, simInit, simTrain } from '../../src/workers/sim/index.js';
import type { SimState } from '../../src/workers/sim/index.js';

/** Hyperparameter values at one step, by name. */
export type StepValues = Readonly<Record<string, Value>>;

const constants = new Map<Value, Canonical>();
function constantOf(v: Value): Canonical {
  let k = constants.get(v);
  if (k === undefined) {
    k = constant(v);
    constants.set(v, k);
  }
  return k;
}

/** A trial trained alone from step 0, memoised step by step. */
export class AloneRun {
  private readonly states: SimState[];

  constructor(
    private readonly params: Readonly<Record<string, unknown>>,
    private readonly valuesAt: (step: number) => StepValues,
    private readonly mode: 'min' | 'max',
  ) {
    this.states = [simInit(params)];
  }

  /** The study's metric after training steps [0, step) alone. */
  metricAt(step: number): number {
    while (this.states.length <= step) {
      const t = this.states.length - 1;
      const schedules: Record<string, Canonical> = {};
      for (const [h, v] of Object.entries(this.valuesAt(t))) schedules[h] = constantOf(v);
      const state = this.states[t] as SimState;
      this.states.push(
        simTrain(state, { stage: 'alone', start: t, end: t + 1, params: this.params, schedules }),
      );
    }
    return simEvaluate(this.states[step] as SimState, this.mode);
  }
}

/** The values of canonical schedules at a step (what a stage run trains with there). */
export function valuesOf(schedules: Readonly<Record<string, Canonical>>, step: number): StepValues {
  const out: Record<string, Value> = {};
  for (const h of Object.keys(schedules).sort()) out[h] = valueAt(schedules[h] as Canonical, step);
  return out;
}

/**
 * The identity of a training state by what produced it: the static params and the values
 * of every hyperparameter at each step before `end`. Two trials reach the same state at
 * `end` exactly when their signatures there are equal (for a deterministic trainer).
 */
export function stateSignature(
  params: Readonly<Record<string, unknown>>,
  valuesAt: (step: number) => StepValues,
  end: number,
): string {
  const steps: Value[][] = [];
  for (let t = 0; t < end; t++) {
    const v = valuesAt(t);
    steps.push(
      Object.keys(v)
        .sort()
        .flatMap((h) => [h, v[h] as Value]),
    );
  }
  const p = Object.keys(params)
    .sort()
    .map((k) => [k, params[k]]);
  return JSON.stringify([p, end, steps]);
}
