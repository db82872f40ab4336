import { InternalError } from '../errors.js';
import type { Study } from '../study/index.js';
import type { Tuner } from '../tuner/types.js';
import { Engine } from './engine.js';
import type { EngineOptions } from './engine.js';
import type { LogEntry, TaskId } from './types.js';

/**
 * Replays a study from its event log: a fresh engine and tuner are given the same
 * inputs (each task's completion time and metric, in logged order) and must make the
 * same decisions. Returns the replayed engine; `sameLog` says whether every decision
 * matched. Since the engine and tuners are pure, a log is a complete record of a study.
 */
export function replay(
  study: Study,
  log: readonly LogEntry[],
  tuner: Tuner,
  options: EngineOptions,
  submitted?: (name: string) => { readonly study: Study; readonly tuner: Tuner },
): { engine: Engine; sameLog: boolean; firstDifference: number | null } {
  const engine = new Engine(study, tuner, options);
  feedLog(engine, log, submitted);
  const a = log.map((e) => JSON.stringify(e));
  const b = engine.log.map((e) => JSON.stringify(e));
  let firstDifference: number | null = null;
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) {
      firstDifference = i;
      break;
    }
  }
  return { engine, sameLog: firstDifference === null, firstDifference };
}

/**
 * Starts a fresh engine at the log's first instant and gives it the log's inputs in
 * order (completions, failures, lost workers); the commands it answers are dropped. The
 * states the log reused are offered first, as the logged run had them.
 */
export function feedLog(
  engine: Engine,
  log: readonly LogEntry[],
  submitted: (name: string) => { readonly study: Study; readonly tuner: Tuner } = (name) => {
    throw new InternalError(`the log submits study ${name}, and no study of that name was given`);
  },
): void {
  for (const e of log) if (e.kind === 'reuse') engine.offer(e.key, e.metric);
  engine.start(log[0]?.t ?? 0);
  for (const e of log) {
    if (e.kind === 'submit') {
      const { study, tuner } = submitted(e.study);
      engine.submit(e.t, study, tuner, { priority: e.priority });
    }
    if (e.kind === 'done') engine.complete(e.t, e.task, { metric: e.metric });
    else if (e.kind === 'fail')
      engine.taskFailed(e.t, e.task, { message: e.message, reason: e.reason });
    else if (e.kind === 'lost') engine.workerLost(e.t, e.worker, e.reason);
    else if (e.kind === 'finish' && e.cancelled === true)
      engine.cancelStudy(e.t, e.study ?? engine.study.name);
    else if (e.kind === 'pause') engine.pauseStudy(e.t, e.study);
    else if (e.kind === 'resume') engine.resumeStudy(e.t, e.study);
    else if (e.kind === 'cut') engine.cutTask(e.t, e.task, e.step);
  }
}

export interface LogAccount {
  /**
   * Every attempt's wall time times its GPU share, from its task entry to its end: done,
   * cancelled, failed, or lost with its worker (GPU time is spent whatever the outcome).
   */
  readonly gpuSeconds: number;
  /** Time of the last event. */
  readonly makespanSeconds: number;
  readonly tasks: number;
  readonly cancelled: number;
  /** Attempts that ended failed or lost (their GPU time is in `gpuSeconds`). */
  readonly wasted: number;
}

/**
 * Whose GPU time `accountLog` counts in a log of several studies: `study`'s tasks. A task
 * is credited whole to the first of its entry's `studies` (the earliest-submitted study
 * that demanded it when it started: the one that trained it; the others reused it); a
 * task entry without `studies` (a log of one study) is `primary`'s, the engine's first.
 */
export interface LogCredit {
  readonly study: string;
  readonly primary: string;
}

/**
 * The GPU-time account of a study, computed from its event log alone. With `credit`, of
 * one study of a log of several: `gpuSeconds`, `tasks`, `cancelled` and `wasted` count
 * the tasks credited to it (`LogCredit`), so the studies' accounts add up to the log's;
 * without, of the whole log. `makespanSeconds` is the whole log's either way.
 */
export function accountLog(log: readonly LogEntry[], credit?: LogCredit): LogAccount {
  const open = new Map<TaskId, { t: number; share: number; worker: string }>();
  let gpuSeconds = 0;
  let end = 0;
  let tasks = 0;
  let cancelled = 0;
  let wasted = 0;
  const close = (id: TaskId, t: number): boolean => {
    const o = open.get(id);
    if (!o) return false;
    open.delete(id);
    gpuSeconds += (t - o.t) * o.share;
    return true;
  };
  for (const e of log) {
    end = Math.max(end, e.t);
    switch (e.kind) {
      case 'task': {
        const share = e.task.share;
        // A task is credited to the earliest-submitted study that demanded it (the
        // first of its entry's `studies`): the study that trained it; later ones reused it.
        if (credit !== undefined && (e.studies?.[0] ?? credit.primary) !== credit.study) break;
        open.set(e.task.id, { t: e.t, share, worker: e.task.worker });
        tasks++;
        break;
      }
      case 'done':
        close(e.task, e.t);
        break;
      case 'cancel':
        if (close(e.task, e.t)) cancelled++;
        break;
      case 'fail':
        if (close(e.task, e.t)) wasted++;
        break;
      case 'lost':
        for (const [id, o] of [...open]) if (o.worker === e.worker && close(id, e.t)) wasted++;
        break;
      case 'propose':
      case 'fork':
      case 'extend':
      case 'stop':
      case 'metric':
      case 'reuse':
      case 'trialFailed':
      case 'finish':
      case 'submit':
      case 'pause':
      case 'resume':
      case 'cut':
        break;
    }
  }
  return { gpuSeconds, makespanSeconds: end, tasks, cancelled, wasted };
}

/**
 * The study (by name) a log entry belongs to: a trial's by its id (`NAME/tN`; a plain
 * `tN` is `primary`'s, the engine's first study), `submit` / `pause` / `resume` /
 * `finish` by their field; null for the executor's own entries (tasks and their ends).
 */
export function entryStudy(e: LogEntry, primary: string): string | null {
  switch (e.kind) {
    case 'propose':
    case 'fork':
    case 'extend':
    case 'stop':
    case 'metric':
    case 'trialFailed': {
      const i = e.trial.indexOf('/');
      return i < 0 ? primary : e.trial.slice(0, i);
    }
    case 'finish':
      return e.study ?? primary;
    case 'submit':
    case 'pause':
    case 'resume':
      return e.study;
    case 'task':
    case 'done':
    case 'cancel':
    case 'cut':
    case 'fail':
    case 'lost':
    case 'reuse':
      return null;
  }
}
