import stringify from 'fast-json-stable-stringify';
import { describeError, ErrorCode, StagetreeError } from '../errors.js';
import { PROTOCOL } from '../engine/protocol.js';
import type { EnginePort, EngineToWorker, WireTask } from '../engine/index.js';
import { valueAt } from '../schedule/index.js';
import type { Canonical } from '../schedule/index.js';
import type { HyperparameterValues, Trainer, TrainerFactory } from '../trainer/index.js';

/** Where a worker reads and writes checkpoints (the store's file format; injected). */
export interface CheckpointIO {
  save(key: string, bytes: Uint8Array): Promise<void>;
  load(key: string): Promise<Uint8Array>;
}

export interface AgentOptions {
  readonly workerId: string;
  readonly gpus: readonly number[];
  readonly gpuShare: number;
  readonly trainer: TrainerFactory;
  /** The checkpoint directory comes from the engine's Welcome. */
  readonly checkpoints: (dir: string) => CheckpointIO;
  /** Monotonic seconds, for the phase timings a task reports. */
  readonly clock: () => number;
  /**
   * The clock's reading when the process started: the first task then reports the
   * start-up (until the Welcome) as its `start` seconds. Default: `start` is 0.
   */
  readonly startedAt?: number;
  /** Proof that the engine started this worker (STAGETREE_WORKER_SECRET), sent in Register. */
  readonly secret: string;
  /** Seconds a chunk of training aims at (default `CHUNK_SECONDS`). */
  readonly chunkSeconds?: number;
  /**
   * Heart-beats sent by someone the trainer cannot block (the worker's link thread);
   * the agent then only publishes the task it runs. Default: the agent heart-beats
   * itself (on its own thread: in-process tests).
   */
  readonly heartbeats?: {
    setRunning(taskId: number | null): void;
    /** Cancels that arrived while the trainer held the thread. */
    cancelled(taskId: number): boolean;
  };
}

class Cancelled extends Error {}

/** A checkpoint could not be read: the engine re-computes it rather than retrying. */
class CheckpointUnavailable extends Error {}

/** The machine failed a checkpoint write (folder not writable, disk full): not the trainer. */
class EnvironmentFailure extends Error {}

/**
 * The engine's bookkeeping and the worker's state disagree (a memory restore of a state
 * the worker does not hold, runs that do not continue from the held step): reason
 * "worker". The engine forgets what it thought the worker held and re-computes.
 */
class WorkerMismatch extends Error {}

/**
 * TaskDone.seconds keys, every one present (0 when the phase did not run): process
 * start-up (first task only), init(), checkpoint read and load(), save() and write,
 * train(), evaluate(). The same keys as the Python runtime's.
 */
export const PHASES = ['start', 'init', 'load', 'save', 'train', 'evaluate'] as const;

/**
 * A task's runs are trained in chunks of about this many seconds (one `train()` call
 * each, sized by the pace of the task's last chunk; a task's first chunk is one step):
 * the points where progress is reported and a `cut` can stop a task (a paused study's
 * stage stops within about this long). Long enough that a trainer's per-call cost
 * (a data loader's start, say) stays small. `STAGETREE_CHUNK_SECONDS` sets it for a
 * worker; the Python runtime's is the same.
 */
export const CHUNK_SECONDS = 10;

/** The environment variable that sets a worker's chunk length in seconds. */
export const CHUNK_SECONDS_ENV = 'STAGETREE_CHUNK_SECONDS';

/** The steps of the next chunk, at `secondsPerStep` (null: not measured yet). */
export function chunkSteps(
  secondsPerStep: number | null,
  left: number,
  chunkSeconds = CHUNK_SECONDS,
): number {
  if (secondsPerStep === null) return Math.min(1, left);
  if (secondsPerStep <= 0) return left;
  return Math.min(left, Math.max(1, Math.floor(chunkSeconds / secondsPerStep)));
}

/** The state the trainer holds in memory. */
interface Held {
  /** Canonical JSON of the params it was trained with. */
  readonly params: string;
  /** The step it is at; null after a checkpoint load (the file does not say). */
  step: number | null;
  /** Checkpoint keys this exact state is known by (end key, saved or loaded). */
  readonly keys: Set<string>;
}

/** JSON with object keys sorted at every level: equal params give equal text. */
const canonicalJson = (value: unknown): string => stringify(value);

/** Error codes of a write that fails because of the machine, not the trainer. */
const ENVIRONMENT_CODES = new Set([
  'EACCES',
  'EPERM',
  'EROFS',
  'ENOSPC',
  'EDQUOT',
  'ENOTDIR',
  'ENOENT',
  'EEXIST',
  'EISDIR',
]);

function environmental(e: unknown): boolean {
  if (e instanceof StagetreeError) return e.code === ErrorCode.io;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && ENVIRONMENT_CODES.has(code);
}

/**
 * The TypeScript worker runtime: registers with the engine, heart-beats, and runs tasks
 * one at a time with ONE trainer instance kept alive across them (process reuse: a task
 * that restores from memory continues the trainer as it is). What it does is what the
 * Python runtime (`python/stagetree/worker.py`) does; `test/e2e/runtime-conformance`
 * checks both against one script:
 *
 * - restore `init`: `init(params, seed)`; restore `checkpoint`: the checkpoint is read,
 *   then `init(params, seed)` unless the instance's last init that still stands had the
 *   same params, then `load(bytes)` (a missing or corrupt checkpoint: reason
 *   "checkpoint"); restore `memory`: the held state must be known by that key and have
 *   the same params (else reason "worker");
 * - every run must start where the state is (the previous run's end, step 0 after init,
 *   the held step after a memory restore; unknown after a checkpoint load), else reason
 *   "worker";
 * - trainer errors become TaskFailed with reason "trainer" and the trainer's message; a
 *   failed or cancelled task drops the state (it may be half-trained), and the next
 *   checkpoint restore calls init again.
 */
export class WorkerAgent {
  private trainer: Trainer | null = null;
  /** The state the trainer holds, or null. */
  private held: Held | null = null;
  /** Canonical params of the trainer's last init() that still stands, or null. */
  private initialized: string | null = null;
  private io: CheckpointIO | null = null;
  private running: number | null = null;
  private cancelled = new Set<number>();
  /** Tasks the engine asked to cut short (`cut`), until they end. */
  private cuts = new Set<number>();
  /** A cut task waiting for its `saveCut`: the key, or null when it was cancelled instead. */
  private awaitingSave: { taskId: number; answer: (key: string | null) => void } | null = null;
  private queue: Promise<void> = Promise.resolve();
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  /** Seconds from the process start to the Welcome, reported with the first task. */
  private startup: number | null = null;
  /** Results of tasks cancelled while they saved or evaluated: dropped, never sent. */
  dropped = 0;
  /** The id the engine knows this worker by (its Welcome's, when it names one). */
  private workerId: string;

  constructor(
    private readonly link: EnginePort,
    private readonly options: AgentOptions,
  ) {
    this.workerId = options.workerId;
  }

  /** Runs until the engine says shutdown (0) or the stream breaks (1). */
  run(): Promise<number> {
    return new Promise<number>((resolve) => {
      this.link.onClose((error) => {
        this.stopHeartbeat();
        resolve(error === null ? 0 : 1);
      });
      this.link.onMessage((m) => {
        this.handle(m, resolve);
      });
      this.link.send({
        kind: 'register',
        workerId: this.options.workerId,
        language: 'typescript',
        protocol: PROTOCOL,
        pid: process.pid,
        gpus: this.options.gpus,
        gpuShare: this.options.gpuShare,
        holds: null,
        secret: this.options.secret,
      });
    });
  }

  private stopHeartbeat(): void {
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  private handle(m: EngineToWorker, resolve: (code: number) => void): void {
    switch (m.kind) {
      case 'welcome':
        this.io = this.options.checkpoints(m.checkpointDir);
        if (m.workerId !== '') this.workerId = m.workerId;
        if (this.options.startedAt !== undefined && this.startup === null)
          this.startup = Math.max(0, this.options.clock() - this.options.startedAt);
        this.stopHeartbeat();
        if (this.options.heartbeats) return;
        this.heartbeat = setInterval(
          () => {
            this.link.send({ kind: 'heartbeat', taskId: this.running });
          },
          Math.max(10, m.heartbeatSeconds * 1000),
        );
        this.heartbeat.unref();
        return;
      case 'run':
        this.queue = this.queue.then(() => this.execute(m.task));
        return;
      case 'cancel':
        this.cancelled.add(m.taskId);
        if (this.awaitingSave?.taskId === m.taskId) this.awaitingSave.answer(null);
        return;
      case 'cut':
        this.cuts.add(m.taskId);
        return;
      case 'saveCut':
        // Ignored unless that task waits for it (a late or stray answer changes nothing).
        if (this.awaitingSave?.taskId === m.taskId) this.awaitingSave.answer(m.key);
        return;
      case 'shutdown':
        this.stopHeartbeat();
        this.awaitingSave?.answer(null);
        void this.queue.then(() => {
          this.link.close();
          resolve(0);
        });
        return;
    }
  }

  /** Forgets the held state; the next checkpoint restore calls init() again. */
  private dropState(): void {
    this.held = null;
    this.initialized = null;
  }

  private async execute(task: WireTask): Promise<void> {
    if (this.cancelled.has(task.taskId)) {
      // Cancelled before it started: "cancelled" always leaves the worker holding nothing.
      this.cancelled.delete(task.taskId);
      this.cuts.delete(task.taskId);
      this.dropState();
      return;
    }
    this.running = task.taskId;
    this.options.heartbeats?.setRunning(task.taskId);
    const seconds: Record<string, number> = Object.fromEntries(PHASES.map((p) => [p, 0]));
    if (this.startup !== null) {
      seconds.start = this.startup;
      this.startup = 0;
    }
    const clock = this.options.clock;
    const timed = async <T>(phase: string, fn: () => T | Promise<T>): Promise<T> => {
      const t0 = clock();
      try {
        return await fn();
      } finally {
        seconds[phase] = (seconds[phase] ?? 0) + (clock() - t0);
      }
    };
    const shared = this.options.heartbeats;
    const isCancelled = (): boolean =>
      this.cancelled.has(task.taskId) || (shared?.cancelled(task.taskId) ?? false);
    const save = async (key: string, io: CheckpointIO, trainer: Trainer): Promise<void> => {
      const bytes = await trainer.save();
      try {
        await io.save(key, bytes);
      } catch (e) {
        if (environmental(e))
          throw new EnvironmentFailure(`cannot write checkpoint ${key}: ${describeError(e)}`);
        throw e;
      }
    };
    const signal = {
      get cancelled(): boolean {
        return isCancelled();
      },
    };
    try {
      const io = this.io;
      if (!io) throw new WorkerMismatch('a task arrived before the engine welcomed this worker');
      const first = task.runs[0];
      if (!first) throw new WorkerMismatch(`task ${task.taskId} has no stage runs`);
      const params = canonicalJson(first.params);
      task.runs.forEach((run, k) => {
        const before = task.runs[k - 1];
        if (before && run.start !== before.end)
          throw new WorkerMismatch(
            `runs[${k}]: expected it to start where runs[${k - 1}] ends (${before.end}), got ${run.start}`,
          );
        if (k > 0 && canonicalJson(run.params) !== params)
          throw new WorkerMismatch(`runs[${k}]: params differ from runs[0] within one task`);
      });
      const trainer = (this.trainer ??= this.options.trainer());
      if (task.saveFirst !== null) {
        const held = this.held;
        if (held === null)
          throw new WorkerMismatch(
            `save_first ${task.saveFirst}: the worker holds no state to save`,
          );
        await timed('save', () => save(task.saveFirst as string, io, trainer));
        held.keys.add(task.saveFirst);
      }
      const r = task.restore;
      if (r.from === 'memory') {
        this.checkMemory(r.key, params);
      } else if (r.from === 'checkpoint') {
        const t0 = clock();
        let bytes: Uint8Array;
        try {
          bytes = await io.load(r.key);
        } catch (e) {
          throw new CheckpointUnavailable(e instanceof Error ? e.message : String(e));
        }
        seconds.load = (seconds.load ?? 0) + (clock() - t0);
        this.held = null;
        // load() overwrites the state of an instance init() prepared with these params.
        if (this.initialized !== params) await this.init(trainer, first.params, params, timed);
        await timed('load', () => trainer.load(bytes));
        this.held = { params, step: null, keys: new Set([r.key]) };
      } else {
        this.held = null;
        await this.init(trainer, first.params, params, timed);
        this.held = { params, step: 0, keys: new Set() };
      }
      const held = this.held as Held;
      let cutKey: string | null = null;
      let pace: number | null = null; // seconds per step of the task's last chunk
      for (const [k, run] of task.runs.entries()) {
        if (held.step !== null && run.start !== held.step)
          throw new WorkerMismatch(
            `stage ${run.stage} starts at step ${run.start}, but the state is at step ${held.step}`,
          );
        if (isCancelled()) throw new Cancelled();
        const hps = Object.keys(run.schedules).sort();
        const hp = (step: number): HyperparameterValues => {
          if (isCancelled()) throw new Cancelled();
          const out: Record<string, number | string> = {};
          for (const h of hps) out[h] = valueAt(run.schedules[h] as Canonical, step);
          return out;
        };
        held.keys.clear(); // training changes the state
        for (let at = run.start; at < run.end;) {
          const to: number = at + chunkSteps(pace, run.end - at, this.options.chunkSeconds);
          held.step = null;
          const before = seconds.train ?? 0;
          await timed('train', () => trainer.train(at, to, hp, signal));
          pace = ((seconds.train ?? 0) - before) / (to - at);
          if (isCancelled()) throw new Cancelled();
          held.step = to;
          at = to;
          this.link.send({ kind: 'progress', taskId: task.taskId, step: to });
          // Let messages in (a synchronous trainer gives the event loop no turn).
          await new Promise<void>((r) => setImmediate(r));
          if (isCancelled()) throw new Cancelled();
          if (k === task.runs.length - 1 && to < run.end && this.cuts.has(task.taskId)) {
            cutKey = await this.cutAt(task.taskId, to);
            if (cutKey === null) throw new Cancelled();
            break;
          }
        }
      }
      if (cutKey !== null) {
        // Cut short: the task now ends here, saved under the engine's key.
        await timed('save', () => save(cutKey, io, trainer));
        held.keys.add(cutKey);
      } else {
        if (task.saveAfter !== null) {
          await timed('save', () => save(task.saveAfter as string, io, trainer));
          held.keys.add(task.saveAfter);
        }
        held.keys.add(task.endKey);
      }
      const metrics = await timed('evaluate', () => trainer.evaluate());
      // A cancel that came while saving or evaluating: the engine has moved on.
      if (isCancelled()) {
        this.dropped++;
        this.dropState();
        return;
      }
      this.link.send({ kind: 'done', taskId: task.taskId, metrics: { ...metrics }, seconds });
    } catch (e) {
      this.dropState();
      if (!(e instanceof Cancelled) && !isCancelled()) {
        const mismatch = e instanceof WorkerMismatch;
        this.link.send({
          kind: 'failed',
          taskId: task.taskId,
          message: mismatch ? `worker ${this.workerId}: ${e.message}` : describeError(e),
          detail: mismatch
            ? "the engine's view of this worker and the worker's own state differ"
            : e instanceof Error
              ? (e.stack ?? '')
              : '',
          reason: mismatch
            ? 'worker'
            : e instanceof CheckpointUnavailable
              ? 'checkpoint'
              : e instanceof EnvironmentFailure
                ? 'environment'
                : 'trainer',
        });
      }
    } finally {
      this.running = null;
      this.options.heartbeats?.setRunning(null);
      this.cancelled.delete(task.taskId);
      this.cuts.delete(task.taskId);
    }
  }

  /** Tells the engine the task stopped at `step`; resolves with the key to save it under. */
  private cutAt(taskId: number, step: number): Promise<string | null> {
    return new Promise((resolve) => {
      this.awaitingSave = {
        taskId,
        answer: (key) => {
          this.awaitingSave = null;
          resolve(key);
        },
      };
      this.link.send({ kind: 'cutAt', taskId, step });
    });
  }

  private async init(
    trainer: Trainer,
    raw: Readonly<Record<string, unknown>>,
    params: string,
    timed: (phase: string, fn: () => void | Promise<void>) => Promise<void>,
  ): Promise<void> {
    this.initialized = null;
    const seed = typeof raw.seed === 'number' ? raw.seed : 0;
    await timed('init', () => trainer.init(raw, seed));
    this.initialized = params;
  }

  /** A memory restore: the held state must be known by `key` and have the same params. */
  private checkMemory(key: string, params: string): void {
    const held = this.held;
    if (held === null)
      throw new WorkerMismatch(`restore from memory ${key}: the worker holds no state`);
    if (held.keys.size > 0 && !held.keys.has(key))
      throw new WorkerMismatch(
        `restore from memory ${key}: the worker holds ${[...held.keys].sort().join(', ')}`,
      );
    if (held.params !== params)
      throw new WorkerMismatch(
        `restore from memory ${key}: the held state was trained with other params`,
      );
  }
}
