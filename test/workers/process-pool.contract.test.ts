import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { WireTask, WorkerId } from '../../src/engine/index.js';
import { startWorkerHub } from '../../src/rpc/index.js';
import type { WorkerHub } from '../../src/rpc/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import { ProcessPool } from '../../src/workers/index.js';
import { ROOT, TRAINER } from '../support/real-run.js';
import { describePoolContract } from './pool-contract.js';

/**
 * The WorkerPool contract on real worker processes (`npm run build` first: they run
 * dist/cli/worker.js) and a real hub on a Unix socket. Faults: a command that prints and
 * exits at once (a failed start), a worker whose results race cancels
 * (test/fixtures/racing-worker.mjs), and a stopped process (SIGSTOP) for silence.
 */

const RACING = join(ROOT, 'test', 'fixtures', 'racing-worker.mjs');
const HOST = 'contract-host';
const GIB = 1024 ** 3;

const lr = canonicalize(parseSchedule(0.05));
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
        end: kind === 'short' ? 2 : 100_000,
        params: { seed: 1, stepDelayMs: kind === 'short' ? 0 : 50 },
        schedules: { lr },
      },
    ],
    saveAfter: null,
    endKey: `K${id}`,
  };
}

describePoolContract('process', async () => {
  const failing = new Set<WorkerId>();
  const racing = new Set<WorkerId>();
  let pool: ProcessPool | null = null;
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-contract-'));
  const hub: WorkerHub = await startWorkerHub({
    socket: join(dir, 'hub.sock'),
    admit: (r) => (pool ? pool.admit(r) : { code: 'unauthenticated', message: 'no pool' }),
    onConnect: (c) => pool?.attach(c),
  });
  const p = new ProcessPool({
    command: (id) => {
      if (failing.has(id))
        return {
          file: process.execPath,
          args: [
            '-e',
            "console.log('starting'); console.error('cannot start: injected fault'); process.exit(3)",
          ],
          env: {},
        };
      if (racing.has(id)) return { file: process.execPath, args: [RACING], env: {} };
      return {
        file: process.execPath,
        args: [join(ROOT, 'dist', 'cli', 'worker.js')],
        env: { STAGETREE_TRAINER_MODULE: TRAINER, STAGETREE_TRAINER_EXPORT: 'QuadraticTrainer' },
      };
    },
    engineAddress: hub.address,
    // Two GPUs that are not devices 0 and 1: GPU index 1 runs with CUDA_VISIBLE_DEVICES=7,
    // and the hub admits the worker only if it registers seeing device 7.
    gpus: true,
    devices: [
      { device: 3, memoryBytes: 16 * GIB },
      { device: 7, memoryBytes: null },
    ],
    host: HOST,
    welcome: { kind: 'welcome', checkpointDir: join(dir, 'ck'), heartbeatSeconds: 0.1 },
    log: () => undefined,
  });
  pool = p;
  return {
    pool: p,
    inventory: {
      hosts: [
        {
          name: HOST,
          gpus: [
            { host: HOST, device: 3, memoryBytes: 16 * GIB },
            { host: HOST, device: 7, memoryBytes: null },
          ],
        },
      ],
    },
    metric: 'loss',
    grace: 2,
    graceMs: 2000,
    task: wireTask,
    failStart: (id) => failing.add(id),
    failOutput: /^cannot start: injected fault$/,
    delayResults: (id) => racing.add(id),
    silence: (id) => {
      const pid = p.pid(id);
      if (pid === undefined) throw new Error(`no process for ${id}`);
      process.kill(pid, 'SIGSTOP');
    },
    close: async () => {
      await p.shutdown('test over', 1);
      await hub.close();
    },
  };
});
