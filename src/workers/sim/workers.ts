import stringify from 'fast-json-stable-stringify';
import type {
  CheckpointKey,
  EngineToWorker,
  FailureReason,
  TaskId,
  WireTask,
  WorkerId,
} from '../../engine/index.js';
import { InternalError, ValidationError } from '../../errors.js';
import { valueAt } from '../../schedule/index.js';
import { gpuAt, subscribe } from '../pool.js';
import type { GoneInfo, Gpu, Inventory, Unsubscribe, WorkerMessage, WorkerPool } from '../pool.js';
import { SlotLifecycle, SlotState } from '../slot.js';
import type { SimCosts } from './pool.js';
import { simEvaluate, simInit, simTrain } from './trainer.js';
import type { SimState } from './trainer.js';

/**
 * The phases a result's `seconds` has, every one present (0 when it did not run): the
 * same keys as the worker runtimes' (`agent/runtime.ts` PHASES).
 */
export const SIM_PHASES = ['start', 'init', 'load', 'save', 'train', 'evaluate'] as const;

/** Faults a `SimWorkerPool` injects, for tests of what drives it. */
export interface SimWorkerFaults {
  /**
   * Worker `id` fails to start: after its start time it is gone without registering,
   * having printed a line saying so (its exit code is 1).
   */
  readonly failStart?: (id: WorkerId) => boolean;
  /**
   * Simulated seconds a result of worker `id` for `task` spends on the wire: the worker
   * finished (it sent its progress and takes its next task at once), the result reaches
   * the pool that much later, and a cancel that reaches the worker in between no longer
   * stops it (the cancel races the result). Default 0.
   */
  readonly resultDelay?: (id: WorkerId, task: TaskId) => number;
}

export interface SimWorkerPoolOptions {
  /** The simulated trainer's costs (`simCosts(study)`), in simulated seconds. */
  readonly costs: SimCosts;
  /** The metric a result reports (`study.metric`), under its name. */
  readonly metric: { readonly name: string; readonly mode: 'min' | 'max' };
  /**
   * Real seconds per simulated second: every duration the pool waits (starts, tasks,
   * heartbeats, the grace of `stop` and `shutdown`) is simulated seconds times this.
   */
  readonly timeScale: number;
  /** Simulated seconds between a live worker's heartbeats. */
  readonly heartbeatSeconds: number;
  /** The simulated hosts and GPUs (`simInventory`); no GPUs: a CPU-only pool. */
  readonly inventory: Inventory;
  readonly faults?: SimWorkerFaults;
  /** Where worker output goes (default: nowhere; the last lines are kept for `GoneInfo`). */
  readonly log?: (worker: WorkerId, line: string) => void;
}

/** An inventory of `gpus` simulated GPUs spread over `hosts` hosts (sim-0, sim-1, ...). */
export function simInventory(
  gpus: number,
  options: { readonly hosts?: number; readonly memoryBytes?: number | null } = {},
): Inventory {
  const hosts = options.hosts ?? 1;
  if (!Number.isInteger(gpus) || gpus < 0)
    throw new ValidationError('gpus', 'an integer >= 0', gpus);
  if (!Number.isInteger(hosts) || hosts < 1)
    throw new ValidationError('hosts', 'an integer >= 1', hosts);
  const memoryBytes = options.memoryBytes === undefined ? 80 * 1024 ** 3 : options.memoryBytes;
  return {
    hosts: Array.from({ length: hosts }, (_, h) => {
      const name = `sim-${h}`;
      const mine = Math.floor(gpus / hosts) + (h < gpus % hosts ? 1 : 0);
      return {
        name,
        gpus: Array.from({ length: mine }, (_, device) => ({ host: name, device, memoryBytes })),
      };
    }),
  };
}

/** Lines of output kept for `GoneInfo`. */
const TAIL_LINES = 20;

/** The state a simulated worker holds in memory (like the worker runtime's `Held`). */
interface Held {
  readonly state: SimState;
  /** Canonical JSON of the params it was trained with. */
  readonly params: string;
  /** Checkpoint keys this exact state is known by. */
  readonly keys: Set<CheckpointKey>;
}

/** The task a worker runs now. */
interface Running {
  readonly task: WireTask;
  readonly timers: ReturnType<typeof setTimeout>[];
}

interface Slot {
  readonly id: WorkerId;
  readonly life: SlotLifecycle;
  /** The GPU index it was started on (a worker slot when the inventory has none). */
  readonly gpu: number;
  readonly where: Gpu | null;
  readonly share: number;
  registered: boolean;
  gone: boolean;
  /** It stopped heart-beating and answering (`silence`). */
  silent: boolean;
  /** It was told to shut down: it exits once its queued tasks are done. */
  exiting: boolean;
  /** Messages waiting for it to register. */
  readonly pending: EngineToWorker[];
  /** Tasks it received and has not started. */
  readonly queue: WireTask[];
  running: Running | null;
  held: Held | null;
  /** Simulated seconds of start-up, reported with its first task (then 0). */
  startup: number;
  readonly tail: string[];
  /** Timers that end with the slot (its start, its exit, a kill after a grace). */
  readonly timers: Set<ReturnType<typeof setTimeout>>;
  /** Results on the wire (`faults.resultDelay`): they end with the worker's stream. */
  readonly wire: Set<ReturnType<typeof setTimeout>>;
  heartbeat: ReturnType<typeof setInterval> | null;
  readonly goneWaiters: (() => void)[];
}

/** What running a task comes to, worked out when it starts. */
type Plan =
  | {
      readonly kind: 'done';
      /** Simulated seconds until it answers (its start-up excluded: that was waited already). */
      readonly wait: number;
      /** When each run ends (simulated seconds after the task starts), and its step. */
      readonly progress: readonly { readonly at: number; readonly step: number }[];
      readonly state: SimState;
      readonly params: string;
      readonly seconds: Readonly<Record<string, number>>;
      readonly metric: number;
    }
  | {
      readonly kind: 'failed';
      readonly wait: number;
      readonly reason: FailureReason;
      readonly message: string;
    };

/**
 * The `sim` backend of the WorkerPool port: simulated workers in this process, in real
 * time scaled by `timeScale`. A started slot registers after the trainer's start time
 * (or, with `faults.failStart`, is gone before registering); a registered worker
 * heart-beats every `heartbeatSeconds` and runs the tasks it is sent one at a time with
 * the simulated trainer, exactly as the discrete-event simulator (`SimPool`) does: a
 * state in memory per worker, checkpoints in a store the pool's workers share, a task's
 * duration from the costs at its start (sharing a GPU slows it down), the same metric.
 * A restore it cannot honour is a failed result like a real worker's: a checkpoint it
 * does not have (reason "checkpoint"), a memory state it does not hold (reason
 * "worker"). It answers `done` with `{[metric.name]: value}` and the seconds of each
 * phase; a cancelled task answers nothing (unless its result was on the wire already:
 * `faults.resultDelay`); `shutdown` makes it exit after its tasks; `kill` and `abort`
 * end it at once. Every slot follows `SlotLifecycle`, and no listener is ever called
 * from inside a pool method: events come from timers, like a real backend's.
 */
export class SimWorkerPool implements WorkerPool {
  private readonly slots = new Map<WorkerId, Slot>();
  /** The checkpoint store every worker of the pool reads and writes. */
  private readonly store = new Map<CheckpointKey, SimState>();
  /** Tasks training on each GPU index now (sharing slows each down). */
  private readonly onGpu = new Map<number, Set<TaskId>>();
  private readonly messageListeners: ((worker: WorkerId, m: WorkerMessage) => void)[] = [];
  private readonly goneListeners: ((worker: WorkerId, reason: string, info: GoneInfo) => void)[] =
    [];
  private readonly registeredListeners: ((worker: WorkerId) => void)[] = [];

  constructor(private readonly options: SimWorkerPoolOptions) {
    const positive = (path: string, v: number): void => {
      if (!(Number.isFinite(v) && v > 0)) throw new ValidationError(path, 'a number > 0', v);
    };
    positive('SimWorkerPoolOptions.timeScale', options.timeScale);
    positive('SimWorkerPoolOptions.heartbeatSeconds', options.heartbeatSeconds);
  }

  inventory(): Inventory {
    return this.options.inventory;
  }

  onMessage(listener: (worker: WorkerId, m: WorkerMessage) => void): Unsubscribe {
    return subscribe(this.messageListeners, listener);
  }

  onGone(listener: (worker: WorkerId, reason: string, info: GoneInfo) => void): Unsubscribe {
    return subscribe(this.goneListeners, listener);
  }

  onRegistered(listener: (worker: WorkerId) => void): Unsubscribe {
    return subscribe(this.registeredListeners, listener);
  }

  registered(id: WorkerId): boolean {
    const slot = this.slots.get(id);
    return slot !== undefined && slot.registered && !slot.gone;
  }

  state(id: WorkerId): SlotState | null {
    return this.slots.get(id)?.life.state ?? null;
  }

  /** The checkpoint keys the pool's store holds (sorted). */
  checkpoints(): string[] {
    return [...this.store.keys()].sort();
  }

  /** Deletes checkpoints nobody needs any more (the runner's `discard`). */
  discard(keys: readonly string[]): void {
    for (const k of keys) this.store.delete(k);
  }

  start(id: WorkerId, gpu: number, share: number, runtime: string | null = null): void {
    if (this.slots.has(id)) throw new InternalError(`worker ${id} started twice`);
    const where = gpuAt(this.options.inventory, gpu);
    const slot: Slot = {
      id,
      life: new SlotLifecycle(id),
      gpu,
      where,
      share,
      registered: false,
      gone: false,
      silent: false,
      exiting: false,
      pending: [],
      queue: [],
      running: null,
      held: null,
      startup: this.options.costs.startSeconds,
      tail: [],
      timers: new Set(),
      wire: new Set(),
      heartbeat: null,
      goneWaiters: [],
    };
    this.slots.set(id, slot);
    this.print(
      slot,
      `sim worker ${id}: starting on ${where === null ? `CPU slot ${gpu}` : `${where.host} GPU ${where.device}`} (share ${share}${runtime === null ? '' : `, runtime ${runtime}`})`,
    );
    this.after(slot, this.options.costs.startSeconds, () => {
      if (slot.silent) return; // hung before it registered: only a kill ends it
      if (this.options.faults?.failStart?.(id)) {
        this.print(slot, `sim worker ${id}: could not start (injected fault)`);
        this.gone(slot, 'its process exited with code 1');
        return;
      }
      this.register(slot);
    });
  }

  send(id: WorkerId, message: EngineToWorker): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.registered) {
      this.deliver(slot, message);
    } else {
      slot.life.queue(message);
      slot.pending.push(message);
    }
  }

  stop(id: WorkerId, reason: string, grace = 5): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.life.state === SlotState.starting) slot.life.to(SlotState.draining);
    this.send(id, { kind: 'shutdown', reason });
    this.after(slot, grace, () => {
      this.kill(id);
    });
  }

  kill(id: WorkerId): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.life.state !== SlotState.draining) slot.life.to(SlotState.draining);
    this.end(slot, 'its process was killed (SIGKILL)');
  }

  abort(id: WorkerId, message: string): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.life.state !== SlotState.draining) slot.life.to(SlotState.draining);
    this.end(slot, `its stream ended (${message})`);
  }

  /**
   * Worker `id` goes silent (a hung machine): no more heartbeats, no answer to anything,
   * and it does not exit on `shutdown` (only a kill ends it). The pool does not declare
   * it gone: whoever watches heartbeats does.
   */
  silence(id: WorkerId): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    slot.silent = true;
    this.hush(slot);
  }

  async shutdown(reason: string, grace = 5): Promise<void> {
    const waits = [...this.slots.values()].map(
      (slot) =>
        new Promise<void>((resolve) => {
          if (slot.gone) {
            resolve();
            return;
          }
          slot.goneWaiters.push(resolve);
          this.stop(slot.id, reason, grace);
        }),
    );
    await Promise.all(waits);
  }

  // ------------------------------------------------------------------ internals

  /** The worker stops doing anything: heartbeats, its task, results on the wire. */
  private hush(slot: Slot): void {
    if (slot.heartbeat !== null) clearInterval(slot.heartbeat);
    slot.heartbeat = null;
    if (slot.running) for (const t of slot.running.timers) clearTimeout(t);
    this.untrain(slot);
    slot.running = null;
    slot.queue.length = 0;
    for (const t of slot.wire) clearTimeout(t);
    slot.wire.clear();
  }

  /** Runs `fn` after `seconds` simulated seconds, unless the slot is gone first. */
  private after(slot: Slot, seconds: number, fn: () => void): void {
    const timer = setTimeout(
      () => {
        slot.timers.delete(timer);
        if (!slot.gone) fn();
      },
      Math.max(0, seconds * this.options.timeScale * 1000),
    );
    slot.timers.add(timer);
  }

  private print(slot: Slot, line: string): void {
    slot.tail.push(line);
    if (slot.tail.length > TAIL_LINES) slot.tail.shift();
    this.options.log?.(slot.id, line);
  }

  private register(slot: Slot): void {
    slot.registered = true;
    if (slot.life.state === SlotState.starting) slot.life.to(SlotState.idle);
    this.print(slot, `sim worker ${slot.id}: registered`);
    const every = this.options.heartbeatSeconds * this.options.timeScale * 1000;
    slot.heartbeat = setInterval(
      () => {
        this.emit(slot, { kind: 'heartbeat', taskId: slot.running?.task.taskId ?? null });
      },
      Math.max(1, every),
    );
    slot.heartbeat.unref();
    for (const m of slot.pending.splice(0)) this.deliver(slot, m);
    for (const l of this.registeredListeners) l(slot.id);
  }

  /** A message reaches a registered worker: the slot moves, then the worker acts on it. */
  private deliver(slot: Slot, message: EngineToWorker): void {
    slot.life.deliver(message);
    if (slot.silent) return;
    switch (message.kind) {
      case 'welcome':
        return;
      case 'run':
        // A worker told to exit closes after the tasks it had; later ones are lost with it.
        if (slot.exiting) return;
        slot.queue.push(message.task);
        if (slot.running === null) this.next(slot);
        return;
      case 'cancel': {
        if (slot.running?.task.taskId === message.taskId) {
          for (const t of slot.running.timers) clearTimeout(t);
          this.untrain(slot);
          slot.running = null;
          slot.held = null; // a cancelled task leaves the worker holding nothing
          this.next(slot);
          return;
        }
        const queued = slot.queue.findIndex((t) => t.taskId === message.taskId);
        if (queued >= 0) {
          slot.queue.splice(queued, 1);
          slot.held = null;
        }
        // Otherwise it answered already (its result may still be on the wire).
        return;
      }
      case 'shutdown':
        slot.exiting = true;
        this.exitIfDone(slot);
        return;
      case 'cut':
      case 'saveCut':
        // A simulated worker finishes what it runs: a valid answer to a cut.
        return;
    }
  }

  private emit(slot: Slot, m: WorkerMessage): void {
    if (slot.gone || slot.silent) return;
    if (m.kind === 'done' || m.kind === 'failed') slot.life.answered(m.taskId);
    for (const l of this.messageListeners) l(slot.id, m);
  }

  /** A worker told to exit does, once its tasks are done and its results sent. */
  private exitIfDone(slot: Slot): void {
    if (!slot.exiting || slot.silent || slot.running !== null) return;
    if (slot.queue.length > 0 || slot.wire.size > 0) return;
    this.end(slot, 'its process exited with code 0');
  }

  /** Starts the next queued task, if any (else exits when told to). */
  private next(slot: Slot): void {
    if (slot.running !== null) return; // a listener of the last result sent the next task
    const task = slot.queue.shift();
    if (!task) {
      this.exitIfDone(slot);
      return;
    }
    const plan = this.plan(slot, task);
    const running: Running = { task, timers: [] };
    slot.running = running;
    const scale = this.options.timeScale * 1000;
    if (plan.kind === 'done') {
      for (const p of plan.progress) {
        running.timers.push(
          setTimeout(
            () => {
              this.emit(slot, { kind: 'progress', taskId: task.taskId, step: p.step });
            },
            Math.max(0, p.at * scale),
          ),
        );
      }
    }
    running.timers.push(
      setTimeout(
        () => {
          if (slot.running !== running) return;
          this.untrain(slot);
          slot.running = null;
          let answer: WorkerMessage;
          if (plan.kind === 'done') {
            const keys = new Set<CheckpointKey>([task.endKey]);
            if (task.saveAfter !== null) {
              this.store.set(task.saveAfter, plan.state);
              keys.add(task.saveAfter);
            }
            slot.held = { state: plan.state, params: plan.params, keys };
            answer = {
              kind: 'done',
              taskId: task.taskId,
              metrics: { [this.options.metric.name]: plan.metric },
              seconds: plan.seconds,
            };
          } else {
            slot.held = null;
            answer = {
              kind: 'failed',
              taskId: task.taskId,
              message: plan.message,
              detail: '',
              reason: plan.reason,
            };
          }
          const delay = this.options.faults?.resultDelay?.(slot.id, task.taskId) ?? 0;
          if (delay > 0) {
            const timer = setTimeout(
              () => {
                slot.wire.delete(timer);
                this.emit(slot, answer);
                this.exitIfDone(slot);
              },
              delay * this.options.timeScale * 1000,
            );
            slot.wire.add(timer);
          } else {
            this.emit(slot, answer);
          }
          this.next(slot);
        },
        Math.max(0, plan.wait * scale),
      ),
    );
  }

  /** The task stops training on its GPU. */
  private untrain(slot: Slot): void {
    const id = slot.running?.task.taskId;
    if (id !== undefined) this.onGpu.get(slot.gpu)?.delete(id);
  }

  /**
   * Works out a task the way `SimPool.execute` does (and checks what the worker runtime
   * checks): save what it holds first, restore, train every run, save the end state.
   */
  private plan(slot: Slot, task: WireTask): Plan {
    const costs = this.options.costs;
    const seconds: Record<(typeof SIM_PHASES)[number], number> = {
      start: slot.startup,
      init: 0,
      load: 0,
      save: 0,
      train: 0,
      evaluate: 0,
    };
    slot.startup = 0;
    // What the task waits: its phases, but not its start-up (the slot waited that to register).
    const waited = (): number => seconds.load + seconds.save + seconds.train;
    const fail = (reason: FailureReason, message: string): Plan => {
      slot.held = null;
      return { kind: 'failed', wait: waited(), reason, message: `worker ${slot.id}: ${message}` };
    };
    const first = task.runs[0];
    if (!first) return fail('worker', `task ${task.taskId} has no stage runs`);
    const params = stringify(first.params);
    for (let k = 1; k < task.runs.length; k++) {
      const before = task.runs[k - 1];
      const run = task.runs[k];
      if (before && run && run.start !== before.end)
        return fail(
          'worker',
          `runs[${k}]: expected it to start where runs[${k - 1}] ends (${before.end}), got ${run.start}`,
        );
    }
    const held = slot.held;
    if (task.saveFirst !== null) {
      if (held === null)
        return fail('worker', `save_first ${task.saveFirst}: the worker holds no state to save`);
      this.store.set(task.saveFirst, held.state);
      held.keys.add(task.saveFirst);
      seconds.save = seconds.save + costs.saveSeconds;
    }
    let state: SimState;
    const r = task.restore;
    switch (r.from) {
      case 'memory':
        if (held === null)
          return fail('worker', `restore from memory ${r.key}: the worker holds no state`);
        if (!held.keys.has(r.key))
          return fail(
            'worker',
            `restore from memory ${r.key}: the worker holds ${[...held.keys].sort().join(', ')}`,
          );
        if (held.params !== params)
          return fail(
            'worker',
            `restore from memory ${r.key}: the held state was trained with other params`,
          );
        state = held.state;
        break;
      case 'checkpoint': {
        const saved = this.store.get(r.key);
        if (!saved) return fail('checkpoint', `checkpoint ${r.key} does not exist`);
        state = saved;
        seconds.load = costs.loadSeconds;
        break;
      }
      case 'init':
        state = simInit(first.params);
        break;
    }
    slot.held = null; // training changes the state; a cancel or failure leaves nothing
    const sharing = this.onGpu.get(slot.gpu) ?? new Set<TaskId>();
    sharing.add(task.taskId);
    this.onGpu.set(slot.gpu, sharing);
    const k = sharing.size;
    const throughput = costs.sharing[Math.min(k, costs.sharing.length) - 1] ?? 1;
    const slowdown = k / Math.max(throughput, 1e-9);
    const progress: { at: number; step: number }[] = [];
    let at = seconds.save + seconds.load;
    for (const run of task.runs) {
      if (state.step !== run.start)
        return fail(
          'worker',
          `stage ${run.stage} starts at step ${run.start}, but the state is at step ${state.step}`,
        );
      const values: Record<string, unknown> = {};
      for (const [h, c] of Object.entries(run.schedules)) values[h] = valueAt(c, run.start);
      const train = (run.end - run.start) * costs.stepSeconds(values) * slowdown;
      seconds.train = seconds.train + train;
      at += train;
      state = simTrain(state, run);
      progress.push({ at, step: run.end });
    }
    if (task.saveAfter !== null) seconds.save = seconds.save + costs.saveSeconds;
    const wait = waited();
    return {
      kind: 'done',
      wait,
      progress,
      state,
      params,
      seconds,
      metric: simEvaluate(state, this.options.metric.mode),
    };
  }

  /**
   * The worker ends: it does nothing more, and its slot is gone on the next turn of the
   * event loop (like a process exit, never inside the call that caused it).
   */
  private end(slot: Slot, reason: string): void {
    this.hush(slot);
    for (const t of slot.timers) clearTimeout(t);
    slot.timers.clear();
    this.after(slot, 0, () => {
      this.gone(slot, reason);
    });
  }

  private gone(slot: Slot, reason: string): void {
    if (slot.gone) return;
    this.hush(slot);
    for (const t of slot.timers) clearTimeout(t);
    slot.timers.clear();
    slot.gone = true;
    slot.life.to(SlotState.gone);
    const info: GoneInfo = { registered: slot.registered, output: [...slot.tail] };
    for (const l of this.goneListeners) l(slot.id, reason, info);
    for (const w of slot.goneWaiters.splice(0)) w();
  }
}
