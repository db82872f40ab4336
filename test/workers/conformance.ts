import { describe, expect, it } from 'vitest';
import { LINEAGE_PARAM, replay } from '../../src/engine/index.js';
import type { EngineOptions, LogEntry } from '../../src/engine/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { getTrial } from '../../src/tree/index.js';
import { createTuner } from '../../src/tuner/index.js';
import type { TrialSpec } from '../../src/tuner/index.js';
import { stepsTrained } from '../support/real-run.js';

/**
 * The worker-backend conformance suite: one set of checks that every backend (the sim
 * pool, the local process pool, later Docker) must pass, run through the same engine.
 * A backend runs a study and hands back its event log, plus a way to compute what a
 * trial sees when its trainer trains it alone from scratch.
 */
export interface Backend {
  /** Runs the study; returns the engine's event log and the options it ran with. */
  run(study: Study): Promise<{ log: readonly LogEntry[]; options: EngineOptions }>;
  /** The metric the backend's trainer gives a trial trained alone from scratch to `step`. */
  alone(study: Study, trial: TrialSpec, step: number): Promise<number>;
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

/**
 * Replays the log (which must reproduce every decision) and checks each metric event
 * against the trial trained alone, with its effective schedules: a forked trial's are its
 * source's before the fork and its own after.
 */
async function expectAlone(
  backend: Backend,
  s: Study,
  log: readonly LogEntry[],
  options: EngineOptions,
): Promise<void> {
  const again = replay(s, log, createTuner(s), options);
  expect(again.firstDifference).toBeNull();
  const tree = again.engine.stageTree;
  for (const e of metricEvents(log)) {
    const t = getTrial(tree, e.trial);
    const params = Object.fromEntries(
      Object.entries(t.params).filter(([k]) => k !== LINEAGE_PARAM),
    );
    expect(e.value).toBe(
      await backend.alone(s, { params, schedules: t.schedules, until: t.until }, e.step),
    );
  }
}

export function describeBackendConformance(name: string, backend: Backend): void {
  describe(`worker backend conformance: ${name}`, () => {
    it('reports every demanded metric once, equal to the trial trained alone', async () => {
      const s = study(backend, { kind: 'grid' });
      const { log, options } = await backend.run(s);
      const events = metricEvents(log);
      const keys = events.map((e) => `${e.trial}@${e.step}`);
      expect(new Set(keys).size).toBe(keys.length);
      expect(keys.length).toBe(6 * 4);
      await expectAlone(backend, s, log, options);
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
      const trained = stepsTrained(log);
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
      await expectAlone(backend, s, log, options);
    });

    it('runs SHA promotions and PBT forks, every trial equal to its run alone', async () => {
      const sha = study(backend, { kind: 'sha', trials: 6, eta: 2, minSteps: 4, seed: 2 });
      const shaRun = await backend.run(sha);
      expect(shaRun.log.some((e) => e.kind === 'extend')).toBe(true);
      await expectAlone(backend, sha, shaRun.log, shaRun.options);
      const pbt = study(backend, { kind: 'pbt', population: 4, interval: 4, seed: 3 });
      const pbtRun = await backend.run(pbt);
      expect(pbtRun.log.some((e) => e.kind === 'fork')).toBe(true);
      await expectAlone(backend, pbt, pbtRun.log, pbtRun.options);
    });
  });
}
