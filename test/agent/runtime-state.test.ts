import { describe, expect, it } from 'vitest';
import { PHASES, WorkerAgent } from '../../src/agent/index.js';
import type { CheckpointIO } from '../../src/agent/index.js';
import type {
  EnginePort,
  EngineToWorker,
  WireTask,
  WorkerToEngine,
} from '../../src/engine/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { QuadraticTrainer } from '../../src/trainer/index.js';
import type { HyperparameterValues, Trainer, TrainSignal } from '../../src/trainer/index.js';

/**
 * The TypeScript runtime's state rules, which the Python runtime shares (see
 * test/e2e/runtime-conformance.e2e.test.ts for both against one script): the failure
 * reason of a memory restore the worker cannot honour, init before load on a checkpoint
 * restore, step continuity, and the phase seconds.
 */

type Result = Extract<WorkerToEngine, { kind: 'done' | 'failed' }>;

/** A trainer that records the calls the runtime makes. */
class Recording implements Trainer {
  readonly calls: string[] = [];
  private inner = new QuadraticTrainer();
  init(params: Readonly<Record<string, unknown>>, seed: number): void {
    this.calls.push(`init(${seed})`);
    this.inner.init(params, seed);
  }
  train(
    from: number,
    to: number,
    hp: (step: number) => HyperparameterValues,
    signal: TrainSignal,
  ): Promise<void> {
    this.calls.push(`train(${from},${to})`);
    return this.inner.train(from, to, hp, signal);
  }
  evaluate(): Record<string, number> {
    return this.inner.evaluate();
  }
  save(): Uint8Array {
    this.calls.push('save');
    return this.inner.save();
  }
  load(bytes: Uint8Array): void {
    this.calls.push('load');
    this.inner.load(bytes);
  }
}

const lr = canonicalize(parseSchedule(0.05));

function task(
  taskId: number,
  restore: WireTask['restore'],
  ranges: readonly (readonly [number, number])[],
  more: Partial<Pick<WireTask, 'saveFirst' | 'saveAfter' | 'endKey'>> = {},
  params: Record<string, unknown> = { seed: 1 },
): EngineToWorker {
  return {
    kind: 'run',
    task: {
      taskId,
      saveFirst: more.saveFirst ?? null,
      restore,
      runs: ranges.map(([start, end], i) => ({
        stage: `S${taskId}.${i}`,
        start,
        end,
        params,
        schedules: { lr },
      })),
      saveAfter: more.saveAfter ?? null,
      endKey: more.endKey ?? `Kend${taskId}`,
    },
  };
}

/** An agent on an in-memory engine port and checkpoint folder; `send` runs one task. */
function harness(trainer: Trainer = new QuadraticTrainer()): {
  send(m: EngineToWorker): Promise<Result>;
  files: Map<string, Uint8Array>;
  made: () => number;
} {
  const files = new Map<string, Uint8Array>();
  const io: CheckpointIO = {
    save: (key, bytes) => {
      files.set(key, bytes.slice());
      return Promise.resolve();
    },
    load: (key) => {
      const b = files.get(key);
      return b ? Promise.resolve(b.slice()) : Promise.reject(new Error(`no checkpoint ${key}`));
    },
  };
  const waiting: ((r: Result) => void)[] = [];
  let listener: (m: EngineToWorker) => void = () => undefined;
  let made = 0;
  const port: EnginePort = {
    send: (m) => {
      if (m.kind === 'done' || m.kind === 'failed') waiting.shift()?.(m);
    },
    onMessage: (l) => (listener = l),
    onClose: () => undefined,
    close: () => undefined,
  };
  let t = 0;
  void new WorkerAgent(port, {
    workerId: 'w1',
    secret: 's',
    gpus: [],
    gpuShare: 1,
    trainer: () => {
      made++;
      return trainer;
    },
    checkpoints: () => io,
    clock: () => (t += 0.25), // every phase that runs takes 0.25 s
    startedAt: 0,
  }).run();
  listener({ kind: 'welcome', checkpointDir: '/mem', heartbeatSeconds: 60, workerId: 'w1' });
  return {
    files,
    made: () => made,
    send: (m) =>
      new Promise<Result>((resolve) => {
        waiting.push(resolve);
        listener(m);
      }),
  };
}

describe('the TypeScript worker runtime keeps its state as the Python one does', () => {
  it('fails a memory restore of a state it does not hold with reason "worker"', async () => {
    const h = harness();
    expect(await h.send(task(1, { from: 'init' }, [[0, 3]], { endKey: 'Ka' }))).toMatchObject({
      kind: 'done',
    });
    const wrong = await h.send(task(2, { from: 'memory', key: 'Kwrong' }, [[3, 5]]));
    expect(wrong).toMatchObject({
      kind: 'failed',
      reason: 'worker',
      message: 'worker w1: restore from memory Kwrong: the worker holds Ka',
    });
    // The failure dropped the state: now it holds nothing.
    const none = await h.send(task(3, { from: 'memory', key: 'Ka' }, [[3, 5]]));
    expect(none).toMatchObject({
      kind: 'failed',
      reason: 'worker',
      message: 'worker w1: restore from memory Ka: the worker holds no state',
    });
  });

  it('accepts a memory restore under any key the state is known by', async () => {
    const h = harness();
    await h.send(task(1, { from: 'init' }, [[0, 3]], { saveAfter: 'Ks', endKey: 'Ke' }));
    expect(await h.send(task(2, { from: 'memory', key: 'Ks' }, [[3, 4]]))).toMatchObject({
      kind: 'done',
    });
    // save_first adds the key it saved under.
    await h.send(task(3, { from: 'memory', key: 'Kend2' }, [[4, 5]], { saveFirst: 'Kf' }));
    expect(await h.send(task(4, { from: 'memory', key: 'Kend3' }, [[5, 6]]))).toMatchObject({
      kind: 'done',
    });
    const other = await h.send(
      task(5, { from: 'memory', key: 'Kend4' }, [[6, 7]], {}, { seed: 2 }),
    );
    expect(other).toMatchObject({ kind: 'failed', reason: 'worker' });
    expect(other.kind === 'failed' && other.message).toContain('trained with other params');
  });

  it('checks that every run starts where the state is (reason "worker")', async () => {
    const h = harness();
    await h.send(task(1, { from: 'init' }, [[0, 10]], { endKey: 'K10' }));
    expect(await h.send(task(2, { from: 'memory', key: 'K10' }, [[15, 20]]))).toMatchObject({
      kind: 'failed',
      reason: 'worker',
      message: 'worker w1: stage S2.0 starts at step 15, but the state is at step 10',
    });
    expect(await h.send(task(3, { from: 'init' }, [[2, 4]]))).toMatchObject({
      kind: 'failed',
      reason: 'worker',
      message: 'worker w1: stage S3.0 starts at step 2, but the state is at step 0',
    });
    const gap = await h.send(
      task(4, { from: 'init' }, [
        [0, 5],
        [6, 8],
      ]),
    );
    expect(gap).toMatchObject({
      kind: 'failed',
      reason: 'worker',
      message: 'worker w1: runs[1]: expected it to start where runs[0] ends (5), got 6',
    });
  });

  it('calls init before load on a checkpoint restore, unless init already stands for the params', async () => {
    const trainer = new Recording();
    const h = harness(trainer);
    const first = await h.send(task(1, { from: 'init' }, [[0, 4]], { saveAfter: 'K4' }));
    expect(first.kind === 'done' && first.seconds).toEqual({
      start: 0.25,
      init: 0.25,
      load: 0,
      save: 0.25,
      train: 0.5, // two chunks: a task's first is one step, the next the rest
      evaluate: 0.25,
    });
    expect(Object.keys(first.kind === 'done' ? first.seconds : {})).toEqual([...PHASES]);
    trainer.calls.length = 0;
    // Same params as the standing init: load alone.
    const again = await h.send(task(2, { from: 'checkpoint', key: 'K4' }, [[4, 5]]));
    expect(trainer.calls).toEqual(['load', 'train(4,5)']);
    expect(again.kind === 'done' && again.seconds).toMatchObject({ start: 0, init: 0 });
    // A failure drops the state and the standing init: init(seed) then load.
    await h.send(task(3, { from: 'memory', key: 'Kgone' }, [[5, 6]]));
    trainer.calls.length = 0;
    const fresh = await h.send(task(4, { from: 'checkpoint', key: 'K4' }, [[4, 6]]));
    expect(trainer.calls).toEqual(['init(1)', 'load', 'train(4,5)', 'train(5,6)']);
    expect(fresh.kind === 'done' && fresh.seconds.init).toBeGreaterThan(0);
    expect(fresh.kind === 'done' && fresh.seconds.load).toBeGreaterThan(0);
    // Other params: init with them first.
    trainer.calls.length = 0;
    await h.send(task(5, { from: 'checkpoint', key: 'K4' }, [[4, 5]], {}, { seed: 1, x: 2 }));
    expect(trainer.calls).toEqual(['init(1)', 'load', 'train(4,5)']);
    // A missing checkpoint: reason "checkpoint", nothing called.
    trainer.calls.length = 0;
    expect(await h.send(task(6, { from: 'checkpoint', key: 'Kmissing' }, [[4, 5]]))).toMatchObject({
      kind: 'failed',
      reason: 'checkpoint',
    });
    expect(trainer.calls).toEqual([]);
    // One trainer instance for the process's whole life, failures included.
    expect(h.made()).toBe(1);
  });
});
