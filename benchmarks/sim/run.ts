/**
 * Simulation benchmarks: savings and makespan of stage-tree execution against the
 * trial-based baseline, on grid studies and on studies shaped like the published
 * stage-tree results, plus engine speed at scale (10,000-trial ASHA on 500 GPUs).
 *
 *   npm run bench:sim             (writes benchmarks/sim/results.json)
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { ExecutionMode } from '../../src/engine/index.js';
import { simulateStudy } from '../../src/report/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { simulate } from '../../src/workers/sim/index.js';

const root = new URL('../../', import.meta.url);
const load = (path: string, overrides: Record<string, unknown> = {}): Study =>
  parseStudy({
    ...(JSON.parse(readFileSync(new URL(path, root), 'utf8')) as object),
    ...overrides,
  });

interface Row {
  study: string;
  tuner: string;
  trials: number;
  gpus: number;
  stageTreeGpuHours: number;
  trialBasedGpuHours: number;
  savings: number;
  idealSavings: number;
  savingsOverIdeal: number;
  speedup: number;
  makespanOverLowerBound: number;
  makespanOverPrecedenceBound: number;
  engineSeconds: number;
}

function row(name: string, study: Study): Row {
  const t0 = performance.now();
  const { summary: s } = simulateStudy(study);
  const seconds = (performance.now() - t0) / 1000;
  const r: Row = {
    study: name,
    tuner: study.tuner.kind,
    trials: s.trials,
    gpus: s.gpus,
    stageTreeGpuHours: s.stageTree.gpuHours,
    trialBasedGpuHours: s.trialBased.gpuHours,
    savings: s.savings,
    idealSavings: s.idealSavings,
    savingsOverIdeal: Number((s.savings / s.idealSavings).toFixed(3)),
    speedup: s.speedup,
    makespanOverLowerBound: Number(
      (s.stageTree.makespanHours / s.makespanLowerBoundHours).toFixed(3),
    ),
    makespanOverPrecedenceBound: Number(
      (s.stageTree.makespanHours / s.makespanPrecedenceBoundHours).toFixed(3),
    ),
    engineSeconds: Number(seconds.toFixed(2)),
  };
  console.log(JSON.stringify(r));
  return r;
}

const rows: Row[] = [];
// The example studies, on 20 GPUs.
for (const f of readdirSync(new URL('examples/', root)).sort()) {
  if (!f.endsWith('.json')) continue;
  const study = load(`examples/${f}`, { workers: 20 });
  if (study.trainer.kind === 'sim') rows.push(row(`examples/${f}`, study));
}
// Studies shaped like the published results, and a grid with nothing to share.
for (const f of readdirSync(new URL('benchmarks/sim/studies/', root)).sort()) {
  if (f.startsWith('asha-10k')) continue;
  rows.push(row(`benchmarks/sim/studies/${f}`, load(`benchmarks/sim/studies/${f}`)));
}

// Scale: the engine's own speed.
const big = load('benchmarks/sim/studies/asha-10k-500gpu.json');
const scale = (['stage-tree', 'trial-based'] as const).map((mode) => {
  const t0 = performance.now();
  const r = simulate(
    big,
    mode === 'stage-tree' ? ExecutionMode.stageTree : ExecutionMode.trialBased,
  );
  const seconds = (performance.now() - t0) / 1000;
  const out = {
    mode,
    trials: r.tree.counts.trials,
    gpus: r.gpus,
    tasks: r.stats.stagesRun,
    seconds: Number(seconds.toFixed(1)),
    microsPerTask: Number(((seconds * 1e6) / r.stats.stagesRun).toFixed(0)),
    gpuHours: Number((r.gpuSeconds / 3600).toFixed(1)),
    makespanHours: Number((r.makespanSeconds / 3600).toFixed(3)),
  };
  console.log(JSON.stringify(out));
  return out;
});

writeFileSync(
  new URL('results.json', import.meta.url),
  JSON.stringify(
    {
      command: 'npm run bench:sim',
      node: process.version,
      date: new Date().toISOString().slice(0, 10),
      rows,
      scale,
    },
    null,
    2,
  ) + '\n',
);
