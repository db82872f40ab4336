/**
 * Stage-tree insertion at scale: 100,000 trials of a realistic grid (multistep learning
 * rate x milestones x batch-size switch) and of a random study, inserted in one batch
 * and (for a sample) one at a time into the full tree. Reports wall time and heap.
 *
 *   npm run bench:tree            (writes benchmarks/tree/results.json)
 */
import { writeFileSync } from 'node:fs';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { emptyTree, insertTrial, insertTrials, treeStats } from '../../src/tree/index.js';
import type { StageTree, TrialInput } from '../../src/tree/index.js';

const EPOCHS = 200;
const N = Number(process.env.TRIALS ?? 100_000);

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}
function heapMiB(): number {
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

const cache = new Map<string, Canonical>();
function canon(json: unknown): Canonical {
  const key = JSON.stringify(json);
  let c = cache.get(key);
  if (!c) {
    c = canonicalize(parseSchedule(json));
    cache.set(key, c);
  }
  return c;
}

/** 10 initial LRs x 100 milestone pairs x 100 batch-size switches = 100,000 trials. */
function* gridTrials(): Generator<TrialInput> {
  const inits = [0.4, 0.2, 0.1, 0.08, 0.05, 0.04, 0.02, 0.01, 0.005, 0.002];
  const sizes = [256, 384, 512, 640, 768, 896, 1024, 1152, 1280, 1536];
  let i = 0;
  for (const init of inits)
    for (let m1 = 60; m1 < 160; m1 += 10)
      for (let gap = 10; gap <= 100; gap += 10)
        for (let at = 20; at <= 200; at += 20)
          for (const size of sizes) {
            if (i >= N) return;
            yield {
              id: `g${i++}`,
              params: { model: 'resnet20', dataset: 'cifar10', seed: 0 },
              schedules: {
                lr: canon({ kind: 'multistep', init, factor: 0.1, milestones: [m1, m1 + gap] }),
                batchSize: canon(
                  at < EPOCHS ? { kind: 'piecewise', values: [128, size], boundaries: [at] } : 128,
                ),
              },
              until: EPOCHS,
              reports: [50, 100, 150],
            };
          }
}

/** Random search: log-uniform initial LR, random milestones and batch size; nothing shared. */
function* randomTrials(): Generator<TrialInput> {
  let s = 12345;
  const rand = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  for (let i = 0; i < N; i++) {
    const init = Math.exp(Math.log(0.001) + rand() * (Math.log(0.5) - Math.log(0.001)));
    const m1 = 50 + Math.floor(rand() * 100);
    yield {
      id: `r${i}`,
      params: { model: 'resnet20', dataset: 'cifar10', seed: 0 },
      schedules: {
        lr: canonicalize(
          parseSchedule({ kind: 'multistep', init, factor: 0.1, milestones: [m1, m1 + 50] }),
        ),
        batchSize: canon([128, 256, 512][Math.floor(rand() * 3)]),
      },
      until: EPOCHS,
      reports: [50, 100, 150],
    };
  }
}

interface Result {
  study: string;
  trials: number;
  stages: number;
  treeSteps: number;
  trialSteps: number;
  idealSavings: number;
  batchInsertSeconds: number;
  microsPerTrialBatch: number;
  singleInsertMicros: number;
  heapMiB: number;
}

function run(study: string, make: () => Generator<TrialInput>): Result {
  const inputs = [...make()];
  const sample = inputs.splice(inputs.length - 1000, 1000);
  const before = heapMiB();
  const t0 = performance.now();
  let tree: StageTree = insertTrials(emptyTree(), inputs);
  const batch = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  for (const t of sample) tree = insertTrial(tree, t);
  const single = ((performance.now() - t1) * 1000) / sample.length;
  const heap = heapMiB() - before;
  const stats = treeStats(tree);
  return {
    study,
    trials: stats.trials,
    stages: stats.stages,
    treeSteps: stats.treeSteps,
    trialSteps: stats.trialSteps,
    idealSavings: Number(stats.idealSavings.toFixed(2)),
    batchInsertSeconds: Number(batch.toFixed(2)),
    microsPerTrialBatch: Number(((batch * 1e6) / inputs.length).toFixed(1)),
    singleInsertMicros: Number(single.toFixed(0)),
    heapMiB: Number(heap.toFixed(0)),
  };
}

const results = [run('grid', gridTrials), run('random', randomTrials)];
console.table(results);
if (N === 100_000) {
  writeFileSync(
    new URL('results.json', import.meta.url),
    JSON.stringify(
      {
        command: 'npm run bench:tree',
        node: process.version,
        date: new Date().toISOString().slice(0, 10),
        results,
      },
      null,
      2,
    ) + '\n',
  );
}
