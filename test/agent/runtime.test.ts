import { describe, expect, it } from 'vitest';
import { WorkerAgent } from '../../src/agent/index.js';
import type { CheckpointIO } from '../../src/agent/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { EnginePort, EngineToWorker, WorkerToEngine } from '../../src/engine/index.js';
import { QuadraticTrainer } from '../../src/trainer/index.js';

/** An engine port in memory: what the agent sends is recorded; the test plays the engine. */
function fakeEngine(): {
  port: EnginePort;
  sent: WorkerToEngine[];
  deliver(m: EngineToWorker): void;
} {
  const sent: WorkerToEngine[] = [];
  let listener: (m: EngineToWorker) => void = () => undefined;
  return {
    sent,
    deliver: (m) => listener(m),
    port: {
      send: (m) => sent.push(m),
      onMessage: (l) => (listener = l),
      onClose: () => undefined,
      close: () => undefined,
    },
  };
}

const lr = canonicalize(parseSchedule(0.05));
const run = (taskId: number, saveAfter: string | null = null): EngineToWorker => ({
  kind: 'run',
  task: {
    taskId,
    saveFirst: null,
    restore: { from: 'init' },
    runs: [{ stage: 'S1', start: 0, end: 3, params: { seed: 1 }, schedules: { lr } }],
    saveAfter,
    endKey: 'Kend',
  },
});

const settle = (ms = 30): Promise<void> => new Promise((r) => setTimeout(r, ms));

function agent(
  port: EnginePort,
  trainer: () => QuadraticTrainer,
  io: CheckpointIO = {
    save: () => Promise.resolve(),
    load: () => Promise.reject(new Error('none')),
  },
): WorkerAgent {
  return new WorkerAgent(port, {
    workerId: 'w1',
    secret: 's3cret',
    gpus: [],
    gpuShare: 1,
    trainer,
    checkpoints: () => io,
    clock: () => performance.now() / 1000,
  });
}

describe('the TypeScript worker runtime', () => {
  it('registers with its secret', () => {
    const e = fakeEngine();
    void agent(e.port, () => new QuadraticTrainer()).run();
    expect(e.sent[0]).toMatchObject({ kind: 'register', workerId: 'w1', secret: 's3cret' });
  });

  it('sends no result for a task cancelled while it evaluates (no late done)', async () => {
    const e = fakeEngine();
    let release: () => void = () => undefined;
    const trainer = new QuadraticTrainer();
    // The first evaluate() resolves only when the test says so: the cancel arrives meanwhile.
    const evaluate = trainer.evaluate.bind(trainer);
    let first = true;
    (trainer as unknown as { evaluate: () => Promise<Record<string, number>> }).evaluate = () =>
      new Promise((resolve) => {
        if (!first) {
          resolve(evaluate());
          return;
        }
        first = false;
        release = () => resolve(evaluate());
      });
    const a = agent(e.port, () => trainer);
    void a.run();
    e.deliver({ kind: 'welcome', checkpointDir: '/nowhere', heartbeatSeconds: 60, workerId: 'w1' });
    e.deliver(run(7));
    await settle();
    e.deliver({ kind: 'cancel', taskId: 7 });
    release();
    await settle();
    expect(e.sent.filter((m) => m.kind === 'done' || m.kind === 'failed')).toEqual([]);
    expect(a.dropped).toBe(1);
    // The next task runs normally.
    e.deliver(run(8));
    await settle();
    const done = e.sent.flatMap((m) => (m.kind === 'done' ? [m.taskId] : []));
    expect(done).toEqual([8]);
  });

  it('reports a checkpoint folder it cannot write as an environment failure, not the trainer', async () => {
    const e = fakeEngine();
    const denied = Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
    const a = agent(e.port, () => new QuadraticTrainer(), {
      save: () => Promise.reject(denied),
      load: () => Promise.reject(new Error('none')),
    });
    void a.run();
    e.deliver({ kind: 'welcome', checkpointDir: '/ro', heartbeatSeconds: 60, workerId: 'w1' });
    e.deliver(run(9, 'Ksave'));
    await settle();
    expect(e.sent.filter((m) => m.kind === 'failed')).toEqual([
      expect.objectContaining({
        kind: 'failed',
        taskId: 9,
        reason: 'environment',
        message: 'cannot write checkpoint Ksave: EACCES: permission denied',
      }),
    ]);
  });
});
