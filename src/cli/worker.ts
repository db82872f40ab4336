#!/usr/bin/env node
/**
 * A TypeScript worker process: `node dist/cli/worker.js`, started by the process pool.
 * Environment: STAGETREE_ENGINE (host:port of the engine's hub), STAGETREE_WORKER_ID,
 * STAGETREE_TRAINER_MODULE (an absolute path or package name) and
 * STAGETREE_TRAINER_EXPORT (default "default"), STAGETREE_GPU_SHARE,
 * CUDA_VISIBLE_DEVICES.
 */
import { pathToFileURL } from 'node:url';
import { isAbsolute } from 'node:path';
import { WorkerAgent } from '../agent/index.js';
import { dialEngine } from '../rpc/index.js';
import { CheckpointStore } from '../store/index.js';
import type { Trainer, TrainerFactory } from '../trainer/index.js';

function need(name: string): string {
  const v = process.env[name];
  if (v === undefined || v === '') {
    process.stderr.write(`stagetree worker: ${name} is not set\n`);
    process.exit(2);
  }
  return v;
}

async function loadTrainer(module: string, exportName: string): Promise<TrainerFactory> {
  const spec = isAbsolute(module) ? pathToFileURL(module).href : module;
  const mod = (await import(spec)) as Record<string, unknown>;
  const found = mod[exportName];
  if (typeof found !== 'function') {
    throw new Error(
      `${module} has no export ${JSON.stringify(exportName)} that is a Trainer class`,
    );
  }
  const Ctor = found as new () => Trainer;
  return () => new Ctor();
}

async function main(): Promise<number> {
  const engine = need('STAGETREE_ENGINE');
  const workerId = need('STAGETREE_WORKER_ID');
  const trainer = await loadTrainer(
    need('STAGETREE_TRAINER_MODULE'),
    process.env.STAGETREE_TRAINER_EXPORT ?? 'default',
  );
  const visible = process.env.CUDA_VISIBLE_DEVICES ?? '';
  const gpus = visible === '' ? [] : visible.split(',').map(Number).filter(Number.isInteger);
  const agent = new WorkerAgent(dialEngine(engine), {
    workerId,
    gpus,
    gpuShare: Number(process.env.STAGETREE_GPU_SHARE ?? '1') || 1,
    trainer,
    checkpoints: (dir) => {
      const store = new CheckpointStore(dir);
      return {
        save: (key, bytes) => {
          store.put(key, bytes);
          return Promise.resolve();
        },
        load: (key) => Promise.resolve(new Uint8Array(store.get(key))),
      };
    },
    clock: () => performance.now() / 1000,
  });
  return agent.run();
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`stagetree worker: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
