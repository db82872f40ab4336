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
  /** Proof that the engine started this worker (STAGETREE_WORKER_SECRET), sent in Register. */
  readonly secret: string;
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
 * one at a time with ONE trainer kept alive across them (process reuse: a task that
 * restores from memory continues the trainer as it is; only a checkpoint restore loads
 * bytes). Trainer errors become TaskFailed with the trainer's message; the state is then
 * dropped, since it may be half-trained.
 */
export class WorkerAgent {
  private trainer: Trainer | null = null;
  /** Checkpoint key of the state the trainer holds, or null. */
  private held: string | null = null;
  private io: CheckpointIO | null = null;
  private running: number | null = null;
  private cancelled = new Set<number>();
  private queue: Promise<void> = Promise.resolve();
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  /** Results of tasks cancelled while they saved or evaluated: dropped, never sent. */
  dropped = 0;

  constructor(
    private readonly link: EnginePort,
    private readonly options: AgentOptions,
  ) {}

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
        holds: this.held,
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
        return;
      case 'shutdown':
        this.stopHeartbeat();
        void this.queue.then(() => {
          this.link.close();
          resolve(0);
        });
        return;
    }
  }

  private async execute(task: WireTask): Promise<void> {
    if (this.cancelled.has(task.taskId)) return;
    this.running = task.taskId;
    this.options.heartbeats?.setRunning(task.taskId);
    const seconds: Record<string, number> = {};
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
      if (!io) throw new Error('a task arrived before the engine welcomed this worker');
      if (task.saveFirst !== null) {
        const trainer = this.trainer;
        if (!trainer || this.held === null)
          throw new Error(`nothing in memory to save as ${task.saveFirst}`);
        await timed('save', () => save(task.saveFirst as string, io, trainer));
      }
      const first = task.runs[0];
      if (!first) throw new Error('a task without stages');
      const r = task.restore;
      if (r.from === 'memory') {
        if (this.held !== r.key || !this.trainer) {
          throw new Error(
            `the engine expected state ${r.key} in memory, this worker holds ${this.held ?? 'none'}`,
          );
        }
      } else if (r.from === 'checkpoint') {
        const trainer = (this.trainer ??= this.options.trainer());
        this.held = null;
        let bytes: Uint8Array;
        try {
          bytes = await io.load(r.key);
        } catch (e) {
          throw new CheckpointUnavailable(e instanceof Error ? e.message : String(e));
        }
        await timed('load', () => trainer.load(bytes));
      } else {
        const trainer = (this.trainer ??= this.options.trainer());
        this.held = null;
        const seed = typeof first.params.seed === 'number' ? first.params.seed : 0;
        await timed('init', () => trainer.init(first.params, seed));
      }
      const trainer = this.trainer;
      this.held = null;
      for (const run of task.runs) {
        const hps = Object.keys(run.schedules).sort();
        const hp = (step: number): HyperparameterValues => {
          if (isCancelled()) throw new Cancelled();
          const out: Record<string, number | string> = {};
          for (const h of hps) out[h] = valueAt(run.schedules[h] as Canonical, step);
          return out;
        };
        await timed('train', () => trainer.train(run.start, run.end, hp, signal));
        if (isCancelled()) throw new Cancelled();
        this.link.send({ kind: 'progress', taskId: task.taskId, step: run.end });
      }
      if (task.saveAfter !== null) {
        await timed('save', () => save(task.saveAfter as string, io, trainer));
      }
      const metrics = await timed('evaluate', () => trainer.evaluate());
      this.held = task.endKey;
      // A cancel that came while saving or evaluating: the engine has moved on.
      if (isCancelled()) {
        this.dropped++;
        return;
      }
      this.link.send({ kind: 'done', taskId: task.taskId, metrics: { ...metrics }, seconds });
    } catch (e) {
      this.held = null;
      this.trainer = null;
      if (!(e instanceof Cancelled) && !isCancelled()) {
        this.link.send({
          kind: 'failed',
          taskId: task.taskId,
          message: describeError(e),
          detail: e instanceof Error ? (e.stack ?? '') : '',
          reason:
            e instanceof CheckpointUnavailable
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
    }
  }
}
