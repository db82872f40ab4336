/**
 * Multi-study benchmarks on real worker processes: several studies through one executor
 * (one store, one pool of local processes, one engine) against each study run alone in
 * its own store, and against trial-based execution, on the deterministic QuadraticTrainer
 * (`stepDelayMs` makes a step cost about 10 ms, so that GPU time means something).
 *
 *   npm run bench:multi:real        (builds; writes benchmarks/multi/results-real.json)
 *
 * (a) Weekly re-tuning: week k's grid adds one milestone option; each week is run on the
 *     same store after the last one finished (`retain: 'all'` keeps the trained states).
 * (b) Three users' grids over one prefix, submitted together to one executor.
 *
 * GPU time is share x wall time of every attempt (`accountLog`: the one definition
 * `status` uses); here every stage holds a whole slot (share 1), so it is worker-seconds.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { accountLog, ExecutionMode } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { Executor } from '../../src/executor/index.js';
import type { ExecutorOptions, StudySource } from '../../src/executor/index.js';
import { StudyStore } from '../../src/store/index.js';
import { parseStudy } from '../../src/study/index.js';

const TRAINER = resolve(import.meta.dirname, '../../dist/trainer/quadratic.js');
const quiet = (): void => undefined;

function study(name: string, milestones: number[]): Record<string, unknown> {
  return {
    name,
    params: { seed: 1, stepDelayMs: 10 },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.02, 0.05] },
        factor: 0.1,
        milestones: [{ choice: milestones }],
      },
      momentum: 0.9,
    },
    steps: 40,
    evalEvery: 10,
    tuner: { kind: 'grid' },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'node', module: TRAINER, export: 'QuadraticTrainer' },
    workers: 2,
  };
}

/** Writes a study file; returns it as an executor source. */
function source(dir: string, json: Record<string, unknown>): StudySource {
  const file = join(dir, `${String(json.name)}.json`);
  writeFileSync(file, JSON.stringify(json));
  return { study: parseStudy(json), file };
}

function readLog(db: string): LogEntry[] {
  const store = StudyStore.open(db);
  try {
    return store.events();
  } finally {
    store.close();
  }
}

const stepsOf = (log: readonly LogEntry[]): number =>
  log.reduce(
    (n, e) => (e.kind === 'task' ? n + e.task.runs.reduce((m, r) => m + r.end - r.start, 0) : n),
    0,
  );

interface Measured {
  readonly gpuSeconds: number;
  readonly steps: number;
  readonly wallSeconds: number;
}

/** Runs sources on one executor (a fresh or existing store); returns what its log adds. */
async function runOn(
  db: string,
  checkpoints: string,
  sources: readonly StudySource[],
  extra: Partial<ExecutorOptions> = {},
): Promise<Measured & { perStudy: { name: string; stepsTrained: number; stepsReused: number }[] }> {
  const before = (() => {
    try {
      return readLog(db).length;
    } catch {
      return 0;
    }
  })();
  const t0 = performance.now();
  const executor = await Executor.open({ db, checkpoints, log: quiet, ...extra }, sources);
  const out = await executor.finish();
  const wallSeconds = (performance.now() - t0) / 1000;
  if (out.stopped !== null) throw new Error(`stopped: ${JSON.stringify(out.stopped)}`);
  const log = readLog(db);
  const added = log.slice(before);
  // GPU time of the new attempts: account the whole log, minus what it held before.
  const gpuSeconds = accountLog(log).gpuSeconds - accountLog(log.slice(0, before)).gpuSeconds;
  const names = new Set(sources.map((s) => s.study.name));
  return {
    gpuSeconds,
    steps: stepsOf(added),
    wallSeconds,
    perStudy: out.studies
      .filter((s) => names.has(s.name))
      .map((s) => ({ name: s.name, stepsTrained: s.stepsTrained, stepsReused: s.stepsReused })),
  };
}

function sum(xs: readonly Measured[]): Measured {
  return {
    gpuSeconds: xs.reduce((n, x) => n + x.gpuSeconds, 0),
    steps: xs.reduce((n, x) => n + x.steps, 0),
    wallSeconds: xs.reduce((n, x) => n + x.wallSeconds, 0),
  };
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

async function scenario(
  name: string,
  jsons: readonly Record<string, unknown>[],
  together: boolean,
): Promise<object> {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-bench-multi-'));
  try {
    const sources = jsons.map((j) => source(dir, j));
    // Each study alone, as its own stage tree and trial by trial, each in its own store.
    const alone: Measured[] = [];
    const trialBased: Measured[] = [];
    for (const s of sources) {
      alone.push(
        await runOn(join(dir, `${s.study.name}-st.db`), join(dir, `${s.study.name}-st`), [s]),
      );
      trialBased.push(
        await runOn(join(dir, `${s.study.name}-tb.db`), join(dir, `${s.study.name}-tb`), [s], {
          mode: ExecutionMode.trialBased,
        }),
      );
    }
    // Through one executor: together, or one after another on the same store.
    const db = join(dir, 'shared.db');
    const ck = join(dir, 'shared');
    const shared = together ? [await runOn(db, ck, sources, { workers: 2 })] : [];
    if (!together)
      for (const s of sources) shared.push(await runOn(db, ck, [s], { retain: 'all' }));
    const a = sum(alone);
    const tb = sum(trialBased);
    const sh = sum(shared);
    return {
      name,
      studies: sources.length,
      trials: jsons.reduce(
        (n, j) =>
          n +
          2 *
            ((j.space as { lr: { milestones: { choice: unknown[] }[] } }).lr.milestones[0]?.choice
              .length ?? 0),
        0,
      ),
      trialBased: {
        gpuSeconds: r3(tb.gpuSeconds),
        steps: tb.steps,
        wallSeconds: r3(tb.wallSeconds),
      },
      alone: { gpuSeconds: r3(a.gpuSeconds), steps: a.steps, wallSeconds: r3(a.wallSeconds) },
      shared: { gpuSeconds: r3(sh.gpuSeconds), steps: sh.steps, wallSeconds: r3(sh.wallSeconds) },
      gpuSharedOverAlone: r3(a.gpuSeconds / sh.gpuSeconds),
      gpuSharedOverTrialBased: r3(tb.gpuSeconds / sh.gpuSeconds),
      stepsSharedOverAlone: r3(a.steps / sh.steps),
      perStudy: shared.flatMap((x) => ('perStudy' in x ? (x.perStudy as object[]) : [])),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const results = {
  command: 'npm run bench:multi:real',
  node: process.version,
  machine: `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}`,
  date: new Date().toISOString().slice(0, 10),
  scenarios: [
    await scenario(
      'weekly re-tuning, 3 weeks, one store, each week after the last',
      [study('week1', [20]), study('week2', [20, 30]), study('week3', [20, 30, 25])],
      false,
    ),
    await scenario(
      '3 users at once on one executor',
      [study('user1', [20, 30]), study('user2', [25, 30]), study('user3', [20, 35])],
      true,
    ),
  ],
};
writeFileSync(
  resolve(import.meta.dirname, 'results-real.json'),
  JSON.stringify(results, null, 2) + '\n',
);
console.log(JSON.stringify(results, null, 2));
