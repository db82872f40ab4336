import { valueAt } from '../../schedule/index.js';
import type { CheckpointKey, Task, TaskId, TaskResult, WorkerId } from '../../engine/index.js';
import { simEvaluate, simInit, simTrain } from './trainer.js';
import type { SimState } from './trainer.js';
import { InternalError } from '../../errors.js';

/** Costs of the simulated trainer, in seconds. */
export interface SimCosts {
  /** One step alone on a GPU, for these hyperparameter values. */
  stepSeconds(values: Readonly<Record<string, unknown>>): number;
  readonly startSeconds: number;
  readonly saveSeconds: number;
  readonly loadSeconds: number;
  /**
   * Total throughput of k stages sharing one GPU, relative to one alone (index k - 1):
   * each of them runs at curve[k-1] / k of full speed.
   */
  readonly sharing: readonly number[];
}

export interface SimOutcome {
  readonly duration: number;
  readonly result: TaskResult;
}

/**
 * Simulated workers: each holds a trainer state in memory, the checkpoint store holds
 * saved states. Executing a task really runs the simulated trainer over the task's
 * stages, from the state the engine says to restore, and refuses to restore a state it
 * does not have, so the engine's bookkeeping of memory and checkpoints is checked on
 * every task. Durations use the costs at the moment the task starts (sharing included).
 */
interface Pending {
  readonly worker: WorkerId;
  readonly gpu: number;
  state: SimState;
  saveAfter: CheckpointKey | null;
  /** For a cut: the task, its state before training, the seconds before training, its pace. */
  readonly task: Task;
  readonly from: SimState;
  readonly before: number;
  readonly slowdown: number;
}

export class SimPool {
  private readonly memory = new Map<WorkerId, SimState | null>();
  private readonly store = new Map<CheckpointKey, SimState>();
  private readonly onGpu = new Map<number, Set<TaskId>>();
  private readonly pending = new Map<TaskId, Pending>();

  constructor(
    private readonly costs: SimCosts,
    private readonly mode: 'min' | 'max',
  ) {}

  execute(task: Task): SimOutcome {
    let t = 0;
    const held = task.startProcess ? null : (this.memory.get(task.worker) ?? null);
    if (task.startProcess) t += this.costs.startSeconds;
    if (task.saveFirst !== null) {
      if (!held)
        throw new InternalError(
          `sim pool: worker ${task.worker} holds no state to save for ${task.saveFirst}`,
        );
      this.store.set(task.saveFirst, held);
      t += this.costs.saveSeconds;
    }
    const first = task.runs[0];
    if (!first) throw new InternalError(`sim pool: task ${task.id} has no stages`);
    let state: SimState;
    switch (task.restore.from) {
      case 'memory':
        if (!held)
          throw new InternalError(
            `sim pool: worker ${task.worker} holds no state for task ${task.id}`,
          );
        state = held;
        break;
      case 'checkpoint': {
        const saved = this.store.get(task.restore.key);
        if (!saved)
          throw new InternalError(
            `sim pool: no checkpoint ${task.restore.key} (stage ${task.restore.stage})`,
          );
        state = saved;
        t += this.costs.loadSeconds;
        break;
      }
      case 'init':
        state = simInit(first.params);
        break;
    }
    const from = state;
    const before = t;
    const sharing = this.onGpu.get(task.gpu) ?? new Set<TaskId>();
    sharing.add(task.id);
    this.onGpu.set(task.gpu, sharing);
    const k = sharing.size;
    const throughput = this.costs.sharing[Math.min(k, this.costs.sharing.length) - 1] ?? 1;
    const slowdown = k / Math.max(throughput, 1e-9);
    ({ state, t } = this.train(task.runs, from, before, slowdown));
    if (task.saveAfter !== null) t += this.costs.saveSeconds;
    this.memory.set(task.worker, null);
    this.pending.set(task.id, {
      worker: task.worker,
      gpu: task.gpu,
      state,
      saveAfter: task.saveAfter,
      task,
      from,
      before,
      slowdown,
    });
    return { duration: t, result: { metric: simEvaluate(state, this.mode) } };
  }

  private train(
    runs: Task['runs'],
    state: SimState,
    t: number,
    slowdown: number,
  ): { state: SimState; t: number } {
    for (const run of runs) {
      t += (run.end - run.start) * this.stepSeconds(run) * slowdown;
      state = simTrain(state, run);
    }
    return { state, t };
  }

  private stepSeconds(run: Task['runs'][number]): number {
    const values: Record<string, unknown> = {};
    for (const [h, c] of Object.entries(run.schedules)) values[h] = valueAt(c, run.start);
    return this.costs.stepSeconds(values);
  }

  /**
   * Where a simulated worker asked to cut task `taskId`, `elapsed` seconds after it
   * started, stops: the step after the one it is training, if that is inside its last
   * run (else null: it finishes).
   */
  cutPoint(taskId: TaskId, elapsed: number): number | null {
    const p = this.pending.get(taskId);
    if (!p) return null;
    const runs = p.task.runs;
    const last = runs[runs.length - 1] as Task['runs'][number];
    let t = p.before;
    for (const run of runs.slice(0, -1))
      t += (run.end - run.start) * this.stepSeconds(run) * p.slowdown;
    const per = this.stepSeconds(last) * p.slowdown;
    const done = per > 0 ? Math.max(0, Math.floor((elapsed - t) / per)) : 0;
    const step = last.start + done + 1;
    return step < last.end ? step : null;
  }

  /** Task `taskId` now ends at `step` and saves under `key`: its new duration and metric. */
  cut(taskId: TaskId, step: number, key: CheckpointKey): SimOutcome {
    const p = this.pending.get(taskId);
    if (!p) throw new InternalError(`sim pool: task ${taskId} is not running`);
    const runs = p.task.runs.map((r, i) =>
      i === p.task.runs.length - 1 ? { ...r, end: step } : r,
    );
    const { state, t } = this.train(runs, p.from, p.before, p.slowdown);
    p.state = state;
    p.saveAfter = key;
    return {
      duration: t + this.costs.saveSeconds,
      result: { metric: simEvaluate(state, this.mode) },
    };
  }

  /** The task's time is up: the worker now holds its end state. */
  finish(taskId: TaskId): void {
    const p = this.take(taskId);
    this.memory.set(p.worker, p.state);
    if (p.saveAfter !== null) this.store.set(p.saveAfter, p.state);
  }

  /** The engine cancelled the task: its partial state is gone. */
  cancel(taskId: TaskId): void {
    const p = this.take(taskId);
    this.memory.set(p.worker, null);
  }

  private take(taskId: TaskId): Pending {
    const p = this.pending.get(taskId);
    if (!p) throw new InternalError(`sim pool: task ${taskId} is not running`);
    this.pending.delete(taskId);
    this.onGpu.get(p.gpu)?.delete(taskId);
    return p;
  }
}
