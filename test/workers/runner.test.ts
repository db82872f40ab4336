import { describe, expect, it } from 'vitest';
import { parseStudy } from '../../src/study/index.js';
import {
  retryDelay,
  TASK_LIMIT_FLOOR,
  taskLimit,
  UNMEASURED_TASK_LIMIT,
} from '../../src/workers/runner.js';

const study = (extra: Record<string, unknown> = {}) =>
  parseStudy({
    name: 'limits',
    space: { lr: 0.1 },
    steps: 100,
    tuner: { kind: 'grid' },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'node', module: './t.js', export: 'T' },
    ...extra,
  });

describe("a task's time limit", () => {
  it("is the study's taskTimeout when it sets one", () => {
    expect(taskLimit(study({ taskTimeout: 42 }), 10, 100)).toBe(42);
  });

  it('is generous before any step was measured, then ten times the expected duration with a floor', () => {
    const s = study();
    expect(taskLimit(s, 10, null)).toBe(UNMEASURED_TASK_LIMIT);
    expect(taskLimit(s, 10, 0.01)).toBe(TASK_LIMIT_FLOOR);
    expect(taskLimit(s, 100, 3.4)).toBeCloseTo(3400);
  });
});

describe('retries back off', () => {
  it('doubles from half a second to at most 30 s', () => {
    expect([0, 1, 2, 3, 4, 7, 8, 50].map(retryDelay)).toEqual([0, 0.5, 1, 2, 4, 30, 30, 30]);
  });
});
