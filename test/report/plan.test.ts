import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { planStudy, renderPlan } from '../../src/report/index.js';
import { parseStudy } from '../../src/study/index.js';
import { upfrontTrials } from '../../src/tuner/index.js';
import { bruteForce } from '../support/trials.js';

const example = (name: string): unknown =>
  JSON.parse(readFileSync(new URL(`../../examples/${name}.json`, import.meta.url), 'utf8'));

describe('planStudy on the example studies', () => {
  const cases = [
    ['resnet20-multistep-grid', { trials: 27, trialSteps: 4860, treeSteps: 2100 }],
    ['warmup-cosine-grid', { trials: 24, trialSteps: 4800, treeSteps: 2378 }],
    ['batchsize-switch-step-decay', { trials: 36, trialSteps: 4320, treeSteps: 2230 }],
  ] as const;

  it.each(cases)('%s', (name, expected) => {
    const study = parseStudy(example(name));
    const plan = planStudy(study);
    expect(plan.summary).toMatchObject(expected);
    expect(plan.summary.idealSavings).toBeCloseTo(expected.trialSteps / expected.treeSteps, 4);
    // The tree agrees with merging by brute force, step by step.
    const ref = bruteForce(upfrontTrials(study));
    expect(plan.summary.treeSteps).toBe(ref.steps);
    expect(plan.summary.stages).toBe(ref.stages);
  });

  it('renders the shape of the tree', () => {
    const study = parseStudy(example('resnet20-multistep-grid'));
    const text = renderPlan(study, planStudy(study));
    expect(text).toContain('27 trials (grid), 105 stages');
    expect(text).toContain('ideal savings 2.31x');
    expect(text).toMatch(
      /├─ \[0, 60\) batchSize=128 lr=0\.05 momentum=0\.9 weightDecay=0\.0001 {2}\(9 trials, 3 stages\)/,
    );
    expect(text).toContain('[80, 120) lr=0.05..0.005');
  });

  it('plans a random study reproducibly', () => {
    const study = parseStudy({
      ...(example('resnet20-multistep-grid') as object),
      tuner: { kind: 'random', trials: 40, seed: 7 },
    });
    const a = planStudy(study).summary;
    expect(a.trials).toBe(40);
    expect(planStudy(study).summary).toEqual(a);
    expect(a.treeSteps).toBeLessThan(a.trialSteps);
  });
});
