import { Engine, feedLog, toWireTask } from '../engine/index.js';
import type { Commands, EngineOptions, LogEntry, TaskId, WorkerId } from '../engine/index.js';
import type { Study } from '../study/index.js';
import type { Tuner } from '../tuner/index.js';
import type { ProcessPool } from './process/pool.js';

export interface RunOptions {
  readonly study: Study;
  readonly tuner: Tuner;
  readonly engine: EngineOptions;
  readonly pool: ProcessPool;
  /** Seconds, monotonic: the only clock the run reads. */
  readonly clock: () => number;
  /** Receives every new event-log entry, in order, as soon as it exists. */
  readonly sink: (entries: readonly LogEntry[]) => void;
  /** The stored log of an earlier run of this study to resume from. */
  readonly resumeFrom?: readonly LogEntry[];
  /** A worker silent for this long is declared dead. Default 30 s. */
  readonly heartbeatTimeout?: number;
  /** Deletes checkpoints nobody can need any more (called every few completed stages). */
  readonly discard?: (keys: readonly string[]) => void;
}

export interface RunResult {
  readonly engine: Engine;
  /** Seconds the run took (wall clock). */
  readonly seconds: number;
}

/**
 * Drives the engine in real time against a worker pool: the engine decides, the pool
 * executes, every decision goes to `sink` (the study store) at once. Resuming replays the
 * stored log through a fresh engine and tuner (they decide the same again), forgets the
 * workers of the earlier run (their tasks are rescheduled from the last saved state) and
 * goes on; completed stages are not run again.
 */
export async function runWithPool(options: RunOptions): Promise<RunResult> {
  const { pool, clock } = options;
  const engine = new Engine(options.study, options.tuner, options.engine);
  const taskWorker = new Map<TaskId, WorkerId>();
  const lastSeen = new Map<WorkerId, number>();
  const metricName = options.study.metric.name;
  let flushed = 0;
  let completions = 0;
  let offset = 0;
  const now = (): number => offset + clock();
  const flush = (): void => {
    if (engine.log.length > flushed) {
      options.sink(engine.log.slice(flushed));
      flushed = engine.log.length;
    }
  };

  const apply = (cmds: Commands): void => {
    for (const id of cmds.cancel) {
      const w = taskWorker.get(id);
      if (w !== undefined) pool.send(w, { kind: 'cancel', taskId: id });
      taskWorker.delete(id);
    }
    for (const w of cmds.retire) pool.stop(w, 'replaced');
    for (const task of cmds.start) {
      if (task.startProcess) {
        pool.start(task.worker, task.gpu, task.share);
        lastSeen.set(task.worker, now());
      }
      taskWorker.set(task.id, task.worker);
      pool.send(task.worker, { kind: 'run', task: toWireTask(task) });
    }
    flush();
  };

  let resolveDone: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => {
    resolveDone = resolve;
  });
  const check = (): void => {
    if (engine.done) resolveDone();
  };

  pool.onMessage((worker, m) => {
    lastSeen.set(worker, now());
    switch (m.kind) {
      case 'heartbeat':
      case 'progress':
        return;
      case 'done': {
        taskWorker.delete(m.taskId);
        const metric = m.metrics[metricName];
        if (metric === undefined) {
          apply(
            engine.taskFailed(now(), m.taskId, {
              message: `the trainer's evaluate() returned no "${metricName}" (it returned ${Object.keys(m.metrics).join(', ') || 'nothing'})`,
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
      case 'failed':
        taskWorker.delete(m.taskId);
        apply(engine.taskFailed(now(), m.taskId, { message: m.message, reason: m.reason }));
        check();
        return;
    }
  });
  pool.onGone((worker, reason) => {
    lastSeen.delete(worker);
    apply(engine.workerLost(now(), worker, reason));
    check();
  });

  const started = clock();
  const resume = options.resumeFrom ?? [];
  if (resume.length > 0) {
    // Rebuild the engine and tuner from the log, then carry on after its last instant.
    feedLog(engine, resume);
    flushed = Math.min(engine.log.length, resume.length);
    offset = (resume[resume.length - 1]?.t ?? 0) - clock();
    // The earlier run's workers are gone with it.
    for (const w of engine.inspect().workers)
      apply(engine.workerLost(now(), w.id, 'the engine restarted'));
    apply(engine.poke(now()));
  } else {
    offset = -clock();
    apply(engine.start(now()));
  }
  check();

  const timeout = options.heartbeatTimeout ?? 30;
  const watchdog = setInterval(() => {
    const t = now();
    for (const [w, seen] of lastSeen) {
      if (t - seen > timeout) {
        lastSeen.delete(w);
        pool.kill(w);
        apply(engine.workerLost(t, w, `no heartbeat for ${timeout} s`));
        check();
      }
    }
  }, 1000);
  watchdog.unref();

  await finished;
  clearInterval(watchdog);
  flush();
  await pool.shutdown('the study is finished');
  return { engine, seconds: clock() - started };
}
