import type { LogEntry } from '../engine/index.js';
import type { StudyStore } from '../store/index.js';

/** What a worker reported with a task's result: its seconds by phase, and a traceback. */
export interface AttemptReport {
  readonly seconds: Readonly<Record<string, number>>;
  readonly detail: string;
}

/**
 * Keeps the store's attempt table (timings by phase, failures, tracebacks, and the studies
 * each attempt is credited to) in step with the executor's event log.
 */
export class AttemptLog {
  private readonly open = new Map<number, { attempt: number; worker: string }>();
  private readonly reported = new Map<number, AttemptReport>();

  constructor(private readonly store: StudyStore) {}

  /** What a worker sent with a task's result (the next entry for the task ends its attempt). */
  report(task: number, info: AttemptReport): void {
    this.reported.set(task, info);
  }

  record(entries: readonly LogEntry[], now: number): void {
    for (const e of entries) {
      switch (e.kind) {
        case 'task': {
          const last = e.task.runs[e.task.runs.length - 1];
          const attempt = this.store.recordAttempt({
            task: e.task.id,
            worker: e.task.worker,
            stage: last?.stage ?? '',
            startedAt: now,
            ...(e.studies !== undefined ? { studies: e.studies } : {}),
          });
          this.open.set(e.task.id, { attempt, worker: e.task.worker });
          break;
        }
        case 'done':
          this.finish(e.task, now, { outcome: 'done' });
          break;
        case 'fail':
          this.finish(e.task, now, { outcome: 'failed', error: e.message });
          break;
        case 'cancel':
          this.finish(e.task, now, { outcome: 'cancelled' });
          break;
        case 'lost':
          for (const [task, o] of this.open) {
            if (o.worker === e.worker) this.finish(task, now, { outcome: 'lost', error: e.reason });
          }
          break;
        case 'propose':
        case 'fork':
        case 'extend':
        case 'stop':
        case 'metric':
        case 'trialFailed':
        case 'reuse':
        case 'finish':
        case 'submit':
        case 'pause':
        case 'resume':
        case 'cut':
          break;
      }
    }
  }

  private finish(
    task: number,
    now: number,
    end: { outcome: 'done' | 'failed' | 'cancelled' | 'lost'; error?: string },
  ): void {
    const o = this.open.get(task);
    if (!o) return;
    this.open.delete(task);
    const info = this.reported.get(task);
    this.reported.delete(task);
    this.store.finishAttempt(o.attempt, {
      endedAt: now,
      ...end,
      ...(info ? { seconds: info.seconds } : {}),
      ...(info && info.detail !== '' ? { detail: info.detail } : {}),
    });
  }
}
