/**
 * Multi-study benchmarks in simulation: several studies through one engine (sessions on
 * one stage forest and one cluster) against each study run alone, and against the
 * trial-based baseline today's tools run.
 *
 *   npm run bench:multi           (writes benchmarks/multi/results.json)
 *
 * (a) A team re-tunes the ResNet-20 learning-rate grid weekly (examples/
 *     resnet20-multistep-grid.json's costs: 3.4 s per epoch, 180 epochs), each week adding
 *     one option for the first milestone; each week's study is submitted a week after
 *     the last, so it finds the earlier weeks' stages trained.
 * (b) Several users' grids over the same ResNet-20 prefix (the same model, data and
 *     initial learning rates, each user trying their own milestones), arriving over a day.
 */
import { writeFileSync } from 'node:fs';
import { ExecutionMode } from '../../src/engine/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { simulate, simulateStudies } from '../../src/workers/sim/index.js';
import type { Submission } from '../../src/workers/sim/index.js';

function grid(name: string, first: number[], second: number[], workers = 4): Study {
  return parseStudy({
    name,
    params: { model: 'resnet20', dataset: 'cifar10', seed: 0 },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.05, 0.1, 0.2] },
        factor: 0.1,
        milestones: [{ choice: first }, { choice: second }],
      },
      batchSize: 128,
      momentum: 0.9,
      weightDecay: 0.0001,
    },
    steps: 180,
    evalEvery: 20,
    tuner: { kind: 'grid' },
    metric: { name: 'val_accuracy', mode: 'max' },
    trainer: {
      kind: 'sim',
      stepSeconds: 3.4,
      startSeconds: 5.3,
      saveSeconds: 0.05,
      loadSeconds: 0.03,
    },
    resources: { gpus: 1 },
    workers,
  });
}

const hours = (s: number): number => Math.round((s / 3600) * 1000) / 1000;
const ratio = (a: number, b: number): number => Math.round((a / b) * 1000) / 1000;

interface Scenario {
  readonly name: string;
  readonly studies: number;
  readonly trials: number;
  readonly gpus: number;
  /** Each study alone, trial by trial (today's tools), summed. */
  readonly trialBasedGpuHours: number;
  /** Each study alone as its own stage tree, summed. */
  readonly aloneGpuHours: number;
  /** All studies through one engine. */
  readonly sharedGpuHours: number;
  readonly sharedOverAlone: number;
  readonly sharedOverTrialBased: number;
  /** Mean hours from a study's submission to its end, in the shared run and alone. */
  readonly sharedMeanLatencyHours: number;
  readonly aloneMeanLatencyHours: number;
  /** Per study in the shared run: steps its tasks trained, and demanded steps it reused. */
  readonly perStudy: readonly { name: string; stepsTrained: number; stepsReused: number }[];
}

function scenario(name: string, submissions: Submission[], gpus: number): Scenario {
  let trialBased = 0;
  let alone = 0;
  let aloneMakespan = 0;
  let trials = 0;
  for (const s of submissions) {
    const st = simulate(s.study, ExecutionMode.stageTree);
    const tb = simulate(s.study, ExecutionMode.trialBased);
    alone += st.gpuSeconds;
    aloneMakespan += st.makespanSeconds;
    trialBased += tb.gpuSeconds;
    trials += st.log.filter((e) => e.kind === 'propose').length;
  }
  const shared = simulateStudies(submissions, { gpus, workers: gpus });
  let latency = 0;
  for (const e of shared.log) {
    if (e.kind !== 'finish') continue;
    const name = e.study ?? submissions[0]?.study.name;
    latency += e.t - (submissions.find((x) => x.study.name === name)?.at ?? 0);
  }
  return {
    name,
    studies: submissions.length,
    trials,
    gpus,
    trialBasedGpuHours: hours(trialBased),
    aloneGpuHours: hours(alone),
    sharedGpuHours: hours(shared.gpuSeconds),
    sharedOverAlone: ratio(alone, shared.gpuSeconds),
    sharedOverTrialBased: ratio(trialBased, shared.gpuSeconds),
    perStudy: [...shared.studies].map(([key, v]) => ({
      name: key === '' ? (submissions[0]?.study.name ?? '') : key,
      stepsTrained: Math.round(v.trained * 10) / 10,
      stepsReused: Math.round(v.reused * 10) / 10,
    })),
    sharedMeanLatencyHours: hours(latency / submissions.length),
    aloneMeanLatencyHours: hours(aloneMakespan / submissions.length),
  };
}

const WEEK = 7 * 86400;
const weekly: Submission[] = [[60], [60, 80], [60, 80, 100], [60, 80, 100, 110]].map(
  (first, k) => ({ study: grid(`week${k + 1}`, first, [120, 140, 160]), at: k * WEEK }),
);
const users: Submission[] = [
  { first: [60], second: [120] },
  { first: [60, 80], second: [140] },
  { first: [80, 100], second: [140, 160] },
  { first: [60, 100], second: [120, 160] },
  { first: [100], second: [120, 140, 160] },
].map(({ first, second }, k) => ({
  study: grid(`user${k + 1}`, first, second),
  at: k * 4 * 3600,
}));

const results = {
  command: 'npm run bench:multi',
  node: process.version,
  date: new Date().toISOString().slice(0, 10),
  scenarios: [
    scenario('weekly re-tuning, 4 weeks', weekly, 4),
    scenario('5 users over a day', users, 4),
  ],
};
console.log(JSON.stringify(results, null, 2));
writeFileSync(new URL('results.json', import.meta.url), JSON.stringify(results, null, 2) + '\n');
