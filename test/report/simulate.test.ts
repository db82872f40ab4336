import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { accountLog } from '../../src/engine/index.js';
import type { LogEntry, Task } from '../../src/engine/index.js';
import { simulateStudy } from '../../src/report/index.js';
import { parseStudy } from '../../src/study/index.js';

const example = (name: string): Record<string, unknown> =>
  JSON.parse(
    readFileSync(new URL(`../../examples/${name}.json`, import.meta.url), 'utf8'),
  ) as Record<string, unknown>;

const EXAMPLES = ['resnet20-multistep-grid', 'warmup-cosine-grid', 'batchsize-switch-step-decay'];
const TUNERS: Record<string, unknown>[] = [
  { kind: 'grid' },
  { kind: 'grid', maxConcurrent: 3 },
  { kind: 'random', trials: 12, seed: 3 },
  { kind: 'sha', trials: 9, eta: 3, minSteps: 10 },
  { kind: 'asha', trials: 20, eta: 3, minSteps: 10, seed: 2 },
  { kind: 'hyperband', eta: 3, minSteps: 10 },
  { kind: 'hyperband', eta: 3, minSteps: 10, async: true, trials: 20 },
  { kind: 'median', trials: 12, seed: 1 },
  { kind: 'pbt', population: 4, interval: 20, seed: 5 },
];

describe('simulateStudy', () => {
  for (const name of EXAMPLES) {
    for (const tuner of TUNERS) {
      it(`${name} with ${JSON.stringify(tuner)}`, () => {
        const study = parseStudy({ ...example(name), tuner });
        const sim = simulateStudy(study);
        const { summary } = sim;
        // The summary's GPU time (the simulator's own sum of task durations) agrees with
        // what the event logs alone say (accountLog: task entries to done / cancel times).
        const st = accountLog(sim.stageTree.log);
        const tb = accountLog(sim.trialBased.log);
        expect(st.gpuSeconds).toBeGreaterThan(0);
        expect(summary.stageTree.gpuHours).toBeCloseTo(st.gpuSeconds / 3600, 3);
        expect(summary.trialBased.gpuHours).toBeCloseTo(tb.gpuSeconds / 3600, 3);
        expect(summary.stageTree.makespanHours).toBeCloseTo(st.makespanSeconds / 3600, 3);
        expect(summary.trialBased.makespanHours).toBeCloseTo(tb.makespanSeconds / 3600, 3);
        expect(summary.savings).toBeCloseTo(tb.gpuSeconds / st.gpuSeconds, 3);
        // And its counts agree with the tasks the stage-tree log holds.
        const tasks = sim.stageTree.log.flatMap((e): Task[] => (e.kind === 'task' ? [e.task] : []));
        expect(summary.stageTree.processStarts).toBe(tasks.filter((t) => t.startProcess).length);
        expect(summary.stageTree.checkpointsLoaded).toBe(
          tasks.filter((t) => t.restore.from === 'checkpoint').length,
        );
        expect(summary.stageTree.checkpointsSaved).toBe(
          tasks.filter((t) => t.saveFirst !== null).length +
            tasks.filter((t) => t.saveAfter !== null).length,
        );
        expect(summary.idealSavings).toBeGreaterThanOrEqual(1);
        // Sharing can only save: the stage tree never needs much more than trial by trial.
        expect(summary.savings).toBeGreaterThan(0.9);
        expect(summary.stageTree.makespanHours).toBeGreaterThanOrEqual(
          summary.makespanLowerBoundHours - 1e-9,
        );
        expect(summary.best).not.toBeNull();
      });
    }
  }

  it('gives the hand-computed GPU time and makespan of a two-trial study', () => {
    // Two trials share lr 0.1 for steps [0, 40) and part there (the lr drops at 40 or 70):
    // the stage tree trains [0, 40) once, then [40, 100) for each. 2 s a step, 10 s a
    // process start, 1 s a save, 0.5 s a load.
    const twoTrials = (workers: number) =>
      parseStudy({
        name: 'two',
        params: { model: 'm', seed: 0 },
        space: {
          lr: { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [{ choice: [40, 70] }] },
        },
        steps: 100,
        tuner: { kind: 'grid' },
        metric: { name: 'loss', mode: 'min' },
        trainer: {
          kind: 'sim',
          stepSeconds: 2,
          startSeconds: 10,
          saveSeconds: 1,
          loadSeconds: 0.5,
        },
        workers,
      });
    const hours = (s: number) => Number((s / 3600).toFixed(4));

    // One worker. Stage tree: start + 40 steps (90 s); save the fork point + 60 steps
    // (121 s), continuing in memory; load it + 60 steps (120.5 s): 331.5 s in a row.
    // Trial by trial: each trial a process start + 100 steps (210 s): 420 s.
    const one = simulateStudy(twoTrials(1)).summary;
    expect(one.stageTree).toEqual({
      gpuHours: hours(331.5),
      makespanHours: hours(331.5),
      stagesRun: 3,
      checkpointsSaved: 1,
      checkpointsLoaded: 1,
      processStarts: 1,
    });
    expect(one.trialBased).toEqual({ gpuHours: hours(420), makespanHours: hours(420) });
    expect(one.savings).toBe(Number((420 / 331.5).toFixed(4)));
    expect(one.idealSavings).toBe(1.25); // 200 trial steps / 160 tree steps

    // Two workers: the second branch starts a process and loads the fork point (130.5 s)
    // beside the first (121 s): 341.5 GPU-seconds, done at 90 + 130.5 s. Trial by trial
    // the two trials run side by side: 420 GPU-seconds, done at 210 s.
    const two = simulateStudy(twoTrials(2)).summary;
    expect(two.stageTree).toMatchObject({
      gpuHours: hours(341.5),
      makespanHours: hours(220.5),
      processStarts: 2,
    });
    expect(two.trialBased).toEqual({ gpuHours: hours(420), makespanHours: hours(210) });
    expect(two.savings).toBe(Number((420 / 341.5).toFixed(4)));
    expect(two.speedup).toBe(Number((210 / 220.5).toFixed(4)));
  });

  it('finds the same best trial and metric in both modes on a grid', () => {
    const study = parseStudy(example('resnet20-multistep-grid'));
    const sim = simulateStudy(study);
    const best = (log: typeof sim.stageTree.log): string =>
      log
        .filter((e): e is Extract<LogEntry, { kind: 'metric' }> => e.kind === 'metric')
        .map((e) => `${e.trial}@${e.step}=${e.value}`)
        .sort()
        .join('\n');
    expect(best(sim.stageTree.log)).toBe(best(sim.trialBased.log));
    expect(sim.summary.savings).toBeGreaterThanOrEqual(0.95 * sim.summary.idealSavings);
    expect(sim.summary.stageTree.makespanHours).toBeLessThanOrEqual(
      1.1 * sim.summary.makespanLowerBoundHours,
    );
  });
});
