/**
 * Real execution benchmarks (local processes, this machine, no GPU):
 *
 * 1. Dispatch latency of a one-step stage on a worker that holds the parent state in
 *    memory (hot), on a warm worker that loads a checkpoint, and on a cold worker
 *    process (start, register, init).
 * 2. Worker-seconds of a real `run` against its trial-based run on an example study,
 *    next to the ideal savings.
 *
 *   npm run bench:run         (writes benchmarks/run/results.json)
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runStudy } from '../../src/cli/run.js';
import { ExecutionMode, toWireTask } from '../../src/engine/index.js';
import type { Task, WorkerToEngine } from '../../src/engine/index.js';
import { startWorkerHub } from '../../src/rpc/index.js';
import type { WorkerConnection } from '../../src/rpc/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { StudyStore } from '../../src/store/index.js';
import { parseStudy } from '../../src/study/index.js';
import { ProcessPool } from '../../src/workers/index.js';
import { planStudy } from '../../src/report/index.js';

const ROOT = resolve(import.meta.dirname, '../..');
const TRAINER = join(ROOT, 'dist', 'trainer', 'quadratic.js');
const median = (xs: number[]): number =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function dispatch(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-bench-'));
  const conns = new Map<string, WorkerConnection>();
  const waiters = new Map<number, (m: WorkerToEngine) => void>();
  let pool: ProcessPool | null = null;
  const hub = await startWorkerHub({
    admit: (r) => (pool ? pool.admit(r) : { code: 'unauthenticated', message: 'no pool yet' }),
    onConnect: (c) => {
      conns.set(c.registration.workerId, c);
      pool?.attach(c);
    },
  });
  pool = new ProcessPool({
    command: () => ({
      file: process.execPath,
      args: [join(ROOT, 'dist', 'cli', 'worker.js')],
      env: { STAGETREE_TRAINER_MODULE: TRAINER, STAGETREE_TRAINER_EXPORT: 'QuadraticTrainer' },
    }),
    engineAddress: hub.address,
    gpus: false,
    welcome: { kind: 'welcome', checkpointDir: dir, heartbeatSeconds: 1 },
    log: () => undefined,
  });
  pool.onMessage((_w, m) => {
    if (m.kind === 'done' || m.kind === 'failed') waiters.get(m.taskId)?.(m);
  });
  const lr = canonicalize(parseSchedule(0.05));
  let id = 0;
  let step = 0;
  const task = (worker: string, restore: Task['restore'], saveAfter: string | null): Task => {
    id++;
    const start = restore.from === 'init' ? 0 : step;
    step = start + 1;
    return {
      id,
      worker,
      gpu: 0,
      startProcess: false,
      saveFirst: null,
      restore,
      runs: [{ stage: `S${id}`, start, end: start + 1, params: { seed: 1 }, schedules: { lr } }],
      saveAfter,
      endKey: `K${id}`,
      share: 1,
    };
  };
  const run = async (worker: string, t: Task, startProcess = false): Promise<number> => {
    const t0 = performance.now();
    const done = new Promise<WorkerToEngine>((r) => waiters.set(t.id, r));
    if (startProcess) pool.start(worker, 0, 1);
    pool.send(worker, { kind: 'run', task: toWireTask(t) });
    const m = await done;
    if (m.kind !== 'done') throw new Error(`task ${t.id} failed: ${JSON.stringify(m)}`);
    return performance.now() - t0;
  };
  const out = { coldMs: [] as number[], warmMs: [] as number[], hotMs: [] as number[] };
  for (let i = 0; i < 10; i++)
    out.coldMs.push(await run(`cold${i}`, task(`cold${i}`, { from: 'init' }, null), true));
  // One long-lived worker: save a state, then alternate checkpoint restores and hot continuations.
  await run('w', task('w', { from: 'init' }, 'Kbase'), true);
  const baseStep = step;
  for (let i = 0; i < 30; i++) {
    step = baseStep;
    const warm = task('w', { from: 'checkpoint', stage: 'Sbase', key: 'Kbase' }, null);
    out.warmMs.push(await run('w', warm));
    out.hotMs.push(await run('w', task('w', { from: 'memory', key: warm.endKey }, null)));
  }
  await pool.shutdown('benchmark over');
  await hub.close();
  return { coldMs: median(out.coldMs), warmMs: median(out.warmMs), hotMs: median(out.hotMs) };
}

async function savings(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-bench-'));
  const json = {
    name: 'quadratic-savings',
    params: { seed: 1, stepDelayMs: 100 },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.02, 0.05] },
        factor: 0.1,
        milestones: [{ choice: [10, 15] }, 18],
      },
      momentum: 0.9,
    },
    steps: 20,
    evalEvery: 5,
    tuner: { kind: 'grid' },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'node', module: TRAINER, export: 'QuadraticTrainer' },
    workers: 2,
  };
  const file = join(dir, 'study.json');
  writeFileSync(file, JSON.stringify(json));
  const study = parseStudy(json);
  const busy = (db: string): number => {
    const s = StudyStore.open(db);
    try {
      return s.attempts().reduce((sum, a) => sum + ((a.endedAt ?? a.startedAt) - a.startedAt), 0);
    } finally {
      s.close();
    }
  };
  const st = await runStudy(
    file,
    study,
    { db: join(dir, 'st.db'), checkpoints: join(dir, 'st') },
    { log: () => undefined },
  );
  const tb = await runStudy(
    file,
    study,
    { db: join(dir, 'tb.db'), checkpoints: join(dir, 'tb') },
    {
      log: () => undefined,
      mode: ExecutionMode.trialBased,
    },
  );
  const stBusy = busy(st.paths.db);
  const tbBusy = busy(tb.paths.db);
  return {
    trials: planStudy(study).summary.trials,
    idealSavings: planStudy(study).summary.idealSavings,
    stageTreeWorkerSeconds: Number(stBusy.toFixed(2)),
    trialBasedWorkerSeconds: Number(tbBusy.toFixed(2)),
    savings: Number((tbBusy / stBusy).toFixed(3)),
    stageTreeWallSeconds: Number(st.seconds.toFixed(2)),
    trialBasedWallSeconds: Number(tb.seconds.toFixed(2)),
  };
}

const d = await dispatch();
console.log('dispatch (median ms)', d);
const s = await savings();
console.log('savings', s);
writeFileSync(
  new URL('results.json', import.meta.url),
  JSON.stringify(
    {
      command: 'npm run bench:run',
      node: process.version,
      date: new Date().toISOString().slice(0, 10),
      dispatch: d,
      savings: s,
    },
    null,
    2,
  ) + '\n',
);
