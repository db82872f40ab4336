import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { toWireTask } from '../../src/engine/index.js';
import type { Task, WorkerToEngine } from '../../src/engine/index.js';
import { startWorkerHub } from '../../src/rpc/index.js';
import type { WorkerHub } from '../../src/rpc/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { ValidationError } from '../../src/errors.js';
import {
  detectGpus,
  parseGpuQuery,
  ProcessPool,
  UnknownGpuError,
} from '../../src/workers/index.js';
import type { GoneInfo, ProcessPoolOptions } from '../../src/workers/index.js';
import { IllegalTransitionError, SlotLifecycle, SlotState } from '../../src/workers/slot.js';
import { ROOT, TRAINER } from '../support/real-run.js';

/**
 * What the process pool does beyond the WorkerPool contract (which
 * process-pool.contract.test.ts checks): the slot lifecycle's table, a command that
 * cannot be spawned, a worker that is not what it was started as, GPU devices and the
 * inventory, and no process left after a shutdown.
 */

const lr = canonicalize(parseSchedule(0.05));
let nextTask = 1;
const task = (worker: string, steps: number, stepDelayMs = 0, id = nextTask++): Task => ({
  id,
  worker,
  gpu: 0,
  startProcess: false,
  saveFirst: null,
  restore: { from: 'init' },
  runs: [{ stage: 'S', start: 0, end: steps, params: { seed: 1, stepDelayMs }, schedules: { lr } }],
  saveAfter: null,
  endKey: `K${nextTask}`,
  share: 1,
});

let hubs: WorkerHub[] = [];
let pools: ProcessPool[] = [];
afterEach(async () => {
  await Promise.all(pools.map((p) => p.shutdown('test over', 1)));
  await Promise.all(hubs.map((h) => h.close()));
  hubs = [];
  pools = [];
});

async function pool(
  file = process.execPath,
  prefix: readonly string[] = [],
  gpuOptions: Pick<ProcessPoolOptions, 'gpus' | 'devices'> = { gpus: false },
): Promise<{
  hub: WorkerHub;
  pool: ProcessPool;
  messages: { worker: string; m: WorkerToEngine }[];
  gone: Map<string, { reason: string; info: GoneInfo }>;
  until: (what: string, cond: () => boolean) => Promise<void>;
}> {
  let p: ProcessPool | null = null;
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-pool-'));
  const hub = await startWorkerHub({
    socket: join(dir, 'hub.sock'),
    admit: (r) => (p ? p.admit(r) : { code: 'unauthenticated', message: 'no pool' }),
    onConnect: (c) => p?.attach(c),
  });
  hubs.push(hub);
  p = new ProcessPool({
    command: () => ({
      file,
      args: [...prefix, join(ROOT, 'dist', 'cli', 'worker.js')],
      env: { STAGETREE_TRAINER_MODULE: TRAINER, STAGETREE_TRAINER_EXPORT: 'QuadraticTrainer' },
    }),
    engineAddress: hub.address,
    ...gpuOptions,
    welcome: { kind: 'welcome', checkpointDir: join(dir, 'ck'), heartbeatSeconds: 1 },
    log: () => undefined,
  });
  pools.push(p);
  const messages: { worker: string; m: WorkerToEngine }[] = [];
  const gone = new Map<string, { reason: string; info: GoneInfo }>();
  p.onMessage((worker, m) => messages.push({ worker, m }));
  p.onGone((worker, reason, info) => gone.set(worker, { reason, info }));
  const until = async (what: string, cond: () => boolean): Promise<void> => {
    const end = Date.now() + 20_000;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { hub, pool: p, messages, gone, until };
}

describe('slot lifecycle', () => {
  it('allows only the transitions of the lifecycle, and gone is final', () => {
    const s = new SlotLifecycle('w1');
    const path: SlotState[] = ['idle', 'busy', 'idle', 'busy', 'draining', 'gone'];
    for (const next of path) s.to(next);
    expect(s.state).toBe('gone');
    let thrown = 0;
    for (const next of Object.values(SlotState)) {
      expect(() => s.to(next)).toThrow(IllegalTransitionError);
      thrown++;
    }
    expect(thrown).toBe(5);
    expect(() => new SlotLifecycle('w2').to('busy')).toThrow(
      'internal: worker slot w2 cannot go from starting to busy (allowed: idle, draining, gone)',
    );
  });

  it('moves with the messages that reach the worker, and only its own task frees it', () => {
    const s = new SlotLifecycle('w1');
    const run = (id: number) => ({ kind: 'run' as const, task: toWireTask(task('w1', 1, 0, id)) });
    // While starting, messages wait; a second task waiting is a caller bug.
    s.queue(run(1));
    expect(() => s.queue(run(2))).toThrow(IllegalTransitionError);
    s.queue({ kind: 'cancel', taskId: 1 });
    s.queue(run(2)); // the first was cancelled before it was ever delivered
    s.to('idle');
    s.deliver(run(2));
    expect([s.state, s.task]).toEqual(['busy', 2]);
    // A cancel or a result for another task moves nothing.
    s.deliver({ kind: 'cancel', taskId: 1 });
    s.answered(1);
    expect([s.state, s.task]).toEqual(['busy', 2]);
    s.deliver({ kind: 'cancel', taskId: 2 });
    expect([s.state, s.task]).toEqual(['idle', null]);
    s.deliver(run(3));
    // The cancelled task's late result does not free the slot that runs the next one.
    s.answered(2);
    expect([s.state, s.task]).toEqual(['busy', 3]);
    s.answered(3);
    expect([s.state, s.task]).toEqual(['idle', null]);
    s.deliver({ kind: 'shutdown', reason: 'done' });
    expect(s.state).toBe('draining');
    // Draining: nothing moves it but its end.
    s.deliver(run(4));
    s.answered(4);
    expect(s.state).toBe('draining');
    s.to('gone');
    s.deliver(run(5));
    expect(s.state).toBe('gone');
  });
});

describe('the process pool inventory', () => {
  const command = () => ({ file: process.execPath, args: [], env: {} });
  const welcome = { kind: 'welcome' as const, checkpointDir: '/nowhere', heartbeatSeconds: 1 };
  const base = { command, engineAddress: 'unix:/nowhere', welcome, host: 'h1' };

  it('has no GPUs when CPU-only: an index is a worker slot', () => {
    const p = new ProcessPool({ ...base, gpus: false });
    expect(p.inventory()).toEqual({ hosts: [{ name: 'h1', gpus: [] }] });
  });

  it('lists its devices in order, and refuses an index outside them', () => {
    const p = new ProcessPool({
      ...base,
      gpus: true,
      devices: [
        { device: 2, memoryBytes: 1024 },
        { device: 0, memoryBytes: null },
      ],
    });
    expect(p.inventory()).toEqual({
      hosts: [
        {
          name: 'h1',
          gpus: [
            { host: 'h1', device: 2, memoryBytes: 1024 },
            { host: 'h1', device: 0, memoryBytes: null },
          ],
        },
      ],
    });
    expect(() => {
      p.start('w1', 2, 1);
    }).toThrow(UnknownGpuError);
    expect(p.state('w1')).toBeNull();
  });

  it('refuses devices that make no sense', () => {
    expect(() => new ProcessPool({ ...base, gpus: false, devices: [] })).toThrow(ValidationError);
    expect(
      () =>
        new ProcessPool({
          ...base,
          gpus: true,
          devices: [
            { device: 1, memoryBytes: null },
            { device: 1, memoryBytes: null },
          ],
        }),
    ).toThrow(
      'ProcessPoolOptions.devices[1].device: expected a device number >= 0, each once, got 1 (number)',
    );
    expect(
      () => new ProcessPool({ ...base, gpus: true, devices: [{ device: 0, memoryBytes: 0 }] }),
    ).toThrow('ProcessPoolOptions.devices[0].memoryBytes');
  });

  it('asks nvidia-smi when it has GPUs but no device list, and keeps index i on device i', () => {
    const fake = join(ROOT, 'test', 'fixtures', 'bin');
    expect(detectGpus(join(fake, 'nvidia-smi'))).toEqual([
      { device: 0, memoryBytes: 81559 * 1024 * 1024 },
      { device: 1, memoryBytes: null },
    ]);
    expect(detectGpus('/nonexistent/nvidia-smi')).toEqual([]);
    expect(parseGpuQuery('garbage\n3, 1024\n\n')).toEqual([{ device: 3, memoryBytes: 1024 ** 3 }]);
    const path = process.env.PATH;
    process.env.PATH = `${fake}:${path ?? ''}`;
    try {
      const p = new ProcessPool({ ...base, gpus: true });
      expect(p.inventory().hosts[0]?.gpus.map((g) => g.device)).toEqual([0, 1]);
    } finally {
      process.env.PATH = path;
    }
  });
});

describe('the process pool contract (real processes)', () => {
  it('reports a slot that fails to start as gone, never registered', async () => {
    const { pool: p, gone, until } = await pool('/nonexistent/node');
    p.start('w1', 0, 1);
    await until('the failure', () => gone.has('w1'));
    expect(gone.get('w1')?.reason).toMatch(/^could not start: spawn \/nonexistent\/node ENOENT/);
    expect(gone.get('w1')?.info.registered).toBe(false);
    expect(p.state('w1')).toBe('gone');
  });

  it('refuses a worker that is not what it was started as (other GPUs)', async () => {
    // Started for no GPU, but something on the way hands it GPU 3.
    const {
      hub,
      pool: p,
      gone,
      until,
    } = await pool('/usr/bin/env', ['CUDA_VISIBLE_DEVICES=3', process.execPath]);
    p.start('w1', 0, 1);
    await until('the refusal', () => gone.has('w1'));
    expect(hub.refused.get('failed-precondition')).toBe(1);
    expect(gone.get('w1')?.info.registered).toBe(false);
    expect(p.registered('w1')).toBe(false);
  });

  it('starts a worker on the device its GPU index names (CUDA_VISIBLE_DEVICES)', async () => {
    const devices = [
      { device: 4, memoryBytes: null },
      { device: 9, memoryBytes: null },
    ];
    // The hub admits a worker only if it registers seeing the device it was started for.
    const { hub, pool: p, until } = await pool(process.execPath, [], { gpus: true, devices });
    p.start('w1', 1, 1);
    await until('registration', () => p.registered('w1'));
    expect(hub.refused.size).toBe(0);
    // A worker that sees another device than its index names is refused.
    const other = await pool('/usr/bin/env', ['CUDA_VISIBLE_DEVICES=4', process.execPath], {
      gpus: true,
      devices,
    });
    other.pool.start('w1', 1, 1);
    await other.until('the refusal', () => other.gone.has('w1'));
    expect(other.hub.refused.get('failed-precondition')).toBe(1);
  });

  it('shuts down with a task running: every process exits within the grace', async () => {
    const { pool: p, gone, until } = await pool();
    p.start('w1', 0, 1);
    p.start('w2', 0, 1);
    await until('registration', () => p.registered('w1') && p.registered('w2'));
    p.send('w1', { kind: 'run', task: toWireTask(task('w1', 1000, 50)) });
    await p.shutdown('the test is over', 1);
    expect(gone.size).toBe(2);
    expect([p.state('w1'), p.state('w2')]).toEqual(['gone', 'gone']);
    await until('no process left', () =>
      [p.pid('w1'), p.pid('w2')].every((pid) => {
        try {
          process.kill(pid as number, 0);
          return false;
        } catch {
          return true;
        }
      }),
    );
  });
});
