import { Engine, feedLog, toWireTask } from '../engine/index.js';
import type {
  Commands,
  EngineOptions,
  LogEntry,
  SubmitOptions,
  Task,
  TaskId,
  WorkerId,
} from '../engine/index.js';
import { ExecutorClosedError } from '../errors.js';
import type { Study } from '../study/index.js';
import type { Tuner } from '../tuner/index.js';
import type { GoneInfo, WorkerMessage, WorkerPool } from './pool.js';

/** Until a task's duration has been measured, its time limit (seconds) when the study sets none. */
export const UNMEASURED_TASK_LIMIT = 6 * 3600;
/** The least time limit derived from measurements (seconds). */
export const TASK_LIMIT_FLOOR = 300;
/** A derived time limit is this many times the task's expected duration. */
export const TASK_LIMIT_FACTOR = 10;
/** Workers in a row that die before registering before the run stops as an environment failure. */
export const START_FAILURES_TO_STOP = 3;

/** What every run against a pool needs: the pool, a clock and the store's sink. */
interface PoolRunOptions {
  readonly pool: WorkerPool;
  /** Seconds, monotonic: the only clock the run reads. */
  readonly clock: () => number;
  /** Receives every new event-log entry, in order, as soon as it exists. */
  readonly sink: (entries: readonly LogEntry[]) => void;
  /** What a worker reported with a result (phase seconds, a traceback), before its entry is logged. */
  readonly onResult?: (
    task: TaskId,
    info: { readonly seconds: Readonly<Record<string, number>>; readonly detail: string },
  ) => void;
  /** A worker silent for this long is declared dead. Default 30 s. */
  readonly heartbeatTimeout?: number;
  /** Deletes checkpoints nobody can need any more (called every few completed stages). */
  readonly discard?: (keys: readonly string[]) => void;
  /** Aborting it stops the run: no new work, workers stopped, every study left resumable. */
  readonly signal?: AbortSignal;
}

/** What an `Execution` needs: the engine, besides the pool, clock and sink. */
export interface ExecutionOptions extends PoolRunOptions {
  /** A fresh engine, or one `replay` / `feedLog` fed a stored log (then `begin` with that log). */
  readonly engine: Engine;
  /** Called after each batch of decisions (a study may have finished). */
  readonly onChange?: () => void;
  /**
   * Keep going when every study has finished (an executor waiting for more studies);
   * `ended` then resolves only on `stop`. Default: end when the engine is done.
   */
  readonly stayOpen?: boolean;
}

/** One study run to its end (`runWithPool`). */
export interface RunOptions extends PoolRunOptions {
  readonly study: Study;
  readonly tuner: Tuner;
  readonly engine: EngineOptions;
  /** The stored log of an earlier run of this study to resume from. */
  readonly resumeFrom?: readonly LogEntry[];
  /**
   * An engine (with its own tuner) that `replay` already fed `resumeFrom`: the run goes
   * on from it instead of feeding the log to a fresh engine a second time.
   */
  readonly replayed?: Engine;
  /** States trained by an earlier run (checkpoint key -> metric) the engine may reuse. */
  readonly offers?: ReadonlyMap<string, number>;
}

/** Why a run ended before its study finished. */
export type RunStop =
  | { readonly kind: 'interrupted'; readonly reason: string }
  | { readonly kind: 'environment'; readonly message: string };

export interface RunResult {
  readonly engine: Engine;
  /** Seconds the run took (wall clock). */
  readonly seconds: number;
  /** Null when the study finished; else why the run stopped (the study stays resumable). */
  readonly stopped: RunStop | null;
  /** Results of tasks no longer running on their worker (cancelled or timed out), dropped. */
  readonly lateResults: number;
  /** Workers whose stream was ended for a protocol violation (a result for a task they do not run). */
  readonly protocolViolations: number;
}

/**
 * The time limit of a task (seconds): its study's `taskTimeout` (the largest, when several
 * studies demand it and set one), or derived from measured step times.
 */
export function taskLimit(
  studies: Study | readonly Study[],
  steps: number,
  secondsPerStep: number | null,
): number {
  const set = (Array.isArray(studies) ? (studies as readonly Study[]) : [studies as Study])
    .map((x) => x.taskTimeout)
    .filter((x): x is number => x !== null);
  if (set.length > 0) return Math.max(...set);
  if (secondsPerStep === null) return UNMEASURED_TASK_LIMIT;
  return Math.max(TASK_LIMIT_FLOOR, TASK_LIMIT_FACTOR * secondsPerStep * steps);
}

/** Seconds to hold back the n-th retry of a stage whose trainer failed (0.5 s doubling to 30 s). */
export function retryDelay(failures: number): number {
  return failures <= 0 ? 0 : Math.min(30, 0.5 * 2 ** (failures - 1));
}

interface Sent {
  readonly worker: WorkerId;
  /** Steps it trains (fewer once it is cut short). */
  steps: number;
  /** The engine asked to cut it short (sent with the task if it was held back). */
  cut: boolean;
  readonly stage: string;
  /** When it was sent (null while held back for a retry delay). */
  sentAt: number | null;
  /** When it reached a registered worker: its time limit counts from here. */
  reachedAt: number | null;
  timer: ReturnType<typeof setTimeout> | null;
}

/**
 * Drives an engine in real time against a worker pool: the engine decides, the pool
 * executes, every decision goes to `sink` (the store) at once. It serves one study or
 * several (`submit`, `cancel`): the engine keeps the studies apart, the execution only
 * moves messages, time limits and heartbeats between it and the pool.
 *
 * What workers send is checked against what the engine sent them: a result for a task
 * that was cancelled or timed out on that worker is dropped and counted; a result for a
 * task the worker is not running is a protocol violation that ends its stream (the
 * worker is then lost) and never reaches the engine. A task running past its time limit
 * fails (`timed out after N s`, retried like any failure) and its worker is killed. A
 * retried stage is held back a little longer after each failure. A failure of the
 * environment (a worker cannot write checkpoints, workers die before registering) or an
 * abort of `signal` stops the execution at once: no new work, every worker stopped, the
 * log ends where it was (resumable).
 */
export class Execution {
  readonly engine: Engine;
  /** Resolves when the engine is done (unless `stayOpen`) or the execution stopped. */
  readonly ended: Promise<void>;
  private readonly options: ExecutionOptions;
  private readonly pool: WorkerPool;
  private readonly sent = new Map<TaskId, Sent>();
  /** Tasks ended on a worker by the engine or by a time limit: a late result is expected. */
  private readonly ended_ = new Map<WorkerId, Set<TaskId>>();
  private readonly lastSeen = new Map<WorkerId, number>();
  private readonly failures = new Map<string, number>();
  /** The studies that demanded each running task (several studies: from its log entry). */
  private readonly taskStudies = new Map<TaskId, readonly string[]>();
  private flushed = 0;
  private completions = 0;
  private offset = 0;
  private stoppedWhy: RunStop | null = null;
  private lateResults = 0;
  private protocolViolations = 0;
  private startFailures = 0;
  private secondsPerStep: number | null = null;
  private resolveEnded: () => void = () => undefined;
  private readonly unsubscribe: (() => void)[] = [];
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private startedAt = 0;
  private readonly onAbort = (): void => {
    const reason: unknown = this.options.signal?.reason;
    this.stop({ kind: 'interrupted', reason: typeof reason === 'string' ? reason : 'interrupted' });
  };

  constructor(options: ExecutionOptions) {
    this.options = options;
    this.engine = options.engine;
    this.pool = options.pool;
    this.ended = new Promise<void>((resolve) => {
      this.resolveEnded = resolve;
    });
  }

  /** Seconds on the log's time line. */
  now(): number {
    return this.offset + this.options.clock();
  }

  /** Why the execution stopped before its studies finished, or null. */
  get stopped(): RunStop | null {
    return this.stoppedWhy;
  }

  /**
   * Starts: a fresh engine starts its first study at time 0; with `resumeFrom` (the
   * stored log `engine` was fed, by `replay` or `feedLog`), time goes on from the log's
   * last instant and the earlier run's workers are declared lost (their tasks are
   * rescheduled from the last saved state). `offers`: states trained by an earlier run.
   */
  begin(resumeFrom: readonly LogEntry[] = [], offers?: ReadonlyMap<string, number>): void {
    const { engine } = this;
    this.listen();
    this.startedAt = this.options.clock();
    if (resumeFrom.length > 0) {
      // Offers count from here on (the log's own reuses were offered by feedLog).
      for (const [key, metric] of offers ?? []) engine.offer(key, metric);
      this.flushed = Math.min(engine.log.length, resumeFrom.length);
      this.offset = (resumeFrom[resumeFrom.length - 1]?.t ?? 0) - this.options.clock();
      for (const e of resumeFrom) this.noteEntry(e);
      // The earlier run's workers are gone with it (said only when something is left to
      // run: a finished log run again gains no entries).
      if (!engine.done || this.options.stayOpen)
        for (const w of engine.inspect().workers)
          this.apply(engine.workerLost(this.now(), w.id, 'the engine restarted'));
      this.apply(engine.poke(this.now()));
    } else {
      this.offset = -this.options.clock();
      for (const [key, metric] of offers ?? []) engine.offer(key, metric);
      this.apply(engine.start(this.now()));
    }
    this.check();
    if (this.options.signal?.aborted) this.onAbort();
    this.options.signal?.addEventListener('abort', this.onAbort, { once: true });
    this.watchdog = setInterval(() => this.watch(), 1000);
    this.watchdog.unref();
  }

  /** Adds a study to the running engine (see `Engine.submit`). */
  submit(study: Study, tuner: Tuner, options: SubmitOptions = {}): void {
    if (this.stoppedWhy) throw new ExecutorClosedError(study.name, 'the executor has stopped');
    this.apply(this.engine.submit(this.now(), study, tuner, options));
    this.check();
  }

  /** Cancels a study (see `Engine.cancelStudy`); its trials stop, other studies go on. */
  cancel(name: string): void {
    if (this.stoppedWhy) return;
    this.apply(this.engine.cancelStudy(this.now(), name));
    this.check();
  }

  /** Pauses a study (see `Engine.pauseStudy`). */
  pause(name: string): void {
    if (this.stoppedWhy) return;
    this.apply(this.engine.pauseStudy(this.now(), name));
    this.check();
  }

  /** Resumes a paused study (see `Engine.resumeStudy`). */
  resume(name: string): void {
    if (this.stoppedWhy) return;
    this.apply(this.engine.resumeStudy(this.now(), name));
    this.check();
  }

  /** Stops the execution now: no new work; `close` then stops the workers. */
  stop(why: RunStop): void {
    if (this.stoppedWhy) return;
    this.flush();
    this.stoppedWhy = why;
    for (const s of this.sent.values()) if (s.timer) clearTimeout(s.timer);
    this.resolveEnded();
  }

  /**
   * Ends the execution: waits for `ended`, then shuts the pool down (at once, cancelling
   * what runs, when it stopped early) and returns what happened.
   */
  async close(): Promise<RunResult> {
    await this.ended;
    if (this.watchdog) clearInterval(this.watchdog);
    this.options.signal?.removeEventListener('abort', this.onAbort);
    this.flush();
    const current = this.stoppedWhy;
    if (current === null) {
      await this.pool.shutdown('the study is finished');
    } else {
      // Stop everything now: cancel what runs, ask every worker to exit, kill stragglers.
      for (const [id, s] of this.sent)
        if (s.sentAt !== null) this.pool.send(s.worker, { kind: 'cancel', taskId: id });
      await this.pool.shutdown(
        current.kind === 'interrupted' ? `the engine stopped: ${current.reason}` : current.message,
        2,
      );
    }
    for (const u of this.unsubscribe) u();
    this.unsubscribe.length = 0;
    return {
      engine: this.engine,
      seconds: this.options.clock() - this.startedAt,
      stopped: current,
      lateResults: this.lateResults,
      protocolViolations: this.protocolViolations,
    };
  }

  // ------------------------------------------------------------------ internals

  private noteEntry(e: LogEntry): void {
    if (e.kind === 'task' && e.studies !== undefined) this.taskStudies.set(e.task.id, e.studies);
  }

  private flush(): void {
    const log = this.engine.log;
    if (log.length > this.flushed) {
      const entries = log.slice(this.flushed);
      this.flushed = log.length;
      for (const e of entries) this.noteEntry(e);
      this.options.sink(entries);
    }
  }

  private forget(id: TaskId): void {
    const s = this.sent.get(id);
    if (s?.timer) clearTimeout(s.timer);
    this.sent.delete(id);
    this.taskStudies.delete(id);
  }

  private endOn(worker: WorkerId, id: TaskId): void {
    this.forget(id);
    let set = this.ended_.get(worker);
    if (!set) this.ended_.set(worker, (set = new Set()));
    set.add(id);
  }

  private dispatch(task: Task): void {
    const s = this.sent.get(task.id);
    if (!s || this.stoppedWhy) return;
    s.timer = null;
    s.sentAt = this.now();
    if (this.pool.registered(task.worker)) s.reachedAt = s.sentAt;
    this.pool.send(task.worker, { kind: 'run', task: toWireTask(task) });
    if (s.cut) this.pool.send(task.worker, { kind: 'cut', taskId: task.id });
  }

  private apply(cmds: Commands): void {
    if (this.stoppedWhy) return;
    const { pool } = this;
    for (const id of cmds.cancel) {
      const s = this.sent.get(id);
      if (s === undefined) continue;
      if (s.sentAt !== null) pool.send(s.worker, { kind: 'cancel', taskId: id });
      this.endOn(s.worker, id);
    }
    for (const id of cmds.cut) {
      const s = this.sent.get(id);
      if (s === undefined) continue;
      s.cut = true;
      if (s.sentAt !== null) pool.send(s.worker, { kind: 'cut', taskId: id });
    }
    for (const w of cmds.retire) pool.stop(w, 'replaced');
    for (const task of cmds.start) {
      if (task.startProcess) {
        pool.start(task.worker, task.gpu, task.share, task.runtime ?? null);
        this.lastSeen.set(task.worker, this.now());
      }
      const stage = task.runs[task.runs.length - 1]?.stage ?? '';
      const steps = task.runs.reduce((n, r) => n + r.end - r.start, 0);
      const s: Sent = {
        worker: task.worker,
        steps,
        cut: false,
        stage,
        sentAt: null,
        reachedAt: null,
        timer: null,
      };
      this.sent.set(task.id, s);
      const delay = retryDelay(this.failures.get(stage) ?? 0);
      if (delay > 0) {
        s.timer = setTimeout(() => this.dispatch(task), delay * 1000);
      } else {
        this.dispatch(task);
      }
    }
    this.flush();
    this.options.onChange?.();
  }

  private check(): void {
    if (this.stoppedWhy || (this.engine.done && !this.options.stayOpen)) this.resolveEnded();
  }

  /** A done or failed message: is it for the task this worker runs now? */
  private admitResult(worker: WorkerId, taskId: TaskId, kind: string): boolean {
    if (this.engine.isRunningOn(taskId, worker) && this.sent.get(taskId)?.sentAt != null)
      return true;
    if (this.ended_.get(worker)?.delete(taskId)) {
      this.lateResults++;
      return false;
    }
    this.protocolViolations++;
    this.pool.abort(worker, `${kind} for task ${taskId}, which is not running on this worker`);
    return false;
  }

  private onMessage(worker: WorkerId, m: WorkerMessage): void {
    if (this.stoppedWhy) return;
    const { engine, options } = this;
    this.lastSeen.set(worker, this.now());
    switch (m.kind) {
      case 'heartbeat':
      case 'progress':
        return;
      case 'cutAt': {
        if (!this.admitResult(worker, m.taskId, 'cutAt')) return;
        const s = this.sent.get(m.taskId);
        const range = engine.cutRange(m.taskId);
        if (!s?.cut || range === null || !(range.start < m.step && m.step < range.end)) {
          this.protocolViolations++;
          this.pool.abort(
            worker,
            s?.cut
              ? `cutAt step ${m.step} for task ${m.taskId}, which may only stop strictly between steps ${range?.start} and ${range?.end}`
              : `cutAt for task ${m.taskId}, which the engine did not ask to cut`,
          );
          return;
        }
        const { key, commands } = engine.cutTask(this.now(), m.taskId, m.step);
        s.steps -= range.end - m.step;
        this.pool.send(worker, { kind: 'saveCut', taskId: m.taskId, key });
        this.apply(commands);
        return;
      }
      case 'done': {
        if (!this.admitResult(worker, m.taskId, 'done')) return;
        const s = this.sent.get(m.taskId);
        const metricName = this.metricName(m.taskId);
        this.forget(m.taskId);
        options.onResult?.(m.taskId, { seconds: m.seconds, detail: '' });
        if (s && s.steps > 0) {
          const total = Object.values(m.seconds).reduce((a, b) => a + b, 0);
          this.secondsPerStep = Math.max(this.secondsPerStep ?? 0, total / s.steps);
        }
        this.failures.delete(s?.stage ?? '');
        const metric = m.metrics[metricName];
        if (metric === undefined) {
          this.apply(
            engine.taskFailed(this.now(), m.taskId, {
              message: `the trainer's evaluate() returned no "${metricName}" (it returned ${Object.keys(m.metrics).slice(0, 20).join(', ') || 'nothing'})`,
              reason: 'trainer',
            }),
          );
        } else {
          this.apply(engine.complete(this.now(), m.taskId, { metric }));
          if (options.discard && ++this.completions % 20 === 0) {
            const keys = engine.collectCheckpoints();
            if (keys.length > 0) options.discard(keys);
          }
        }
        this.check();
        return;
      }
      case 'failed': {
        if (!this.admitResult(worker, m.taskId, 'failed')) return;
        const s = this.sent.get(m.taskId);
        this.forget(m.taskId);
        options.onResult?.(m.taskId, { seconds: {}, detail: m.detail });
        if (m.reason === 'environment') {
          this.stop({ kind: 'environment', message: `worker ${worker}: ${m.message}` });
          return;
        }
        if (m.reason === 'trainer' && s)
          this.failures.set(s.stage, (this.failures.get(s.stage) ?? 0) + 1);
        this.apply(
          engine.taskFailed(this.now(), m.taskId, { message: m.message, reason: m.reason }),
        );
        this.check();
        return;
      }
    }
  }

  private onGone(worker: WorkerId, reason: string, info: GoneInfo): void {
    if (this.stoppedWhy || (this.engine.done && !this.options.stayOpen)) return;
    this.lastSeen.delete(worker);
    for (const [id, s] of this.sent) if (s.worker === worker) this.forget(id);
    this.ended_.delete(worker);
    if (!info.registered) {
      this.startFailures++;
      if (this.startFailures >= START_FAILURES_TO_STOP) {
        const output =
          info.output.length > 0 ? `; its last output:\n${info.output.join('\n')}` : '';
        this.stop({
          kind: 'environment',
          message: `${this.startFailures} worker processes in a row exited before connecting to the engine (the last: ${reason})${output}`,
        });
        return;
      }
    } else {
      this.startFailures = 0;
    }
    this.apply(this.engine.workerLost(this.now(), worker, reason));
    this.check();
  }

  private listen(): void {
    const { pool } = this;
    this.unsubscribe.push(pool.onMessage((w, m) => this.onMessage(w, m)));
    this.unsubscribe.push(
      pool.onRegistered((worker) => {
        const t = this.now();
        for (const s of this.sent.values())
          if (s.worker === worker && s.sentAt !== null) s.reachedAt ??= t;
      }),
    );
    this.unsubscribe.push(pool.onGone((w, reason, info) => this.onGone(w, reason, info)));
  }

  /** The studies a task serves (the first study when the log does not say). */
  private studiesOf(task: TaskId): Study[] {
    const names = this.taskStudies.get(task);
    const out: Study[] = [];
    for (const n of names ?? []) {
      const st = this.engine.studyNamed(n);
      if (st) out.push(st);
    }
    return out.length > 0 ? out : [this.engine.study];
  }

  private metricName(task: TaskId): string {
    return (this.studiesOf(task)[0] ?? this.engine.study).metric.name;
  }

  /** Once a second: declares silent workers dead and fails tasks past their time limit. */
  private watch(): void {
    if (this.stoppedWhy) return;
    const { engine, pool } = this;
    const timeout = this.options.heartbeatTimeout ?? 30;
    const t = this.now();
    for (const [w, seen] of this.lastSeen) {
      if (t - seen > timeout) {
        this.lastSeen.delete(w);
        pool.kill(w);
        for (const [id, s] of this.sent) if (s.worker === w) this.forget(id);
        this.ended_.delete(w);
        this.apply(engine.workerLost(t, w, `no heartbeat for ${timeout} s`));
        this.check();
      }
    }
    for (const [id, s] of [...this.sent]) {
      if (s.reachedAt === null) continue;
      const studies = this.studiesOf(id);
      const limit = taskLimit(studies, s.steps, this.secondsPerStep);
      if (t - s.reachedAt <= limit) continue;
      // The trainer may be stuck where a cancel cannot reach it: kill the worker (first, so
      // that the engine never hands the still-busy slot its next stage), fail the task.
      this.endOn(s.worker, id);
      this.failures.set(s.stage, (this.failures.get(s.stage) ?? 0) + 1);
      pool.kill(s.worker);
      const declared = studies.some((x) => x.taskTimeout !== null);
      this.apply(
        engine.taskFailed(t, id, {
          message: `timed out after ${Math.round(limit)} s (the study's taskTimeout${declared ? '' : ', derived from measured step times'})`,
          reason: 'trainer',
        }),
      );
      this.check();
    }
  }
}

/**
 * Runs one study to its end against a worker pool (an `Execution` of one study), then
 * shuts the pool down. Resuming replays the stored log through a fresh engine and tuner
 * (they decide the same again) unless `replayed` already did, and goes on; completed
 * stages are not run again.
 */
export async function runWithPool(options: RunOptions): Promise<RunResult> {
  const engine = options.replayed ?? new Engine(options.study, options.tuner, options.engine);
  const resume = options.resumeFrom ?? [];
  if (resume.length > 0 && !options.replayed) feedLog(engine, resume);
  const execution = new Execution({
    engine,
    pool: options.pool,
    clock: options.clock,
    sink: options.sink,
    ...(options.onResult ? { onResult: options.onResult } : {}),
    ...(options.heartbeatTimeout !== undefined
      ? { heartbeatTimeout: options.heartbeatTimeout }
      : {}),
    ...(options.discard ? { discard: options.discard } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  execution.begin(resume, options.offers);
  return execution.close();
}
