import { describe, expect, it } from 'vitest';
import { ExecutionMode } from '../../src/engine/index.js';
import type { LogEntry, TaskId, WireTask, WorkerId } from '../../src/engine/index.js';
import { ValidationError } from '../../src/errors.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { Study } from '../../src/study/index.js';
import { getTrial } from '../../src/tree/index.js';
import { createTuner } from '../../src/tuner/index.js';
import { fitsInventory, gpuList, runWithPool } from '../../src/workers/index.js';
import {
  engineOptions,
  simCosts,
  simInventory,
  simulate,
  SimWorkerPool,
} from '../../src/workers/sim/index.js';
import type { SimCosts } from '../../src/workers/sim/index.js';
import { simAlone, smallStudy } from '../support/sim-study.js';
import { describePoolContract } from './pool-contract.js';

/** Real seconds per simulated second in these tests. */
const SCALE = 0.001;
/**
 * Simulated seconds a task may take before the runner fails it: far beyond any task here,
 * so a busy machine (timers late by a few hundred milliseconds are a few hundred
 * simulated seconds) never times one out.
 */
const TASK_TIMEOUT = 100_000;
/** A learning rate whose steps take a simulated million seconds: a task that never ends. */
const LONG_LR = 0.5;

const costs: SimCosts = {
  stepSeconds: (values) => (values.lr === LONG_LR ? 1e6 : 1),
  startSeconds: 5,
  saveSeconds: 0.5,
  loadSeconds: 0.25,
  sharing: [1],
};

let nextTask = 1;
function wireTask(kind: 'short' | 'long'): WireTask {
  const id = nextTask++;
  return {
    taskId: id,
    saveFirst: null,
    restore: { from: 'init' },
    runs: [
      {
        stage: `S${id}`,
        start: 0,
        end: 2,
        params: { seed: 1 },
        schedules: { lr: canonicalize(parseSchedule(kind === 'long' ? LONG_LR : 0.05)) },
      },
    ],
    saveAfter: null,
    endKey: `K${id}`,
  };
}

describePoolContract('sim', () => {
  const failing = new Set<WorkerId>();
  const delayed = new Set<WorkerId>();
  const inventory = simInventory(3, { hosts: 2 });
  const pool = new SimWorkerPool({
    costs,
    metric: { name: 'loss', mode: 'min' },
    timeScale: SCALE,
    heartbeatSeconds: 10,
    inventory,
    faults: {
      failStart: (id) => failing.has(id),
      resultDelay: (id) => (delayed.has(id) ? 50 : 0),
    },
  });
  return Promise.resolve({
    pool,
    inventory: {
      hosts: [
        {
          name: 'sim-0',
          gpus: [
            { host: 'sim-0', device: 0, memoryBytes: 80 * 1024 ** 3 },
            { host: 'sim-0', device: 1, memoryBytes: 80 * 1024 ** 3 },
          ],
        },
        { name: 'sim-1', gpus: [{ host: 'sim-1', device: 0, memoryBytes: 80 * 1024 ** 3 }] },
      ],
    },
    metric: 'loss',
    grace: 100,
    graceMs: 100,
    task: wireTask,
    failStart: (id: WorkerId) => failing.add(id),
    failOutput: /could not start \(injected fault\)/,
    delayResults: (id: WorkerId) => delayed.add(id),
    silence: (id: WorkerId) => {
      pool.silence(id);
    },
    close: () => pool.shutdown('test over', 0),
  });
});

/** Every metric event of a log, by `trial@step`. */
const metrics = (log: readonly LogEntry[]): Map<string, number> =>
  new Map(
    log.flatMap((e) => (e.kind === 'metric' ? [[`${e.trial}@${e.step}`, e.value] as const] : [])),
  );

async function runInRealTime(
  study: Study,
  pool: SimWorkerPool,
): Promise<{ log: LogEntry[]; stopped: unknown }> {
  const log: LogEntry[] = [];
  const result = await runWithPool({
    study,
    tuner: createTuner(study),
    engine: engineOptions(study, ExecutionMode.stageTree),
    pool,
    // The run's clock reads simulated seconds, like the pool's costs and heartbeats.
    clock: () => performance.now() / 1000 / SCALE,
    sink: (entries) => log.push(...entries),
    heartbeatTimeout: 10_000,
  });
  return { log, stopped: result.stopped };
}

describe('SimWorkerPool: a whole study in real time through runWithPool', () => {
  it('gives every trial the metrics of the discrete-event simulator and of training it alone', async () => {
    const study = smallStudy({ taskTimeout: TASK_TIMEOUT });
    const options = engineOptions(study, ExecutionMode.stageTree);
    const pool = new SimWorkerPool({
      costs: simCosts(study),
      metric: study.metric,
      timeScale: SCALE,
      heartbeatSeconds: 50,
      inventory: simInventory(options.gpus),
    });
    expect(fitsInventory(pool.inventory(), options.gpus)).toBe(true);
    const { log, stopped } = await runInRealTime(study, pool);
    expect(stopped).toBeNull();
    const real = metrics(log);
    const simulated = simulate(study, ExecutionMode.stageTree);
    expect(real).toEqual(metrics(simulated.log));
    expect(real.size).toBe(6 * 4);
    // And each is the trial trained alone from scratch (the equivalence guarantee).
    const tree = simulated.tree;
    let checked = 0;
    for (const [key, value] of real) {
      const [trial, step] = key.split('@') as [string, string];
      expect(value).toBe(simAlone(getTrial(tree, trial), Number(step), study.metric.mode));
      checked++;
    }
    expect(checked).toBe(24);
    // Every worker is gone and no task failed: the pool's bookkeeping matched the engine's.
    expect(log.filter((e) => e.kind === 'fail')).toEqual([]);
  });

  it('runs an adaptive study (ASHA) whose every metric equals the trial trained alone', async () => {
    const study = smallStudy({
      tuner: { kind: 'asha', trials: 6, eta: 2, minSteps: 10, seed: 4, maxConcurrent: 2 },
      taskTimeout: TASK_TIMEOUT,
    });
    const options = engineOptions(study, ExecutionMode.stageTree);
    const pool = new SimWorkerPool({
      costs: simCosts(study),
      metric: study.metric,
      timeScale: SCALE,
      heartbeatSeconds: 50,
      inventory: simInventory(options.gpus),
    });
    const { log, stopped } = await runInRealTime(study, pool);
    expect(stopped).toBeNull();
    expect(log.some((e) => e.kind === 'extend')).toBe(true);
    const specs = new Map(
      log.flatMap((e) => (e.kind === 'propose' ? [[e.trial, e.spec] as const] : [])),
    );
    let checked = 0;
    for (const [key, value] of metrics(log)) {
      const [trial, step] = key.split('@') as [string, string];
      const spec = specs.get(trial);
      if (!spec) throw new Error(`no proposal for ${trial}`);
      expect(value).toBe(simAlone(spec, Number(step), study.metric.mode));
      checked++;
    }
    expect(checked).toBeGreaterThan(6);
  });
});

describe('SimWorkerPool: its own rules', () => {
  const make = (faults = {}): SimWorkerPool =>
    new SimWorkerPool({
      costs,
      metric: { name: 'loss', mode: 'min' },
      timeScale: SCALE,
      heartbeatSeconds: 10,
      inventory: simInventory(0),
      faults,
    });

  it('refuses a time scale or heartbeat that is not a positive number', () => {
    const base = {
      costs,
      metric: { name: 'loss', mode: 'min' as const },
      inventory: simInventory(1),
    };
    expect(() => new SimWorkerPool({ ...base, timeScale: 0, heartbeatSeconds: 1 })).toThrow(
      'SimWorkerPoolOptions.timeScale: expected a number > 0, got 0 (number)',
    );
    expect(() => new SimWorkerPool({ ...base, timeScale: 1, heartbeatSeconds: -1 })).toThrow(
      ValidationError,
    );
    expect(() => simInventory(-1)).toThrow(ValidationError);
  });

  it('spreads GPUs over hosts in order, and a CPU-only inventory has none', () => {
    expect(gpuList(simInventory(5, { hosts: 2, memoryBytes: null }))).toEqual([
      { host: 'sim-0', device: 0, memoryBytes: null },
      { host: 'sim-0', device: 1, memoryBytes: null },
      { host: 'sim-0', device: 2, memoryBytes: null },
      { host: 'sim-1', device: 0, memoryBytes: null },
      { host: 'sim-1', device: 1, memoryBytes: null },
    ]);
    expect(simInventory(0)).toEqual({ hosts: [{ name: 'sim-0', gpus: [] }] });
  });

  it('fails a restore it cannot honour like a real worker: checkpoint, then memory', async () => {
    const pool = make();
    const answers = new Map<TaskId, { reason: string; message: string }>();
    pool.onMessage((_w, m) => {
      if (m.kind === 'failed') answers.set(m.taskId, { reason: m.reason, message: m.message });
    });
    pool.start('w1', 0, 1);
    const base = wireTask('short');
    const fromCheckpoint: WireTask = {
      ...base,
      restore: { from: 'checkpoint', key: 'nowhere' },
    };
    pool.send('w1', { kind: 'run', task: fromCheckpoint });
    const fromMemory: WireTask = {
      ...wireTask('short'),
      restore: { from: 'memory', key: 'K-unknown' },
    };
    for (let i = 0; i < 200 && answers.size < 1; i++) await new Promise((r) => setTimeout(r, 5));
    pool.send('w1', { kind: 'run', task: fromMemory });
    for (let i = 0; i < 200 && answers.size < 2; i++) await new Promise((r) => setTimeout(r, 5));
    expect(answers.get(fromCheckpoint.taskId)).toEqual({
      reason: 'checkpoint',
      message: 'worker w1: checkpoint nowhere does not exist',
    });
    expect(answers.get(fromMemory.taskId)).toEqual({
      reason: 'worker',
      message: 'worker w1: restore from memory K-unknown: the worker holds no state',
    });
    expect(pool.state('w1')).toBe('idle');
    await pool.shutdown('over', 1);
  });

  it('continues from memory and from the checkpoints its workers saved', async () => {
    const pool = make();
    const done = new Map<TaskId, number>();
    pool.onMessage((_w, m) => {
      if (m.kind === 'done') done.set(m.taskId, m.metrics.loss ?? Number.NaN);
      if (m.kind === 'failed') throw new Error(m.message);
    });
    const lr = canonicalize(parseSchedule(0.05));
    const run = (start: number, end: number) => ({
      stage: `S${start}`,
      start,
      end,
      params: { seed: 1 },
      schedules: { lr },
    });
    const wait = async (id: TaskId): Promise<void> => {
      for (let i = 0; i < 400 && !done.has(id); i++) await new Promise((r) => setTimeout(r, 5));
    };
    pool.start('w1', 0, 1);
    pool.start('w2', 1, 1);
    const a: WireTask = {
      taskId: 101,
      saveFirst: null,
      restore: { from: 'init' },
      runs: [run(0, 4)],
      saveAfter: 'K4',
      endKey: 'K4',
    };
    pool.send('w1', { kind: 'run', task: a });
    await wait(101);
    const b: WireTask = {
      taskId: 102,
      saveFirst: null,
      restore: { from: 'memory', key: 'K4' },
      runs: [run(4, 6)],
      saveAfter: null,
      endKey: 'K6',
    };
    pool.send('w1', { kind: 'run', task: b });
    const c: WireTask = {
      taskId: 103,
      saveFirst: null,
      restore: { from: 'checkpoint', key: 'K4' },
      runs: [run(4, 6)],
      saveAfter: null,
      endKey: 'K6',
    };
    pool.send('w2', { kind: 'run', task: c });
    await wait(102);
    await wait(103);
    const alone = simAlone({ params: { seed: 1 }, schedules: { lr } }, 6, 'min');
    expect([done.get(102), done.get(103)]).toEqual([alone, alone]);
    expect(pool.checkpoints()).toEqual(['K4']);
    pool.discard(['K4']);
    expect(pool.checkpoints()).toEqual([]);
    await pool.shutdown('over', 1);
  });
});
