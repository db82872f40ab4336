import { credentials } from '@grpc/grpc-js';
import { test } from '@fast-check/vitest';
import { afterEach, describe, expect, it } from 'vitest';
import type { EngineToWorker, WorkerToEngine } from '../../src/engine/index.js';
import { PROTOCOL } from '../../src/engine/index.js';
import { WorkerHubServiceClient } from '../../src/gen/stagetree/v1/worker.js';
import {
  boundedWire,
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
  secret: 'right',
};

let hubs: WorkerHub[] = [];
afterEach(async () => {
  await Promise.all(hubs.map((h) => h.close()));
  hubs = [];
});

async function hub(onConnect: (c: WorkerConnection) => void): Promise<WorkerHub> {
  const h = await startWorkerHub({
    onConnect,
    admit: (r) =>
      r.secret === 'right' ? null : { code: 'unauthenticated', message: 'wrong secret' },
  });
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
    cn.send({ kind: 'welcome', checkpointDir: '/tmp/ck', heartbeatSeconds: 1, workerId: 'w1' });
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
      body: {
        $case: 'register',
        value: {
          workerId: '',
          language: 'typescript',
          protocol: PROTOCOL,
          pid: 1,
          gpus: [0],
          gpuShare: 0.5,
          holds: '',
          secret: 'right',
        },
      },
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

describe('the hub refuses what a hostile peer sends, stream by stream', () => {
  /** Opens a raw stream, writes `body`, and resolves with the status it ends with. */
  function refusedWith(
    address: string,
    body: NonNullable<Parameters<ReturnType<WorkerHubServiceClient['connect']>['write']>[0]>,
  ): Promise<{ code: number; details: string; gotData: boolean }> {
    const client = new WorkerHubServiceClient(address, credentials.createInsecure());
    const call = client.connect();
    let gotData = false;
    return new Promise((resolve) => {
      call.on('data', () => (gotData = true));
      call.on('error', (e: { code: number; details: string }) => {
        client.close();
        resolve({ code: e.code, details: e.details, gotData });
      });
      call.write(body);
    });
  }
  const wireRegister = (secret: string) => ({
    body: {
      $case: 'register' as const,
      value: { ...register, holds: '', gpus: [0], secret },
    },
  });

  it('refuses a wrong secret with UNAUTHENTICATED and welcomes nobody', async () => {
    let connected = 0;
    const h = await hub(() => connected++);
    const r = await refusedWith(h.address, wireRegister('forged'));
    expect(r).toEqual({ code: 16, details: 'wrong secret', gotData: false });
    expect(connected).toBe(0);
    expect(h.refused.get('unauthenticated')).toBe(1);
  });

  it('refuses a second stream for a connected worker with ALREADY_EXISTS', async () => {
    const h = await startWorkerHub({
      admit: () => ({ code: 'already-exists', message: 'worker w1 is connected already' }),
      onConnect: () => undefined,
    });
    hubs.push(h);
    const r = await refusedWith(h.address, wireRegister('right'));
    expect([r.code, r.details]).toEqual([6, 'worker w1 is connected already']);
  });

  it('ends a stream that does not register in time (DEADLINE_EXCEEDED)', async () => {
    const h = await startWorkerHub({
      admit: () => null,
      onConnect: () => undefined,
      registerTimeout: 0.2,
    });
    hubs.push(h);
    const client = new WorkerHubServiceClient(h.address, credentials.createInsecure());
    const call = client.connect();
    const e = await new Promise<{ code: number; details: string }>((resolve) =>
      call.on('error', resolve),
    );
    expect([e.code, e.details]).toEqual([4, 'no register within 0.2 s']);
    client.close();
  });

  it('answers a listener that throws with INTERNAL on that stream and goes on serving', async () => {
    let calls = 0;
    const h = await hub((cn) => {
      cn.onMessage(() => {
        calls++;
        throw new Error('a listener bug');
      });
    });
    const link = dialEngine(h.address);
    const closed = new Promise<string | null>((resolve) => link.onClose(resolve));
    link.send(register);
    link.send({ kind: 'heartbeat', taskId: null });
    expect(await closed).toBe('internal error: a listener bug');
    expect(calls).toBe(1);
    // The hub still serves others.
    const r = await refusedWith(h.address, wireRegister('forged'));
    expect(r.code).toBe(16);
  });

  it('carries NaN and infinite metrics (a diverged trial is normal), not as a malformed message', async () => {
    const got = new Promise<WorkerToEngine>((resolve) => {
      void hub((cn) => {
        cn.onMessage(resolve);
      }).then((h) => {
        const link = dialEngine(h.address);
        link.send(register);
        link.send({
          kind: 'done',
          taskId: 3,
          metrics: { loss: Number.NaN, up: Infinity, down: -Infinity },
          seconds: { train: 1 },
        });
      });
    });
    const m = await got;
    expect(m.kind === 'done' ? m.metrics : null).toEqual({
      loss: Number.NaN,
      up: Infinity,
      down: -Infinity,
    });
  });

  it('turns a result over the message limit into a failure saying so, on the worker side', () => {
    const metrics: Record<string, number> = {};
    for (let i = 0; i < 1_000_000; i++) metrics[`m${i}`] = i;
    const wire = boundedWire({ kind: 'done', taskId: 5, metrics, seconds: {} });
    expect(wire.body?.$case).toBe('failed');
    const failed = wire.body?.$case === 'failed' ? wire.body.value : null;
    expect(failed?.taskId).toBe(5);
    expect(failed?.message).toMatch(
      /^message of \d+ bytes exceeds the limit of 16777216 bytes \(evaluate\(\) returned 1000000 metrics\)$/,
    );
    // A long error text is cut, saying how much.
    const long = boundedWire({
      kind: 'failed',
      taskId: 5,
      message: 'y'.repeat(10_000),
      detail: 'z'.repeat(100_000),
      reason: 'trainer',
    });
    const f = long.body?.$case === 'failed' ? long.body.value : null;
    expect(f?.message.length).toBe(4096);
    expect(f?.message).toMatch(/ \[\d+ more characters cut\]$/);
    expect(f?.detail.length).toBe(65536);
  });
});
