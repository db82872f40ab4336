#!/usr/bin/env node
/**
 * A TypeScript worker process: `node dist/cli/worker.js`, started by the process pool.
 * Environment: STAGETREE_ENGINE (host:port or unix:/path of the engine's hub),
 * STAGETREE_WORKER_ID, STAGETREE_WORKER_SECRET (the proof that the engine started it),
 * STAGETREE_TRAINER_MODULE (an absolute path or package name) and
 * STAGETREE_TRAINER_EXPORT (default "default"), STAGETREE_GPU_SHARE,
 * CUDA_VISIBLE_DEVICES.
 *
 * The trainer runs on the main thread; the stream to the engine and the heartbeat live
 * on a link thread (worker-link.ts) the trainer cannot block.
 *
 * `worker.js --check` loads the trainer and prints one JSON line, `{"ok": true,
 * "fingerprint": "sha256:...", "file": ...}` or `{"ok": false, "error": ...}` (exit 1):
 * the engine's check before a study starts, and the trainer's identity in the store.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CHUNK_SECONDS, CHUNK_SECONDS_ENV, WorkerAgent } from '../agent/index.js';
import type { EnginePort, EngineToWorker } from '../engine/index.js';
import { WORKER_SECRET_ENV } from '../engine/protocol.js';
import { describeError } from '../errors.js';
import { CheckpointStore } from '../store/checkpoints.js';
import type { Trainer, TrainerFactory } from '../trainer/index.js';
import type { FromLink, LinkData, ToLink } from './worker-link.js';

function need(name: string): string {
  const v = process.env[name];
  if (v === undefined || v === '') {
    process.stderr.write(`stagetree worker: ${name} is not set\n`);
    process.exit(2);
  }
  return v;
}

const TRAINER_METHODS = ['init', 'train', 'evaluate', 'save', 'load'] as const;

/** The file a trainer module specifier names (an absolute path, or a package resolved from here). */
function moduleFile(module: string): string {
  if (isAbsolute(module)) return module;
  if (module.startsWith('file:')) return fileURLToPath(module);
  return createRequire(import.meta.url).resolve(module);
}

/** A TypeScript module: Node 20 runs it only under a loader. */
const TYPESCRIPT_FILE = /\.[cm]?ts$/;

/** Whether the process was started with a module loader or preload of the user's own. */
function hasLoader(): boolean {
  const flags = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].join(' ');
  return /(?:^|\s)(?:--import|--loader|--experimental-loader|--require|-r)(?:[\s=]|$)/.test(flags);
}

/**
 * Before importing a `.ts` trainer: unless the user started the process with a loader,
 * register tsx from the trainer's own project (where `npm install --save-dev tsx` put it),
 * so a trainer written in the caller's TypeScript project just runs.
 */
async function typescriptLoader(file: string): Promise<void> {
  if (!TYPESCRIPT_FILE.test(file) || hasLoader()) return;
  let loader: string;
  try {
    // tsx's main entry is its loader (what `--import tsx` runs), whatever the conditions.
    loader = createRequire(file).resolve('tsx');
  } catch {
    throw new Error(
      `${file} is a TypeScript file and Node needs a loader to run it: install tsx in its project (npm install --save-dev tsx), or name the compiled .js file`,
    );
  }
  await import(pathToFileURL(loader).href);
}

async function loadTrainer(
  module: string,
  exportName: string,
): Promise<{ factory: TrainerFactory; file: string }> {
  const file = moduleFile(module);
  await typescriptLoader(file);
  const mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  const found = mod[exportName];
  if (typeof found !== 'function') {
    throw new Error(
      `${module} has no export ${JSON.stringify(exportName)} that is a Trainer class`,
    );
  }
  const proto = (found as { prototype?: Record<string, unknown> }).prototype ?? {};
  const missing = TRAINER_METHODS.filter((m) => typeof proto[m] !== 'function');
  if (missing.length > 0) {
    throw new Error(
      `${module}: export ${JSON.stringify(exportName)} is not a Trainer class (missing: ${missing.join(', ')})`,
    );
  }
  const Ctor = found as new () => Trainer;
  return { factory: () => new Ctor(), file };
}

async function check(): Promise<number> {
  try {
    const module = process.env.STAGETREE_TRAINER_MODULE ?? '';
    if (module === '') throw new Error('STAGETREE_TRAINER_MODULE is not set');
    const { file } = await loadTrainer(module, process.env.STAGETREE_TRAINER_EXPORT ?? 'default');
    const fingerprint = `sha256:${createHash('sha256').update(readFileSync(file)).digest('hex')}`;
    process.stdout.write(JSON.stringify({ ok: true, fingerprint, file }) + '\n');
    return 0;
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, error: describeError(e) }) + '\n');
    return 1;
  }
}

/**
 * The engine port of the main thread: messages go through the link thread. `closed`
 * resolves once the stream has ended (every message handed to the link thread before
 * `close` has been sent) or the thread is gone.
 */
function linkPort(
  engine: string,
  shared: SharedArrayBuffer,
): EnginePort & { readonly closed: Promise<void> } {
  const data: LinkData = { engine, shared, ppid: process.ppid, shutdownGraceSeconds: 3 };
  const thread = new Worker(new URL('./worker-link.js', import.meta.url), { workerData: data });
  const messageListeners: ((m: EngineToWorker) => void)[] = [];
  const closeListeners: ((error: string | null) => void)[] = [];
  let ended: () => void = () => undefined;
  const closed = new Promise<void>((resolve) => (ended = resolve));
  thread.on('message', (m: FromLink) => {
    if (m.type === 'message') for (const l of messageListeners) l(m.message);
    else {
      ended();
      for (const l of closeListeners) l(m.error);
    }
  });
  thread.on('error', (e) => {
    ended();
    for (const l of closeListeners) l(`the link thread failed: ${describeError(e)}`);
  });
  thread.on('exit', () => ended());
  return {
    closed,
    send: (message) => thread.postMessage({ type: 'send', message } satisfies ToLink),
    onMessage: (l) => messageListeners.push(l),
    onClose: (l) => closeListeners.push(l),
    close: () => thread.postMessage({ type: 'close' } satisfies ToLink),
  };
}

async function main(): Promise<number> {
  if (process.argv.includes('--check')) return check();
  const engine = need('STAGETREE_ENGINE');
  const workerId = need('STAGETREE_WORKER_ID');
  const secret = need(WORKER_SECRET_ENV);
  // Nothing this process starts needs the secret.
  Reflect.deleteProperty(process.env, WORKER_SECRET_ENV);
  const shared = new SharedArrayBuffer(16);
  const state = new BigInt64Array(shared);
  // The link thread boots and dials while the trainer's module loads.
  const port = linkPort(engine, shared);
  const { factory } = await loadTrainer(
    need('STAGETREE_TRAINER_MODULE'),
    process.env.STAGETREE_TRAINER_EXPORT ?? 'default',
  );
  const visible = process.env.CUDA_VISIBLE_DEVICES ?? '';
  const gpus = visible === '' ? [] : visible.split(',').map(Number).filter(Number.isInteger);
  const chunk = process.env[CHUNK_SECONDS_ENV];
  const chunkSeconds = chunk === undefined || chunk === '' ? CHUNK_SECONDS : Number(chunk);
  if (!(chunkSeconds > 0 && Number.isFinite(chunkSeconds))) {
    process.stderr.write(
      `stagetree worker: ${CHUNK_SECONDS_ENV} must be a positive number of seconds, got ${JSON.stringify(chunk)}\n`,
    );
    process.exit(2);
  }
  const agent = new WorkerAgent(port, {
    workerId,
    secret,
    chunkSeconds,
    gpus,
    gpuShare: Number(process.env.STAGETREE_GPU_SHARE ?? '1') || 1,
    trainer: factory,
    checkpoints: (dir) => {
      // Opened at first use: a folder that is unusable fails that task, not the worker.
      let store: CheckpointStore | null = null;
      const open = (): CheckpointStore => (store ??= new CheckpointStore(dir));
      return {
        save: (key, bytes) => {
          open().put(key, bytes);
          return Promise.resolve();
        },
        load: (key) => Promise.resolve(new Uint8Array(open().get(key))),
      };
    },
    // performance.now() counts from the process start.
    clock: () => performance.now() / 1000,
    startedAt: 0,
    heartbeats: {
      setRunning: (taskId) => Atomics.store(state, 0, BigInt(taskId ?? 0)),
      cancelled: (taskId) => Atomics.load(state, 1) === BigInt(taskId),
    },
  });
  const code = await agent.run();
  // The last progress and result may still be on their way to the engine: exit once the
  // stream has ended (the engine closes it after a stop), or after a grace period.
  port.close();
  await Promise.race([port.closed, new Promise((resolve) => setTimeout(resolve, 3000).unref())]);
  return code;
}

/** Exits once everything written to stdout and stderr has left (pipes are asynchronous). */
function exit(code: number): void {
  void Promise.all(
    [process.stdout, process.stderr].map(
      (stream) => new Promise<void>((resolve) => stream.write('', () => resolve())),
    ),
  ).then(() => process.exit(code));
}

main().then(exit, (e: unknown) => {
  process.stderr.write(`stagetree worker: ${describeError(e)}\n`);
  exit(1);
});
