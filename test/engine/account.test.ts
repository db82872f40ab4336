import { describe, expect, it } from 'vitest';
import { accountLog } from '../../src/engine/index.js';
import type { LogEntry, Task } from '../../src/engine/index.js';

const task = (id: number, worker: string, share: number): Task => ({
  id,
  worker,
  gpu: 0,
  startProcess: false,
  saveFirst: null,
  restore: { from: 'init' },
  runs: [{ stage: `S${id}`, start: 0, end: 1, params: {}, schedules: {} }],
  saveAfter: null,
  endKey: `K${id}`,
  share,
});

describe('GPU time from the event log', () => {
  it('counts every attempt: done, cancelled, failed and lost ones, each by its share', () => {
    const log: LogEntry[] = [
      { t: 0, kind: 'task', task: task(1, 'w1', 0.5) },
      { t: 2, kind: 'fail', task: 1, message: 'boom', reason: 'trainer' }, // 2 s x 0.5
      { t: 2, kind: 'task', task: task(2, 'w1', 1) },
      { t: 3, kind: 'task', task: task(3, 'w2', 0.25) },
      { t: 5, kind: 'lost', worker: 'w1', reason: 'killed' }, // 3 s x 1
      { t: 9, kind: 'done', task: 3, metric: 1 }, // 6 s x 0.25
      { t: 9, kind: 'task', task: task(4, 'w2', 1) },
      { t: 10, kind: 'cancel', task: 4 }, // 1 s x 1
      // A late or repeated end of a task that is not open counts nothing.
      { t: 11, kind: 'done', task: 3, metric: 1 },
    ];
    expect(accountLog(log)).toEqual({
      gpuSeconds: 1 + 3 + 1.5 + 1,
      makespanSeconds: 11,
      tasks: 4,
      cancelled: 1,
      wasted: 2,
    });
  });
});
