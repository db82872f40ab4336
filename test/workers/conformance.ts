import { describe, expect, it } from 'vitest';
import { replay } from '../../src/engine/index.js';
import type { EngineOptions, LogEntry } from '../../src/engine/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { createTuner } from '../../src/tuner/index.js';

/**
 * The worker-backend conformance suite: one set of checks that every backend (the sim
 * pool, the local process pool, later Docker) must pass, run through the same engine.
 * A backend runs a study and hands back its event log, plus a way to compute what a
 * trial sees when its trainer trains it alone from scratch.
 */
export interface Backend {
  /** Runs the study; returns the engine's event log and the options it ran with. */
  run(study: Study): Promise<{ log: readonly LogEntry[]; options: EngineOptions }>;
  /** The metric the backend's trainer gives `trial` at `step` trained alone from scratch. */
  alone(study: Study, trial: string, step: number, log: readonly LogEntry[]): Promise<number>;
  /** The trainer part of a study for this backend. */
  readonly trainer: Record<string, unknown>;
  readonly params?: Record<string, unknown>;
}

function study(backend: Backend, tuner: Record<string, unknown>): Study {
  return parseStudy({
    name: 'conformance',
    params: { seed: 3, ...backend.params },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.02, 0.05, 0.08] },
        factor: 0.1,
        milestones: [{ choice: [8, 12] }],
      },
      momentum: 0.9,
    },
    steps: 16,
    evalEvery: 4,
    tuner,
    metric: { name: 'loss', mode: 'min' },
    trainer: backend.trainer,
    workers: 2,
  });
}

const metricEvents = (log: readonly LogEntry[]): Extract<LogEntry, { kind: 'metric' }>[] =>
  log.filter((e): e is Extract<LogEntry, { kind: 'metric' }> => e.kind === 'metric');

export function describeBackendConformance(name: string, backend: Backend): void {
  describe(`worker backend conformance: ${name}`, () => {
    it('reports every demanded metric once, equal to the trial trained alone', async () => {
      const s = study(backend, { kind: 'grid' });
      const { log } = await backend.run(s);
      const events = metricEvents(log);
      const keys = events.map((e) => `${e.trial}@${e.step}`);
      expect(new Set(keys).size).toBe(keys.length);
      expect(keys.length).toBe(6 * 4);
      for (const e of events) expect(e.value).toBe(await backend.alone(s, e.trial, e.step, log));
    });

    it('trains every unique step once when nothing fails', async () => {
      const s = study(backend, { kind: 'grid' });
      const { log } = await backend.run(s);
      const steps = new Map<string, number>();
      for (const e of log) {
        if (e.kind !== 'task') continue;
        for (const r of e.task.runs) steps.set(r.stage, (steps.get(r.stage) ?? 0) + 1);
      }
      for (const n of steps.values()) expect(n).toBe(1);
      // 3 initial LRs share [0, 8); milestone 12 shares [8, 12) with nothing else.
      const trained = log.reduce(
        (n, e) =>
          e.kind === 'task' ? n + e.task.runs.reduce((m, r) => m + r.end - r.start, 0) : n,
        0,
      );
      expect(trained).toBe(3 * (8 + 8 + 8));
    });

    it('runs an adaptive study (ASHA) whose log replays decision for decision', async () => {
      const s = study(backend, {
        kind: 'asha',
        trials: 6,
        eta: 2,
        minSteps: 4,
        seed: 5,
        maxConcurrent: 2,
      });
      const { log, options } = await backend.run(s);
      expect(log.some((e) => e.kind === 'extend')).toBe(true);
      for (const e of metricEvents(log))
        expect(e.value).toBe(await backend.alone(s, e.trial, e.step, log));
      const again = replay(s, log, createTuner(s), options);
      expect(again.firstDifference).toBeNull();
    });
  });
}

/** The schedules and params a trial was proposed with, from the log. */
export function proposal(
  log: readonly LogEntry[],
  trial: string,
): Extract<LogEntry, { kind: 'propose' }>['spec'] {
  const e = log.find(
    (x): x is Extract<LogEntry, { kind: 'propose' }> => x.kind === 'propose' && x.trial === trial,
  );
  if (!e) throw new Error(`no proposal of ${trial}`);
  return e.spec;
}
