import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PHASES } from '../../src/agent/index.js';
import type { EngineToWorker, WireTask, WorkerToEngine } from '../../src/engine/index.js';
import { startWorkerHub } from '../../src/rpc/index.js';
import type { Registration, WorkerConnection, WorkerHub } from '../../src/rpc/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { CheckpointStore } from '../../src/store/index.js';

/**
 * One script, both worker runtimes: a real worker hub, a real worker process of each
 * language (`node dist/cli/worker.js` on the TypeScript QuadraticTrainer, `python3 -m
 * stagetree.worker` on python/examples/quadratic.py), and the test playing the engine by
 * hand. Every check runs against each runtime and records its answer (reasons, which
 * phases took time, what came back); the two answers must be equal, and so must the
 * number of checks. Needs `npm run build` (dist/). The Python half is skipped where
 * /usr/bin/python3 lacks grpcio, unless STAGETREE_REQUIRE_PYTHON=1.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const PYTHON = '/usr/bin/python3';
const hasPython =
  spawnSync(PYTHON, ['-c', 'import grpc, google.protobuf'], { stdio: 'ignore' }).status === 0;
const required = process.env.STAGETREE_REQUIRE_PYTHON === '1';
const SECRET = 'conformance-secret-0123456789';

type Runtime = 'typescript' | 'python';
type Message = Exclude<WorkerToEngine, Registration>;
type Result = Extract<Message, { kind: 'done' | 'failed' }>;

const schedules = {
  lr: canonicalize(parseSchedule(0.05)),
  momentum: canonicalize(parseSchedule(0.9)),
};
/** Params both example trainers read (each ignores what it does not know). */
const PARAMS = { seed: 3 };

/** The Python runtime's protocol stubs (not committed), made when missing or stale. */
function ensurePythonStubs(): void {
  const stub = join(ROOT, 'python', 'stagetree', 'gen', 'worker_pb2.py');
  const proto = join(ROOT, 'proto', 'stagetree', 'v1', 'worker.proto');
  if (existsSync(stub) && statSync(proto).mtimeMs <= statSync(stub).mtimeMs) return;
  const r = spawnSync('bash', [join(ROOT, 'python', 'gen.sh')], {
    env: { ...process.env, PYTHON },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`python/gen.sh failed: ${r.stderr}`);
}

/** The Python checkpoint module (stdlib only), for the shared format. */
function python(code: string, ...args: string[]): string {
  const r = spawnSync(PYTHON, ['-c', code, ...args], {
    env: { ...process.env, PYTHONPATH: join(ROOT, 'python') },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout.trim();
}
const pyRead = (dir: string, key: string): Buffer =>
  Buffer.from(
    python(
      'import sys; from stagetree.checkpoints import read_checkpoint as r; print(r(sys.argv[1], sys.argv[2]).hex())',
      dir,
      key,
    ),
    'hex',
  );
const pyWrite = (dir: string, key: string, payload: Uint8Array): void => {
  python(
    'import sys; from stagetree.checkpoints import write_checkpoint as w; w(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))',
    dir,
    key,
    Buffer.from(payload).toString('hex'),
  );
};

/** The engine's side of one worker's stream, played by hand. */
class Peer {
  readonly heartbeats: (number | null)[] = [];
  readonly progress: { taskId: number; step: number }[] = [];
  readonly cuts: { taskId: number; step: number }[] = [];
  private readonly results: Result[] = [];
  private wake: (() => void) | null = null;
  closed: string | null = null;

  constructor(readonly connection: WorkerConnection) {
    connection.onMessage((m: Message) => {
      if (m.kind === 'heartbeat') this.heartbeats.push(m.taskId);
      else if (m.kind === 'progress') this.progress.push({ taskId: m.taskId, step: m.step });
      else if (m.kind === 'cutAt') this.cuts.push({ taskId: m.taskId, step: m.step });
      else this.results.push(m);
      this.wake?.();
    });
    connection.onClose((reason) => {
      this.closed = reason;
      this.wake?.();
    });
  }

  send(m: EngineToWorker): void {
    this.connection.send(m);
  }

  async until<T>(what: string, get: () => T | undefined, seconds = 10): Promise<T> {
    const end = Date.now() + seconds * 1000;
    for (;;) {
      const v = get();
      if (v !== undefined) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
  }

  /** The next TaskDone or TaskFailed, whichever task it is for. */
  next(): Promise<Result> {
    return this.until('a result', () => this.results.shift());
  }

  /** Sends a task; with `chunked`, resolves once its first chunk is trained (its first progress). */
  async start(
    task: Omit<WireTask, 'saveFirst' | 'saveAfter'> & Partial<WireTask>,
    chunked = false,
  ): Promise<void> {
    this.send({ kind: 'run', task: { saveFirst: null, saveAfter: null, ...task } });
    if (chunked)
      await this.until(`the first chunk of task ${task.taskId}`, () =>
        this.progress.some((p) => p.taskId === task.taskId) ? true : undefined,
      );
  }

  /** Runs one task and returns its result (which must be for it). */
  async run(task: Omit<WireTask, 'saveFirst' | 'saveAfter'> & Partial<WireTask>): Promise<Result> {
    await this.start(task);
    const r = await this.next();
    expect(r.taskId, `the result after task ${task.taskId}`).toBe(task.taskId);
    return r;
  }
}

const runs = (
  ranges: readonly (readonly [number, number])[],
  params: Record<string, unknown> = PARAMS,
): WireTask['runs'] =>
  ranges.map(([start, end], i) => ({ stage: `S${start}-${i}`, start, end, params, schedules }));

function done(r: Result): Extract<Result, { kind: 'done' }> {
  if (r.kind !== 'done') throw new Error(`expected done, got ${r.reason}: ${r.message}`);
  return r;
}
function failed(r: Result): Extract<Result, { kind: 'failed' }> {
  if (r.kind !== 'failed') throw new Error(`expected failed, got done ${JSON.stringify(r)}`);
  return r;
}
/** The phases that took time (the rest are 0). */
const busy = (seconds: Readonly<Record<string, number>>): string[] =>
  Object.keys(seconds)
    .filter((k) => (seconds[k] as number) > 0)
    .sort();
/** A metric's exact bits. */
const bits = (x: number | undefined): string =>
  Buffer.from(new Float64Array([x ?? NaN]).buffer).toString('hex');

interface Transcript {
  checks: string[];
  answers: Record<string, unknown>;
}

let hub: WorkerHub;
let dir: string;
const peers = new Map<string, (peer: Peer) => void>();
const transcripts = new Map<Runtime, Transcript>();

beforeAll(async () => {
  if (!existsSync(join(ROOT, 'dist', 'cli', 'worker.js')))
    throw new Error('dist/cli/worker.js is missing: run `npm run build` first');
  dir = mkdtempSync(join(tmpdir(), 'stagetree-conformance-'));
  mkdirSync(join(dir, 'hub'), { mode: 0o700 });
  hub = await startWorkerHub({
    socket: join(dir, 'hub', 'hub.sock'),
    admit: (r) =>
      r.secret === SECRET && peers.has(r.workerId)
        ? null
        : { code: 'unauthenticated', message: 'not a worker this test started' },
    onConnect: (c) => peers.get(c.registration.workerId)?.(new Peer(c)),
  });
});

afterAll(async () => {
  await hub.close();
  rmSync(dir, { recursive: true, force: true });
});

function spawnWorker(runtime: Runtime, id: string): ChildProcess {
  const common = {
    ...process.env,
    STAGETREE_ENGINE: hub.address,
    STAGETREE_WORKER_ID: id,
    STAGETREE_WORKER_SECRET: SECRET,
    STAGETREE_GPU_SHARE: '0.5',
    STAGETREE_CHUNK_SECONDS: '1', // slow tasks (20 ms a step) are then cut after 51 steps
    CUDA_VISIBLE_DEVICES: '0,2',
  };
  const [file, args, env] =
    runtime === 'typescript'
      ? [
          process.execPath,
          [join(ROOT, 'dist', 'cli', 'worker.js')],
          {
            STAGETREE_TRAINER_MODULE: join(ROOT, 'dist', 'trainer', 'quadratic.js'),
            STAGETREE_TRAINER_EXPORT: 'QuadraticTrainer',
          },
        ]
      : [
          PYTHON,
          ['-m', 'stagetree.worker'],
          {
            PYTHONPATH: [join(ROOT, 'python'), join(ROOT, 'python', 'examples')].join(':'),
            STAGETREE_TRAINER: 'quadratic:QuadraticTrainer',
          },
        ];
  return spawn(file, args, {
    cwd: ROOT,
    env: { ...common, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** The script: every check runs against one runtime and records its answer. */
async function conformance(runtime: Runtime): Promise<Transcript> {
  const id = `conf-${runtime}`;
  const ckpt = join(dir, `ckpt-${runtime}`);
  mkdirSync(ckpt);
  const store = new CheckpointStore(ckpt);
  const transcript: Transcript = { checks: [], answers: {} };
  const check = async (name: string, body: () => unknown): Promise<void> => {
    transcript.checks.push(name);
    transcript.answers[name] = await body();
  };

  const connected = new Promise<Peer>((r) => peers.set(id, r));
  const child = spawnWorker(runtime, id);
  let stderr = '';
  child.stdout?.resume();
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; at: number }>((r) =>
    child.on('exit', (code) => r({ code, at: Date.now() })),
  );
  try {
    const peer = await Promise.race([
      connected,
      exited.then(({ code }) => {
        throw new Error(`the ${runtime} worker exited (${code}) before registering: ${stderr}`);
      }),
    ]);

    await check('register', () => {
      const r = peer.connection.registration;
      expect(r.language).toBe(runtime);
      expect(r.workerId).toBe(id);
      expect(r.pid).toBe(child.pid);
      expect(r.secret).toBe(SECRET);
      return { protocol: r.protocol, gpus: r.gpus, gpuShare: r.gpuShare, holds: r.holds };
    });
    peer.send({ kind: 'welcome', checkpointDir: ckpt, heartbeatSeconds: 0.05, workerId: id });

    await check('idle heartbeats name no task', async () =>
      peer.until('a heartbeat', () =>
        peer.heartbeats.length > 0 ? peer.heartbeats[0] : undefined,
      ),
    );

    let at10 = '';
    await check('init, train, save after, evaluate: done with seconds by phase', async () => {
      const r = done(
        await peer.run({
          taskId: 1,
          restore: { from: 'init' },
          runs: runs([[0, 10]]),
          saveAfter: 'Ka',
          endKey: 'Ka',
        }),
      );
      expect(Object.keys(r.seconds).sort()).toEqual([...PHASES].sort());
      expect(r.seconds.load).toBe(0);
      expect(Number.isFinite(r.metrics.loss)).toBe(true);
      at10 = bits(r.metrics.loss);
      return {
        phases: Object.keys(r.seconds).sort(),
        busy: busy(r.seconds).filter((p) => p !== 'evaluate'), // evaluate may round to 0
        progress: peer.progress.filter((p) => p.taskId === 1).map((p) => p.step),
      };
    });

    let payload: Buffer = Buffer.alloc(0);
    await check('save after writes the shared checkpoint format', () => {
      payload = store.get('Ka'); // the TypeScript store reads it
      expect(pyRead(ckpt, 'Ka').equals(payload)).toBe(true); // and the Python one
      expect(payload.length).toBeGreaterThan(0);
      // Re-wrapped by the OTHER runtime's writer under a new key, for a restore below.
      if (runtime === 'typescript') pyWrite(ckpt, 'Kother', payload);
      else store.put('Kother', payload);
      return 'read by both';
    });

    let at20 = '';
    await check('restore from memory of the held key continues it', async () => {
      const r = done(
        await peer.run({
          taskId: 2,
          restore: { from: 'memory', key: 'Ka' },
          runs: runs([[10, 20]]),
          endKey: 'K20',
        }),
      );
      expect(bits(r.metrics.loss)).not.toBe(at10);
      at20 = bits(r.metrics.loss);
      return { busy: busy(r.seconds).filter((p) => p !== 'evaluate') };
    });

    await check('restore from memory of a wrong key fails (worker)', async () => {
      const r = failed(
        await peer.run({
          taskId: 3,
          restore: { from: 'memory', key: 'Kwrong' },
          runs: runs([[20, 25]]),
          endKey: 'K25',
        }),
      );
      expect(r.message).toContain('Kwrong');
      expect(r.message).toContain('K20');
      return r.reason;
    });

    await check('after a failure, restore from memory fails: it holds nothing', async () => {
      const r = failed(
        await peer.run({
          taskId: 4,
          restore: { from: 'memory', key: 'K20' },
          runs: runs([[20, 25]]),
          endKey: 'K25',
        }),
      );
      expect(r.message).toContain('holds no state');
      return r.reason;
    });

    await check('checkpoint restore of a missing key fails (checkpoint)', async () => {
      const r = failed(
        await peer.run({
          taskId: 5,
          restore: { from: 'checkpoint', key: 'Kmissing' },
          runs: runs([[10, 20]]),
          endKey: 'K20',
        }),
      );
      expect(r.message).toContain('Kmissing');
      return r.reason;
    });

    await check(
      "checkpoint restore (the other runtime's writer) on a fresh state: init, then load",
      async () => {
        const r = done(
          await peer.run({
            taskId: 6,
            restore: { from: 'checkpoint', key: 'Kother' },
            runs: runs([
              [10, 15],
              [15, 20],
            ]),
            endKey: 'K20',
          }),
        );
        expect(bits(r.metrics.loss)).toBe(at20); // bit for bit what memory gave
        return {
          busy: busy(r.seconds).filter((p) => p !== 'evaluate'),
          progress: peer.progress.filter((p) => p.taskId === 6).map((p) => p.step),
        };
      },
    );

    await check(
      'checkpoint restore with init standing for the same params: load only',
      async () => {
        const r = done(
          await peer.run({
            taskId: 7,
            restore: { from: 'checkpoint', key: 'Ka' },
            runs: runs([[10, 20]]),
            endKey: 'K20',
          }),
        );
        expect(bits(r.metrics.loss)).toBe(at20);
        return { busy: busy(r.seconds).filter((p) => p !== 'evaluate') };
      },
    );

    await check('a run that does not continue from the held step fails (worker)', async () => {
      const r = failed(
        await peer.run({
          taskId: 8,
          restore: { from: 'memory', key: 'K20' },
          runs: runs([[25, 30]]),
          endKey: 'K30',
        }),
      );
      expect(r.message).toContain('starts at step 25');
      expect(r.message).toContain('state is at step 20');
      return r.reason;
    });

    await check('one fresh run equals the stages trained apart', async () => {
      const r = done(
        await peer.run({
          taskId: 9,
          restore: { from: 'init' },
          runs: runs([[0, 20]]),
          endKey: 'K20',
        }),
      );
      expect(bits(r.metrics.loss)).toBe(at20);
      return 'equal';
    });

    const slow = { ...PARAMS, stepDelayMs: 20 }; // chunks of 1 step, then about 50
    await check('a cancel during a slow task gives no result and drops the state', async () => {
      // Cancelled after its first chunk (one step), inside its second.
      await peer.start(
        {
          taskId: 10,
          restore: { from: 'init' },
          runs: runs([[0, 100_000]], slow),
          endKey: 'Kslow',
        },
        true,
      );
      // Heart-beats name the running task.
      await peer.until('a heartbeat for task 10', () =>
        peer.heartbeats.includes(10) ? true : undefined,
      );
      peer.send({ kind: 'cancel', taskId: 10 });
      // The next result is this task's: nothing came for task 10.
      const r = failed(
        await peer.run({
          taskId: 11,
          restore: { from: 'memory', key: 'Kslow' },
          runs: runs([[0, 5]], slow),
          endKey: 'K5',
        }),
      );
      expect(r.message).toContain('holds no state');
      // And the worker serves on.
      done(
        await peer.run({
          taskId: 12,
          restore: { from: 'init' },
          runs: runs([[0, 2]]),
          endKey: 'K2',
        }),
      );
      return { reason: r.reason, progress10: peer.progress.some((p) => p.taskId === 10) };
    });

    await check('progress comes after every chunk: one step first, then about a second', () => {
      // Task 1 (10 fast steps) and task 6 (runs 10-15 and 15-20): each task's first chunk
      // is one step, the next ones as many as take about a second.
      const of = (task: number): number[] =>
        peer.progress.filter((p) => p.taskId === task).map((p) => p.step);
      return { task1: of(1), task6: of(6) };
    });

    const cutAt = async (taskId: number): Promise<number> => {
      peer.send({ kind: 'cut', taskId });
      const at = await peer.until('a cutAt', () => peer.cuts.shift());
      expect(at.taskId).toBe(taskId);
      return at.step;
    };

    let cutStep = 0;
    await check(
      'a cut stops the last run at a chunk boundary; saveCut saves there, then done',
      async () => {
        const long = { restore: { from: 'init' }, runs: runs([[0, 400]], slow) } as const;
        await peer.start({ taskId: 13, ...long, saveAfter: 'Knever', endKey: 'K400' }, true);
        cutStep = await cutAt(13);
        expect(cutStep).toBeGreaterThan(1);
        expect(cutStep).toBeLessThan(400);
        expect(peer.progress.filter((p) => p.taskId === 13).at(-1)?.step).toBe(cutStep);
        peer.send({ kind: 'saveCut', taskId: 13, key: 'Kcut' });
        const r = done(await peer.next());
        expect(r.taskId).toBe(13);
        expect(store.has('Kcut')).toBe(true);
        expect(store.has('Knever')).toBe(false); // the task's own saveAfter no longer applies
        return { busy: busy(r.seconds).filter((p) => p !== 'evaluate') };
      },
    );

    await check('the cut state is held in memory and saved: both continue it exactly', async () => {
      const end = cutStep + 5;
      const memory = done(
        await peer.run({
          taskId: 14,
          restore: { from: 'memory', key: 'Kcut' },
          runs: runs([[cutStep, end]], slow),
          endKey: 'Kc5',
        }),
      );
      const fromFile = done(
        await peer.run({
          taskId: 15,
          restore: { from: 'checkpoint', key: 'Kcut' },
          runs: runs([[cutStep, end]], slow),
          endKey: 'Kc5',
        }),
      );
      const whole = done(
        await peer.run({
          taskId: 16,
          restore: { from: 'init' },
          runs: runs([[0, end]], slow),
          endKey: 'Kc5',
        }),
      );
      expect(bits(memory.metrics.loss)).toBe(bits(whole.metrics.loss));
      expect(bits(fromFile.metrics.loss)).toBe(bits(whole.metrics.loss));
      return 'equal';
    });

    await check('a cut that comes in the last chunk: the task simply finishes', async () => {
      // Chunks [0, 1) and [1, 3): the cut arrives during the last one.
      await peer.start(
        { taskId: 17, restore: { from: 'init' }, runs: runs([[0, 3]], slow), endKey: 'K3' },
        true,
      );
      peer.send({ kind: 'cut', taskId: 17 });
      const r = done(await peer.next());
      expect(r.taskId).toBe(17);
      return { cutAt: peer.cuts.length, progress: peer.progress.at(-1)?.step };
    });

    await check('a cut during a re-computation lands in the last run', async () => {
      const ranges: [number, number][] = [
        [0, 60],
        [60, 400],
      ];
      await peer.start(
        { taskId: 18, restore: { from: 'init' }, runs: runs(ranges, slow), endKey: 'K400' },
        true,
      );
      const step = await cutAt(18);
      expect(step).toBeGreaterThan(60);
      expect(step).toBeLessThan(400);
      peer.send({ kind: 'saveCut', taskId: 18, key: 'Kcut2' });
      const r = done(await peer.next());
      expect(r.taskId).toBe(18);
      return 'in the last run';
    });

    await check('a cancel while waiting for saveCut: no result, nothing held', async () => {
      await peer.start(
        { taskId: 19, restore: { from: 'init' }, runs: runs([[0, 400]], slow), endKey: 'K400' },
        true,
      );
      const step = await cutAt(19);
      peer.send({ kind: 'cancel', taskId: 19 });
      peer.send({ kind: 'saveCut', taskId: 19, key: 'Klate' }); // late: ignored
      const r = failed(
        await peer.run({
          taskId: 20,
          restore: { from: 'memory', key: 'Klate' },
          runs: runs([[step, step + 1]], slow),
          endKey: 'Kx',
        }),
      );
      expect(r.message).toContain('holds no state');
      expect(store.has('Klate')).toBe(false);
      return r.reason;
    });

    await check('shutdown: the process exits 0 promptly', async () => {
      const t0 = Date.now();
      peer.send({ kind: 'shutdown', reason: 'conformance test done' });
      const { code, at } = await Promise.race([
        exited,
        new Promise<never>((_, reject) =>
          setTimeout(
            () => reject(new Error(`the ${runtime} worker did not exit: ${stderr}`)),
            10_000,
          ),
        ),
      ]);
      expect(code, stderr).toBe(0);
      expect(at - t0).toBeLessThan(5000);
      return code;
    });
  } catch (e) {
    throw new Error(
      `${runtime}: ${e instanceof Error ? e.message : String(e)}\nworker stderr:\n${stderr}`,
      { cause: e },
    );
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    peers.delete(id);
  }
  return transcript;
}

describe('both worker runtimes answer one script the same way', () => {
  it('the TypeScript runtime', async () => {
    const t = await conformance('typescript');
    expect(t.answers).toMatchObject({
      'restore from memory of a wrong key fails (worker)': 'worker',
      'checkpoint restore of a missing key fails (checkpoint)': 'checkpoint',
      'a run that does not continue from the held step fails (worker)': 'worker',
    });
    transcripts.set('typescript', t);
  });

  it.skipIf(!hasPython && !required)('the Python runtime', async () => {
    ensurePythonStubs();
    transcripts.set('python', await conformance('python'));
  });

  it.skipIf(!hasPython && !required)(
    'gives equal answers to an equal, non-zero number of checks',
    () => {
      const ts = transcripts.get('typescript');
      const py = transcripts.get('python');
      expect(ts, 'the TypeScript half ran').toBeDefined();
      expect(py, 'the Python half ran').toBeDefined();
      expect(ts?.checks.length).toBeGreaterThan(0);
      expect(py?.checks.length).toBe(ts?.checks.length);
      expect(py?.checks).toEqual(ts?.checks);
      expect(py?.answers).toEqual(ts?.answers);
    },
  );
});
