import { Engine, feedLog, toWireTask } from '../engine/index.js';
import type { Commands, EngineOptions, LogEntry, Task, TaskId, WorkerId } from '../engine/index.js';
import type { Study } from '../study/index.js';
import type { Tuner } from '../tuner/index.js';
import type { GoneInfo, WorkerPool } from './pool.js';

/** Until a task's duration has been measured, its time limit (seconds) when the study sets none. */
export const UNMEASURED_TASK_LIMIT = 6 * 3600;
/** The least time limit derived from measurements (seconds). */
export const TASK_LIMIT_FLOOR = 300;
/** A derived time limit is this many times the task's expected duration. */
export const TASK_LIMIT_FACTOR = 10;
/** Workers in a row that die before registering before the run stops as an environment failure. */
export const START_FAILURES_TO_STOP = 3;

export interface RunOptions {
  readonly study: Study;
  readonly tuner: Tuner;
  readonly engine: EngineOptions;
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
  /** The stored log of an earlier run of this study to resume from. */
  readonly resumeFrom?: readonly LogEntry[];
  /**
   * An engine (with its own tuner) that `replay` already fed `resumeFrom`: the run goes
   * on from it instead of feeding the log to a fresh engine a second time.
   */
  readonly replayed?: Engine;
  /** States trained by an earlier run (checkpoint key -> metric) the engine may reuse. */
  readonly offers?: ReadonlyMap<string, number>;
  /** A worker silent for this long is declared dead. Default 30 s. */
  readonly heartbeatTimeout?: number;
  /** Deletes checkpoints nobody can need any more (called every few completed stages). */
  readonly discard?: (keys: readonly string[]) => void;
  /** Aborting it stops the run: no new work, workers stopped, the study left resumable. */
  readonly signal?: AbortSignal;
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

/** The time limit of a task (seconds): the study's, or derived from measured step times. */
export function taskLimit(study: Study, steps: number, secondsPerStep: number | null): number {
  if (study.taskTimeout !== null) return study.taskTimeout;
  if (secondsPerStep === null) return UNMEASURED_TASK_LIMIT;
  return Math.max(TASK_LIMIT_FLOOR, TASK_LIMIT_FACTOR * secondsPerStep * steps);
}

/** Seconds to hold back the n-th retry of a stage whose trainer failed (0.5 s doubling to 30 s). */
export function retryDelay(failures: number): number {
  return failures <= 0 ? 0 : Math.min(30, 0.5 * 2 ** (failures - 1));
}

interface Sent {
  readonly worker: WorkerId;
  readonly steps: number;
  readonly stage: string;
  /** When it was sent (null while held back for a retry delay). */
  sentAt: number | null;
  /** When it reached a registered worker: its time limit counts from here. */
  reachedAt: number | null;
  timer: ReturnType<typeof setTimeout> | null;
}

/**
 * Drives the engine in real time against a worker pool: the engine decides, the pool
 * executes, every decision goes to `sink` (the study store) at once. Resuming replays the
 * stored log through a fresh engine and tuner (they decide the same again), forgets the
 * workers of the earlier run (their tasks are rescheduled from the last saved state) and
 * goes on; completed stages are not run again.
 *
 * What workers send is checked against what the engine sent them: a result for a task
 * that was cancelled or timed out on that worker is dropped and counted; a result for a
 * task the worker is not running is a protocol violation that ends its stream (the
 * worker is then lost) and never reaches the engine. A task running past its time limit
 * fails (`timed out after N s`, retried like any failure) and its worker is killed. A
 * retried stage is held back a little longer after each failure. A failure of the
 * environment (a worker cannot write checkpoints, workers die before registering) or an
 * abort of `signal` stops the run at once: no new work, every worker stopped, the log
 * ends where it was (resumable).
 */
export async function runWithPool(options: RunOptions): Promise<RunResult> {
  const { pool, clock, study } = options;
  const engine = options.replayed ?? new Engine(study, options.tuner, options.engine);
  const sent = new Map<TaskId, Sent>();
  /** Tasks ended on a worker by the engine or by a time limit: a late result is expected. */
  const ended = new Map<WorkerId, Set<TaskId>>();
  const lastSeen = new Map<WorkerId, number>();
  const failures = new Map<string, number>();
  const metricName = study.metric.name;
  let flushed = 0;
  let completions = 0;
  let offset = 0;
  let stopped: RunStop | null = null;
  let lateResults = 0;
  let protocolViolations = 0;
  let startFailures = 0;
  let secondsPerStep: number | null = null;
  const now = (): number => offset + clock();
  const flush = (): void => {
    if (engine.log.length > flushed) {
      options.sink(engine.log.slice(flushed));
      flushed = engine.log.length;
    }
  };
  const forget = (id: TaskId): void => {
    const s = sent.get(id);
    if (s?.timer) clearTimeout(s.timer);
    sent.delete(id);
  };
  const endOn = (worker: WorkerId, id: TaskId): void => {
    forget(id);
    let set = ended.get(worker);
    if (!set) ended.set(worker, (set = new Set()));
    set.add(id);
  };

  const dispatch = (task: Task): void => {
    const s = sent.get(task.id);
    if (!s || stopped) return;
    s.timer = null;
    s.sentAt = now();
    if (pool.registered(task.worker)) s.reachedAt = s.sentAt;
    pool.send(task.worker, { kind: 'run', task: toWireTask(task) });
  };

  const apply = (cmds: Commands): void => {
    if (stopped) return;
    for (const id of cmds.cancel) {
      const s = sent.get(id);
      if (s === undefined) continue;
      if (s.sentAt !== null) pool.send(s.worker, { kind: 'cancel', taskId: id });
      endOn(s.worker, id);
    }
    for (const w of cmds.retire) pool.stop(w, 'replaced');
    for (const task of cmds.start) {
      if (task.startProcess) {
        pool.start(task.worker, task.gpu, task.share);
        lastSeen.set(task.worker, now());
      }
      const stage = task.runs[task.runs.length - 1]?.stage ?? '';
      const steps = task.runs.reduce((n, r) => n + r.end - r.start, 0);
      const s: Sent = {
        worker: task.worker,
        steps,
        stage,
        sentAt: null,
        reachedAt: null,
        timer: null,
      };
      sent.set(task.id, s);
      const delay = retryDelay(failures.get(stage) ?? 0);
      if (delay > 0) {
        s.timer = setTimeout(() => dispatch(task), delay * 1000);
      } else {
        dispatch(task);
      }
    }
    flush();
  };

  let resolveDone: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => {
    resolveDone = resolve;
  });
  const check = (): void => {
    if (engine.done || stopped) resolveDone();
  };
  const stop = (why: RunStop): void => {
    if (stopped) return;
    flush();
    stopped = why;
    for (const s of sent.values()) if (s.timer) clearTimeout(s.timer);
    resolveDone();
  };

  /** A done or failed message: is it for the task this worker runs now? */
  const admitResult = (worker: WorkerId, taskId: TaskId, kind: string): boolean => {
    if (engine.isRunningOn(taskId, worker) && sent.get(taskId)?.sentAt != null) return true;
    if (ended.get(worker)?.delete(taskId)) {
      lateResults++;
      return false;
    }
    protocolViolations++;
    pool.abort(worker, `${kind} for task ${taskId}, which is not running on this worker`);
    return false;
  };

  const unsubscribe: (() => void)[] = [];
  unsubscribe.push(
    pool.onMessage((worker, m) => {
      if (stopped) return;
      lastSeen.set(worker, now());
      switch (m.kind) {
        case 'heartbeat':
        case 'progress':
          return;
        case 'done': {
          if (!admitResult(worker, m.taskId, 'done')) return;
          const s = sent.get(m.taskId);
          sent.delete(m.taskId);
          options.onResult?.(m.taskId, { seconds: m.seconds, detail: '' });
          if (s && s.steps > 0) {
            const total = Object.values(m.seconds).reduce((a, b) => a + b, 0);
            const perStep = total / s.steps;
            secondsPerStep = Math.max(secondsPerStep ?? 0, perStep);
          }
          failures.delete(s?.stage ?? '');
          const metric = m.metrics[metricName];
          if (metric === undefined) {
            apply(
              engine.taskFailed(now(), m.taskId, {
                message: `the trainer's evaluate() returned no "${metricName}" (it returned ${Object.keys(m.metrics).slice(0, 20).join(', ') || 'nothing'})`,
                reason: 'trainer',
              }),
            );
          } else {
            apply(engine.complete(now(), m.taskId, { metric }));
            if (options.discard && ++completions % 20 === 0) {
              const keys = engine.collectCheckpoints();
              if (keys.length > 0) options.discard(keys);
            }
          }
          check();
          return;
        }
        case 'failed': {
          if (!admitResult(worker, m.taskId, 'failed')) return;
          const s = sent.get(m.taskId);
          sent.delete(m.taskId);
          options.onResult?.(m.taskId, { seconds: {}, detail: m.detail });
          if (m.reason === 'environment') {
            stop({ kind: 'environment', message: `worker ${worker}: ${m.message}` });
            return;
          }
          if (m.reason === 'trainer' && s) failures.set(s.stage, (failures.get(s.stage) ?? 0) + 1);
          apply(engine.taskFailed(now(), m.taskId, { message: m.message, reason: m.reason }));
          check();
          return;
        }
      }
    }),
  );
  unsubscribe.push(
    pool.onRegistered((worker) => {
      const t = now();
      for (const s of sent.values())
        if (s.worker === worker && s.sentAt !== null) s.reachedAt ??= t;
    }),
  );
  unsubscribe.push(
    pool.onGone((worker, reason, info: GoneInfo) => {
      if (stopped || engine.done) return;
      lastSeen.delete(worker);
      for (const [id, s] of sent) if (s.worker === worker) forget(id);
      ended.delete(worker);
      if (!info.registered) {
        startFailures++;
        if (startFailures >= START_FAILURES_TO_STOP) {
          const output =
            info.output.length > 0 ? `; its last output:\n${info.output.join('\n')}` : '';
          stop({
            kind: 'environment',
            message: `${startFailures} worker processes in a row exited before connecting to the engine (the last: ${reason})${output}`,
          });
          return;
        }
      } else {
        startFailures = 0;
      }
      apply(engine.workerLost(now(), worker, reason));
      check();
    }),
  );

  const started = clock();
  const resume = options.resumeFrom ?? [];
  if (resume.length > 0) {
    // Rebuild the engine and tuner from the log, then carry on after its last instant.
    if (!options.replayed) feedLog(engine, resume);
    // Offers count from here on (the log's own reuses were offered by feedLog).
    for (const [key, metric] of options.offers ?? []) engine.offer(key, metric);
    flushed = Math.min(engine.log.length, resume.length);
    offset = (resume[resume.length - 1]?.t ?? 0) - clock();
    // The earlier run's workers are gone with it.
    for (const w of engine.inspect().workers)
      apply(engine.workerLost(now(), w.id, 'the engine restarted'));
    apply(engine.poke(now()));
  } else {
    offset = -clock();
    for (const [key, metric] of options.offers ?? []) engine.offer(key, metric);
    apply(engine.start(now()));
  }
  check();

  const onAbort = (): void => {
    const reason: unknown = options.signal?.reason;
    stop({ kind: 'interrupted', reason: typeof reason === 'string' ? reason : 'interrupted' });
  };
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener('abort', onAbort, { once: true });

  const timeout = options.heartbeatTimeout ?? 30;
  const watchdog = setInterval(() => {
    if (stopped) return;
    const t = now();
    for (const [w, seen] of lastSeen) {
      if (t - seen > timeout) {
        lastSeen.delete(w);
        pool.kill(w);
        for (const [id, s] of sent) if (s.worker === w) forget(id);
        ended.delete(w);
        apply(engine.workerLost(t, w, `no heartbeat for ${timeout} s`));
        check();
      }
    }
    for (const [id, s] of [...sent]) {
      if (s.reachedAt === null) continue;
      const limit = taskLimit(study, s.steps, secondsPerStep);
      if (t - s.reachedAt <= limit) continue;
      // The trainer may be stuck where a cancel cannot reach it: fail the task, kill the worker.
      endOn(s.worker, id);
      failures.set(s.stage, (failures.get(s.stage) ?? 0) + 1);
      apply(
        engine.taskFailed(t, id, {
          message: `timed out after ${Math.round(limit)} s (the study's taskTimeout${study.taskTimeout === null ? ', derived from measured step times' : ''})`,
          reason: 'trainer',
        }),
      );
      pool.kill(s.worker);
      check();
    }
  }, 1000);
  watchdog.unref();

  await finished;
  clearInterval(watchdog);
  options.signal?.removeEventListener('abort', onAbort);
  flush();
  const current = stopped as RunStop | null;
  if (current === null) {
    await pool.shutdown('the study is finished');
  } else {
    // Stop everything now: cancel what runs, ask every worker to exit, kill stragglers.
    for (const [id, s] of sent)
      if (s.sentAt !== null) pool.send(s.worker, { kind: 'cancel', taskId: id });
    await pool.shutdown(
      current.kind === 'interrupted' ? `the engine stopped: ${current.reason}` : current.message,
      2,
    );
  }
  for (const u of unsubscribe) u();
  return {
    engine,
    seconds: clock() - started,
    stopped: current,
    lateResults,
    protocolViolations,
  };
}
