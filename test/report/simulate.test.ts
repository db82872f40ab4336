import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { LogEntry } from '../../src/engine/index.js';
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
        const { summary } = simulateStudy(study);
        // Both modes ran and the comparison is self-consistent.
        expect(summary.stageTree.gpuHours).toBeGreaterThan(0);
        expect(summary.trialBased.gpuHours).toBeGreaterThan(0);
        expect(summary.savings).toBeCloseTo(
          summary.trialBased.gpuHours / summary.stageTree.gpuHours,
          1,
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
