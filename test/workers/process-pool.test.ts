import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { toWireTask } from '../../src/engine/index.js';
import type { Task, WorkerToEngine } from '../../src/engine/index.js';
import { startWorkerHub } from '../../src/rpc/index.js';
import type { WorkerHub } from '../../src/rpc/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { ProcessPool } from '../../src/workers/index.js';
import type { GoneInfo } from '../../src/workers/index.js';
import { IllegalTransitionError, SlotLifecycle, SlotState } from '../../src/workers/slot.js';
import { ROOT, TRAINER } from '../support/real-run.js';

/**
 * The process pool's contract, against real worker processes and a real hub: the slot
 * lifecycle (starting, idle, busy, draining, gone), a slot that fails to start, a kill
 * mid-task, a cancel racing a result, and shutdown with a task running.
 */

const lr = canonicalize(parseSchedule(0.05));
let nextTask = 1;
const task = (worker: string, steps: number, stepDelayMs = 0): Task => ({
  id: nextTask++,
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
    gpus: false,
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

const resultOf = (messages: { m: WorkerToEngine }[], id: number): WorkerToEngine | undefined =>
  messages.find((x) => (x.m.kind === 'done' || x.m.kind === 'failed') && x.m.taskId === id)?.m;

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
});

describe('the process pool contract (real processes)', () => {
  it('walks a slot through starting, idle, busy, idle, draining and gone', async () => {
    const { pool: p, messages, gone, until } = await pool();
    // A listener that unsubscribes hears nothing more; the others go on.
    let heardAfter = 0;
    const off = p.onMessage(() => heardAfter++);
    off();
    p.start('w1', 0, 1);
    expect(p.state('w1')).toBe('starting');
    await until('registration', () => p.registered('w1'));
    expect(p.state('w1')).toBe('idle');
    const t = task('w1', 3);
    p.send('w1', { kind: 'run', task: toWireTask(t) });
    expect(p.state('w1')).toBe('busy');
    // Sending a second task to a busy slot is a caller bug.
    expect(() => p.send('w1', { kind: 'run', task: toWireTask(task('w1', 1)) })).toThrow(
      IllegalTransitionError,
    );
    await until('the result', () => resultOf(messages, t.id) !== undefined);
    expect(resultOf(messages, t.id)?.kind).toBe('done');
    expect(heardAfter).toBe(0);
    expect(p.state('w1')).toBe('idle');
    p.stop('w1', 'done with it');
    expect(p.state('w1')).toBe('draining');
    await until('exit', () => gone.has('w1'));
    expect(p.state('w1')).toBe('gone');
    expect(gone.get('w1')?.info.registered).toBe(true);
  });

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

  it('reports a slot killed mid-task as gone, with no result', async () => {
    const { pool: p, messages, gone, until } = await pool();
    p.start('w1', 0, 1);
    const t = task('w1', 100, 50);
    p.send('w1', { kind: 'run', task: toWireTask(t) }); // queued until it registers
    await until('the task to run', () =>
      messages.some((x) => x.m.kind === 'progress' || x.m.kind === 'heartbeat'),
    );
    p.kill('w1');
    expect(p.state('w1')).toBe('draining');
    await until('the exit', () => gone.has('w1'));
    expect(gone.get('w1')?.reason).toMatch(/killed \(SIGKILL\)|stream ended/);
    expect(resultOf(messages, t.id)).toBeUndefined();
  });

  it('frees a slot on cancel, and the slot serves the next task at once', async () => {
    const { pool: p, messages, until } = await pool();
    p.start('w1', 0, 1);
    await until('registration', () => p.registered('w1'));
    let checked = 0;
    for (let i = 0; i < 5; i++) {
      const t = task('w1', 2);
      p.send('w1', { kind: 'run', task: toWireTask(t) });
      p.send('w1', { kind: 'cancel', taskId: t.id });
      expect(p.state('w1')).toBe('idle');
      // The slot takes the next task at once, and that one answers.
      const next = task('w1', 2);
      p.send('w1', { kind: 'run', task: toWireTask(next) });
      await until('the next result', () => resultOf(messages, next.id) !== undefined);
      expect(resultOf(messages, next.id)?.kind).toBe('done');
      // The cancelled task's result may still come (it can finish before the cancel
      // arrives): the pool passes it on, and the runner drops it as late (a hardening test).
      checked++;
    }
    expect(checked).toBe(5);
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
