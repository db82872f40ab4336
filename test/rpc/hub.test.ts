import { credentials } from '@grpc/grpc-js';
import { test } from '@fast-check/vitest';
import { afterEach, describe, expect, it } from 'vitest';
import type { EngineToWorker, WorkerToEngine } from '../../src/engine/index.js';
import { PROTOCOL } from '../../src/engine/index.js';
import { WorkerHubServiceClient } from '../../src/gen/stagetree/v1/worker.js';
import {
  dialEngine,
  scheduleFromWire,
  scheduleToWire,
  startWorkerHub,
} from '../../src/rpc/index.js';
import type { WorkerConnection, WorkerHub } from '../../src/rpc/index.js';
import { valueAt } from '../../src/schedule/index.js';
import { canonical } from '../support/arbitraries.js';
import { c } from '../support/sim-study.js';

const register: WorkerToEngine = {
  kind: 'register',
  workerId: 'w1',
  language: 'typescript',
  protocol: PROTOCOL,
  pid: 1234,
  gpus: [0],
  gpuShare: 0.5,
  holds: null,
};

let hubs: WorkerHub[] = [];
afterEach(async () => {
  await Promise.all(hubs.map((h) => h.close()));
  hubs = [];
});

async function hub(onConnect: (c: WorkerConnection) => void): Promise<WorkerHub> {
  const h = await startWorkerHub({ onConnect });
  hubs.push(h);
  return h;
}

function next<T>(register: (cb: (v: T) => void) => void): Promise<T> {
  return new Promise((resolve) => {
    register(resolve);
  });
}

describe('worker hub over real gRPC on 127.0.0.1', () => {
  it('registers a worker and carries a task and its result both ways', async () => {
    let conn: WorkerConnection | undefined;
    const connected = new Promise<WorkerConnection>((resolve) => {
      void hub((cn) => {
        conn = cn;
        resolve(cn);
      }).then((h) => {
        const link = dialEngine(h.address);
        link.onMessage((m) => {
          if (m.kind === 'run') {
            link.send({
              kind: 'done',
              taskId: m.task.taskId,
              metrics: { loss: 0.25 },
              seconds: { train: 1.5 },
            });
          }
        });
        link.send(register);
      });
    });
    const cn = await connected;
    expect(cn.registration).toEqual(register);
    const lr = c({
      kind: 'warmup',
      steps: 5,
      from: 0,
      then: { kind: 'cosine', max: 0.1, min: 0, period: 95 },
    });
    const result = next<WorkerToEngine>((cb) => {
      cn.onMessage(cb);
    });
    const run: EngineToWorker = {
      kind: 'run',
      task: {
        taskId: 7,
        saveFirst: null,
        restore: { from: 'init' },
        runs: [
          {
            stage: 'S1',
            start: 0,
            end: 10,
            params: { seed: 3 },
            schedules: { lr, optimizer: c('sgd') },
          },
        ],
        saveAfter: 'Kabc',
        endKey: 'Kabc',
      },
    };
    cn.send({ kind: 'welcome', checkpointDir: '/tmp/ck', heartbeatSeconds: 1 });
    cn.send(run);
    expect(await result).toEqual({
      kind: 'done',
      taskId: 7,
      metrics: { loss: 0.25 },
      seconds: { train: 1.5 },
    });
    expect(conn).toBeDefined();
  });

  it('rejects a malformed message with INVALID_ARGUMENT naming the field', async () => {
    const h = await hub(() => undefined);
    const client = new WorkerHubServiceClient(h.address, credentials.createInsecure());
    const call = client.connect();
    const error = new Promise<{ code: number; details: string }>((resolve) => {
      call.on('error', resolve);
      call.on('data', () => undefined);
    });
    call.write({
      body: { $case: 'register', value: { ...register, workerId: '', holds: '', gpus: [0] } },
    });
    const e = await error;
    expect(e.code).toBe(3); // INVALID_ARGUMENT
    expect(e.details).toBe(
      'malformed message: register.workerId: expected a non-empty string, got "" (string)',
    );
    client.close();
  });

  it('rejects a stream that does not start with register (FAILED_PRECONDITION)', async () => {
    const h = await hub(() => undefined);
    const client = new WorkerHubServiceClient(h.address, credentials.createInsecure());
    const call = client.connect();
    const error = new Promise<{ code: number; details: string }>((resolve) =>
      call.on('error', resolve),
    );
    call.write({ body: { $case: 'heartbeat', value: { taskId: 0 } } });
    const e = await error;
    expect(e.code).toBe(9);
    expect(e.details).toMatch(/first message must be register/);
    client.close();
  });

  it('tells the engine side when a worker goes away', async () => {
    const closed = new Promise<string>((resolve) => {
      void hub((cn) => {
        cn.onClose(resolve);
      }).then((h) => {
        const link = dialEngine(h.address);
        link.send(register);
        setTimeout(() => link.close(), 50);
      });
    });
    expect(await closed).toMatch(/closed/);
  });
});

describe('schedules on the wire', () => {
  test.prop([canonical])('round-trip to the same schedule', (s) => {
    const back = scheduleFromWire(scheduleToWire(s), ['schedule']);
    expect(back.hash).toBe(s.hash);
    for (let t = 0; t < 60; t++) expect(valueAt(back, t)).toBe(valueAt(s, t));
  });

  it('rejects gaps between segments', () => {
    const w = scheduleToWire(c({ kind: 'piecewise', values: [1, 2], boundaries: [10] }));
    const broken = { ...w, segments: [w.segments[0], { ...w.segments[1], start: 11 }] } as typeof w;
    expect(() => scheduleFromWire(broken, ['runs', 0, 'schedules', 'lr'])).toThrow(
      'runs[0].schedules.lr.segments[1].start: expected 10 (segments are contiguous from 0), got 11 (number)',
    );
  });
});
