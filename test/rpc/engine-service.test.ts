import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, credentials, Metadata, Server, ServerCredentials, status } from '@grpc/grpc-js';
import type { ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  EngineAuthError,
  EngineCallError,
  EngineConflictError,
  EngineUnavailableError,
  EnvironmentError,
  ExecutorClosedError,
  InvalidRequestError,
  IoError,
  MalformedAnswerError,
  NotFoundError,
  PlaintextTokenError,
  TokenRequiredError,
  ValidationError,
} from '../../src/errors.js';
import {
  EngineServiceClient,
  EngineServiceService,
  MetricMode,
  StudyState as WireStudyState,
  TrialStatus as WireTrialStatus,
} from '../../src/gen/stagetree/v1/engine.js';
import type {
  EngineServiceServer,
  Study as WireStudy,
  StudyEvent as WireStudyEvent,
  SubmitRequest as WireSubmitRequest,
} from '../../src/gen/stagetree/v1/engine.js';
import { connectEngine, isLoopback, startEngineServer } from '../../src/rpc/index.js';
import { hasOpenssl, selfSignedCertificate } from '../support/tls.js';
import type {
  EngineApi,
  EngineClient,
  EngineServer,
  EngineServerOptions,
  StudyEvent,
  StudyInfo,
  SubmitRequest,
} from '../../src/rpc/index.js';

// ------------------------------------------------------------------ a fake executor

function study(id: string, over: Partial<StudyInfo> = {}): StudyInfo {
  return {
    id,
    state: 'running',
    best: { trial: 't3', step: 40, value: Number.NaN },
    trials: { total: 8, active: 5, stopped: 2, failed: 1 },
    stepsTrained: 320,
    stepsReused: 80,
    gpuSeconds: 12.5,
    problem: null,
    metric: { name: 'val_loss', mode: 'min' },
    ...over,
  };
}

/** An in-memory EngineApi that records every call and every subscription. */
class FakeEngine implements EngineApi {
  readonly studies = new Map<string, StudyInfo>();
  readonly calls: string[] = [];
  readonly submitted: SubmitRequest[] = [];
  readonly listeners = new Map<string, Set<(event: StudyEvent) => void>>();
  unsubscribed = 0;
  /** Thrown by the next call (once). */
  failWith: Error | null = null;
  /** Answers of the next call instead of the stored study (an executor bug). */
  answerWith: StudyInfo | null = null;
  /** submit() never settles. */
  hang = false;

  constructor() {
    this.studies.set('alpha', study('alpha'));
    this.studies.set(
      'beta',
      study('beta', {
        state: 'stopped',
        best: null,
        problem: 'the trainer cannot load: no module "nope"',
        metric: { name: 'accuracy', mode: 'max' },
        gpuSeconds: Number.MAX_VALUE,
      }),
    );
  }

  private enter(call: string): void {
    this.calls.push(call);
    const e = this.failWith;
    if (e !== null) {
      this.failWith = null;
      throw e;
    }
  }

  private known(id: string): StudyInfo {
    const s = this.studies.get(id);
    if (!s) throw new NotFoundError('study', id);
    const a = this.answerWith;
    this.answerWith = null;
    return a ?? s;
  }

  async submit(request: SubmitRequest): Promise<StudyInfo> {
    this.enter('submit');
    this.submitted.push(request);
    if (this.hang) await new Promise(() => undefined);
    let name: unknown;
    try {
      name = (JSON.parse(request.studyJson) as { name?: unknown }).name;
    } catch {
      throw new ValidationError([], 'valid JSON', request.studyJson);
    }
    if (typeof name !== 'string') throw new ValidationError(['name'], 'a study name', name);
    const s = study(name, { stepsTrained: 0, stepsReused: 0, gpuSeconds: 0, best: null });
    this.studies.set(name, s);
    return s;
  }

  get(id: string): StudyInfo {
    this.enter('get');
    return this.known(id);
  }

  list(): StudyInfo[] {
    this.enter('list');
    return [...this.studies.values()];
  }

  private setState(call: string, id: string, state: StudyInfo['state']): StudyInfo {
    this.enter(call);
    const s = { ...this.known(id), state };
    this.studies.set(id, s);
    return s;
  }

  cancel(id: string): StudyInfo {
    return this.setState('cancel', id, 'cancelled');
  }

  pause(id: string): StudyInfo {
    return this.setState('pause', id, 'paused');
  }

  resume(id: string): StudyInfo {
    return this.setState('resume', id, 'running');
  }

  watch(id: string, listener: (event: StudyEvent) => void): () => void {
    this.enter('watch');
    this.known(id);
    const set = this.listeners.get(id) ?? new Set();
    this.listeners.set(id, set);
    set.add(listener);
    return () => {
      if (set.delete(listener)) this.unsubscribed++;
    };
  }

  subscribers(id: string): number {
    return this.listeners.get(id)?.size ?? 0;
  }

  emit(event: StudyEvent): void {
    for (const l of [...(this.listeners.get(event.study) ?? [])]) l(event);
  }
}

// ------------------------------------------------------------------ helpers

const TOKEN = 'a-token-of-32-characters-for-tst';
const BASE = '/srv/studies';

let servers: { close(): Promise<void> }[] = [];
let clients: { close(): void }[] = [];
afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
});

interface Started {
  readonly fake: FakeEngine;
  readonly server: EngineServer;
  readonly errors: { method: string; error: unknown }[];
}

async function serve(options: Partial<EngineServerOptions> = {}): Promise<Started> {
  const fake = new FakeEngine();
  const errors: { method: string; error: unknown }[] = [];
  const server = await startEngineServer({
    address: '127.0.0.1:0',
    api: fake,
    token: null,
    tls: null,
    onError: (method, error) => errors.push({ method, error }),
    ...options,
  });
  servers.push(server);
  return { fake, server, errors };
}

function connect(address: string, options: Parameters<typeof connectEngine>[1] = {}): EngineClient {
  const client = connectEngine(address, options);
  clients.push(client);
  return client;
}

function raw(address: string): EngineServiceClient {
  const client = new EngineServiceClient(address, credentials.createInsecure());
  clients.push(client);
  return client;
}

/** Polls `check` until it holds (or fails after `ms`). */
async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The error a promise rejects with (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

/** The error a promise rejects with, checked to be an instance of `type`. */
async function rejectionAs<T extends Error>(
  p: Promise<unknown>,
  type: abstract new (...args: never[]) => T,
): Promise<T> {
  const e = await rejection(p);
  if (!(e instanceof type)) throw new Error(`expected a ${type.name}, got ${String(e)}`);
  return e;
}

/** A raw unary call's status. */
function rawStatus(
  invoke: (cb: (error: ServiceError | null) => void) => void,
): Promise<{ code: number; details: string }> {
  return new Promise((resolve) => {
    invoke((error) => {
      resolve({ code: error?.code ?? status.OK, details: error?.details ?? '' });
    });
  });
}

// ------------------------------------------------------------------ round trips

describe('engine service: every call round-trips over real gRPC on 127.0.0.1', () => {
  it('submit, get, list, cancel, pause, resume answer the executor’s studies, NaN and all', async () => {
    const { fake, server } = await serve();
    const client = connect(server.address);

    const submitted = await client.submit({
      studyJson: JSON.stringify({ name: 'gamma' }),
      baseDir: BASE,
      priority: null,
    });
    expect(submitted).toEqual(fake.studies.get('gamma'));
    await client.submit({
      studyJson: JSON.stringify({ name: 'delta' }),
      baseDir: BASE,
      priority: 2.5,
    });
    expect(fake.submitted).toEqual([
      { studyJson: '{"name":"gamma"}', baseDir: BASE, priority: null },
      { studyJson: '{"name":"delta"}', baseDir: BASE, priority: 2.5 },
    ]);

    const alpha = await client.get('alpha');
    expect(alpha).toEqual(study('alpha'));
    expect(Number.isNaN(alpha.best?.value)).toBe(true);

    const beta = await client.get('beta');
    expect(beta.best).toBeNull();
    expect(beta.problem).toBe('the trainer cannot load: no module "nope"');
    expect(beta.gpuSeconds).toBe(Number.MAX_VALUE);
    expect(beta.metric).toEqual({ name: 'accuracy', mode: 'max' });

    fake.studies.set('inf', study('inf', { best: { trial: 't1', step: 0, value: -Infinity } }));
    expect((await client.get('inf')).best?.value).toBe(-Infinity);
    fake.studies.set('pinf', study('pinf', { best: { trial: 't1', step: 7, value: Infinity } }));
    expect((await client.get('pinf')).best).toEqual({ trial: 't1', step: 7, value: Infinity });

    const all = await client.list();
    expect(all.map((s) => s.id)).toEqual(['alpha', 'beta', 'gamma', 'delta', 'inf', 'pinf']);
    expect(all).toEqual([...fake.studies.values()]);

    expect((await client.pause('alpha')).state).toBe('paused');
    expect((await client.resume('alpha')).state).toBe('running');
    expect(await client.cancel('alpha')).toEqual({ ...study('alpha'), state: 'cancelled' });
    expect(fake.calls).toEqual([
      'submit',
      'submit',
      'get',
      'get',
      'get',
      'get',
      'list',
      'pause',
      'resume',
      'cancel',
    ]);
  });

  it('lists no studies as an empty list', async () => {
    const { fake, server } = await serve();
    fake.studies.clear();
    expect(await connect(server.address).list()).toEqual([]);
  });
});

// ------------------------------------------------------------------ watch

describe('engine service: watch', () => {
  const events: StudyEvent[] = [
    { kind: 'state', study: 'alpha', t: 1.5, state: 'paused' },
    { kind: 'trial', study: 'alpha', t: 2, trial: 't4', status: 'proposed', message: '' },
    { kind: 'trial', study: 'alpha', t: 2.5, trial: 't2', status: 'failed', message: 'CUDA OOM' },
    { kind: 'metric', study: 'alpha', t: 3, trial: 't4', step: 10, value: Number.NaN },
    { kind: 'metric', study: 'alpha', t: 3, trial: 't4', step: 20, value: Infinity },
    { kind: 'metric', study: 'alpha', t: 4, trial: 't1', step: 20, value: -Infinity },
    { kind: 'metric', study: 'alpha', t: 4, trial: 't1', step: 30, value: 0.125 },
  ];

  it('streams every event in order and unsubscribes when the client leaves the loop', async () => {
    const { fake, server } = await serve();
    const client = connect(server.address);
    const it = client.watch('alpha')[Symbol.asyncIterator]();
    const first = it.next();
    await until(() => fake.subscribers('alpha') === 1);
    expect(server.watchers).toBe(1);
    for (const e of events) fake.emit(e);
    // Another study's events do not reach this watcher.
    fake.studies.set('other', study('other'));
    fake.emit({ kind: 'state', study: 'other', t: 1, state: 'finished' });
    const got: StudyEvent[] = [];
    let r = await first;
    while (!r.done) {
      got.push(r.value);
      if (got.length === events.length) break;
      r = await it.next();
    }
    expect(got).toEqual(events);
    await it.return?.();
    await until(() => fake.subscribers('alpha') === 0 && server.watchers === 0);
    expect(fake.unsubscribed).toBe(1);
  });

  it('carries a burst larger than grpc-js buffers, in order (the backlog drains)', async () => {
    const { fake, server } = await serve();
    const client = connect(server.address);
    const it = client.watch('alpha')[Symbol.asyncIterator]();
    const first = it.next();
    await until(() => fake.subscribers('alpha') === 1);
    const n = 3000;
    for (let i = 0; i < n; i++)
      fake.emit({ kind: 'metric', study: 'alpha', t: i, trial: 't1', step: i, value: i / 3 });
    let r = await first;
    let seen = 0;
    while (!r.done) {
      expect(r.value).toEqual({
        kind: 'metric',
        study: 'alpha',
        t: seen,
        trial: 't1',
        step: seen,
        value: seen / 3,
      });
      seen++;
      if (seen === n) break;
      r = await it.next();
    }
    expect(seen).toBe(n);
    await it.return?.();
    await until(() => fake.subscribers('alpha') === 0);
  });

  it('a raw client that cancels its stream is unsubscribed too', async () => {
    const { fake, server } = await serve();
    const call = raw(server.address).watch({ id: 'alpha' });
    call.on('error', () => undefined);
    const data = new Promise<unknown>((resolve) => call.once('data', resolve));
    await until(() => fake.subscribers('alpha') === 1);
    fake.emit(events[0] as StudyEvent);
    expect(await data).toEqual({
      event: {
        study: 'alpha',
        t: 1.5,
        kind: { $case: 'state', value: { state: WireStudyState.STUDY_STATE_PAUSED } },
      },
    });
    call.cancel();
    await until(() => fake.subscribers('alpha') === 0 && server.watchers === 0);
    expect(fake.unsubscribed).toBe(1);
  });

  it('an unknown study is NOT_FOUND, and nothing stays subscribed', async () => {
    const { fake, server } = await serve();
    const error = await rejection(
      (async () => {
        for await (const e of connect(server.address).watch('nope')) expect(e).toBeUndefined();
      })(),
    );
    expect(error).toBeInstanceOf(NotFoundError);
    expect(error.message).toBe('study "nope" does not exist');
    expect(server.watchers).toBe(0);
    expect(fake.calls).toEqual(['watch']);
  });

  it('the server closing ends the stream as UNAVAILABLE and unsubscribes', async () => {
    const { fake, server } = await serve();
    const it = connect(server.address).watch('alpha')[Symbol.asyncIterator]();
    const next = it.next();
    await until(() => fake.subscribers('alpha') === 1);
    const failed = rejection(next);
    await server.close();
    const error = await failed;
    expect(error).toBeInstanceOf(EngineUnavailableError);
    expect(error.message).toBe(
      `cannot reach the engine at ${server.address}: the engine is shutting down`,
    );
    expect(fake.subscribers('alpha')).toBe(0);
    expect(fake.unsubscribed).toBe(1);
  });

  it('closing the client ends its watches quietly; the server unsubscribes', async () => {
    const { fake, server } = await serve();
    const client = connectEngine(server.address);
    const it = client.watch('alpha')[Symbol.asyncIterator]();
    const next = it.next();
    await until(() => fake.subscribers('alpha') === 1);
    client.close();
    expect(await next).toEqual({ done: true, value: undefined });
    await until(() => fake.subscribers('alpha') === 0);
    expect(await rejection(client.get('alpha'))).toBeInstanceOf(EngineUnavailableError);
  });

  it('a client that stops reading is cut off with RESOURCE_EXHAUSTED; memory stays bounded', async () => {
    const { fake, server } = await serve({ maxWatchBacklog: 8 });
    const client = connect(server.address);
    const it = client.watch('alpha')[Symbol.asyncIterator]();
    const first = it.next();
    await until(() => fake.subscribers('alpha') === 1);
    // Large events fill the HTTP/2 window quickly; the client reads none of them.
    const message = 'x'.repeat(4000);
    let emitted = 0;
    while (fake.subscribers('alpha') === 1) {
      if (emitted >= 50_000) throw new Error('the server never cut off the slow watcher');
      for (let i = 0; i < 50; i++) {
        fake.emit({
          kind: 'trial',
          study: 'alpha',
          t: emitted,
          trial: `t${emitted}`,
          status: 'stopped',
          message,
        });
        emitted++;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    expect(fake.unsubscribed).toBe(1);
    expect(server.watchers).toBe(0);
    // Reading again: what was on its way arrives in order, then the status.
    let received = 0;
    const error = await rejectionAs(
      (async () => {
        let r = await first;
        while (!r.done) {
          expect(r.value).toMatchObject({ kind: 'trial', trial: `t${received}` });
          received++;
          r = await it.next();
        }
      })(),
      EngineCallError,
    );
    expect(error.status).toBe('RESOURCE_EXHAUSTED');
    expect(error.message).toMatch(/read too slowly: 8 events were waiting/);
    expect(received).toBeGreaterThan(0);
    expect(received).toBeLessThan(emitted);
  });

  it('refuses more watchers than maxWatchers', async () => {
    const { fake, server } = await serve({ maxWatchers: 1 });
    const client = connect(server.address);
    const one = client.watch('alpha')[Symbol.asyncIterator]();
    const pending = one.next();
    await until(() => fake.subscribers('alpha') === 1);
    const error = await rejectionAs(
      client.watch('beta')[Symbol.asyncIterator]().next(),
      EngineCallError,
    );
    expect(error.status).toBe('RESOURCE_EXHAUSTED');
    expect(fake.subscribers('beta')).toBe(0);
    await one.return?.();
    await expect(pending).resolves.toEqual({ done: true, value: undefined });
  });
});

// ------------------------------------------------------------------ validation

describe('engine service: malformed requests are INVALID_ARGUMENT naming the field', () => {
  let started: Started;
  let client: EngineServiceClient;
  beforeAll(async () => {
    const fake = new FakeEngine();
    const server = await startEngineServer({
      address: '127.0.0.1:0',
      api: fake,
      token: null,
      tls: null,
    });
    started = { fake, server, errors: [] };
    client = new EngineServiceClient(server.address, credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await started.server.close();
  });

  const good: WireSubmitRequest = { studyJson: '{"name":"x"}', baseDir: BASE };
  const submits: [string, WireSubmitRequest, string][] = [
    ['an empty study', { ...good, studyJson: '' }, 'studyJson: expected a study file'],
    [
      'a study over 4 MiB',
      { ...good, studyJson: 'x'.repeat(4 * 1024 * 1024 + 1) },
      'studyJson: expected at most 4194304 bytes (UTF-8), got "a text of 4194305 bytes"',
    ],
    ['no baseDir', { ...good, baseDir: '' }, 'baseDir: expected an absolute folder path'],
    ['a relative baseDir', { ...good, baseDir: 'studies/here' }, 'baseDir: expected an absolute'],
    ['a NUL in baseDir', { ...good, baseDir: '/a\0b' }, 'baseDir: expected an absolute'],
    ['a huge baseDir', { ...good, baseDir: '/' + 'a'.repeat(5000) }, 'baseDir: expected'],
    ['priority 0', { ...good, priority: 0 }, 'priority: expected a finite number > 0'],
    ['a negative priority', { ...good, priority: -1 }, 'priority: expected a finite number > 0'],
    ['a NaN priority', { ...good, priority: Number.NaN }, 'priority: expected a finite number'],
    ['an infinite priority', { ...good, priority: Infinity }, 'priority: expected a finite'],
  ];
  for (const [what, request, message] of submits) {
    it(`Submit with ${what}`, async () => {
      const s = await rawStatus((cb) => client.submit(request, cb));
      expect(s.code).toBe(status.INVALID_ARGUMENT);
      expect(s.details.startsWith(message)).toBe(true);
    });
  }

  const ids: [string, string][] = [
    ['an empty id', ''],
    ['an id over 100 characters', 'a'.repeat(101)],
  ];
  for (const [what, id] of ids) {
    for (const method of ['get', 'cancel', 'pause', 'resume'] as const) {
      it(`${method} with ${what}`, async () => {
        const s = await rawStatus((cb) => client[method]({ id }, cb));
        expect(s.code).toBe(status.INVALID_ARGUMENT);
        expect(s.details).toMatch(/^id: expected a non-empty string of at most 100 characters/);
      });
    }
    it(`watch with ${what}`, async () => {
      const call = client.watch({ id });
      const e = await new Promise<ServiceError>((resolve) => call.on('error', resolve));
      expect(e.code).toBe(status.INVALID_ARGUMENT);
      expect(e.details).toMatch(/^id: expected a non-empty string/);
    });
  }

  it('undecodable bytes fail the call without reaching the executor or crashing the server', async () => {
    const c = new Client(started.server.address, credentials.createInsecure());
    const s = await rawStatus((cb) =>
      c.makeUnaryRequest(
        '/stagetree.v1.EngineService/Get',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        cb,
      ),
    );
    c.close();
    expect(s.code).not.toBe(status.OK);
    const after = await rawStatus((cb) => client.get({ id: 'alpha' }, cb));
    expect(after.code).toBe(status.OK);
  });

  it('none of them reached the executor', () => {
    expect(started.fake.calls).toEqual(['get']);
  });
});

describe('engine client: checks requests before sending them', () => {
  it('refuses bad ids, study texts, folders and priorities locally (ValidationError)', async () => {
    const { fake, server } = await serve();
    const client = connect(server.address);
    expect(await rejection(client.get(''))).toBeInstanceOf(ValidationError);
    expect(() => client.watch('')).toThrow(ValidationError);
    const e = await rejection(client.submit({ studyJson: '{}', baseDir: 'rel', priority: null }));
    expect(e).toBeInstanceOf(ValidationError);
    expect(e.message).toMatch(/^baseDir: /);
    const p = await rejection(client.submit({ studyJson: '{}', baseDir: BASE, priority: -2 }));
    expect(p.message).toMatch(/^priority: expected a finite number > 0/);
    expect(fake.calls).toEqual([]);
  });

  it('refuses bad options', () => {
    expect(() => connectEngine('nohostport')).toThrow(ValidationError);
    expect(() => connectEngine('127.0.0.1:0')).toThrow(/^address: expected host:port/);
    expect(() => connectEngine('127.0.0.1:1', { deadlineSeconds: 0 })).toThrow(
      /^deadlineSeconds: /,
    );
    expect(() => connectEngine('127.0.0.1:1', { token: 'has space' })).toThrow(/^token: /);
  });
});

// ------------------------------------------------------------------ errors

describe('engine service: errors of the executor map to status codes and typed errors', () => {
  it('ValidationError → INVALID_ARGUMENT → InvalidRequestError with the message', async () => {
    const { server } = await serve();
    const e = await rejectionAs(
      connect(server.address).submit({ studyJson: '{"name": 3}', baseDir: BASE, priority: null }),
      InvalidRequestError,
    );
    expect(e.message).toBe('name: expected a study name, got 3 (number)');
    expect(e.code).toBe('STAGETREE_VALIDATION');
  });

  it('NotFoundError → NOT_FOUND → NotFoundError with the message', async () => {
    const { server } = await serve();
    const client = connect(server.address);
    const calls = [
      (id: string) => client.get(id),
      (id: string) => client.cancel(id),
      (id: string) => client.pause(id),
      (id: string) => client.resume(id),
    ];
    let checked = 0;
    for (const call of calls) {
      const e = await rejectionAs(call('ghost'), NotFoundError);
      expect(e.message).toBe('study "ghost" does not exist');
      expect(e.id).toBe('ghost');
      checked++;
    }
    expect(checked).toBe(4);
  });

  it('a ConflictError subclass → FAILED_PRECONDITION → EngineConflictError', async () => {
    const { fake, server } = await serve();
    fake.failWith = new ExecutorClosedError('alpha', 'the executor is closed');
    const e = await rejectionAs(connect(server.address).pause('alpha'), EngineConflictError);
    expect(e.message).toBe('cannot run study alpha: the executor is closed');
    expect(e.code).toBe('STAGETREE_CONFLICT');
  });

  it('a failure the submitter can act on → FAILED_PRECONDITION led by its code → EngineCallError', async () => {
    const { fake, server, errors } = await serve();
    const cases = [
      new EnvironmentError('the node trainer /x/t.js cannot be loaded: no such file'),
      new IoError('/store/checkpoints', 'is not writable'),
    ];
    let checked = 0;
    for (const failure of cases) {
      fake.failWith = failure;
      const e = await rejectionAs(connect(server.address).get('alpha'), EngineCallError);
      expect(e.status).toBe('FAILED_PRECONDITION');
      expect(e.message).toBe(
        `the engine at ${server.address} failed the call (FAILED_PRECONDITION): ${failure.code}: ${failure.message}`,
      );
      checked++;
    }
    expect(checked).toBe(2);
    expect(errors).toEqual([]); // the caller was told; nothing for the engine's log
  });

  it('anything else → INTERNAL with a generic message; the error goes to onError only', async () => {
    const { fake, server, errors } = await serve();
    const bug = new TypeError('secret detail: cannot read x of undefined');
    fake.failWith = bug;
    const e = await rejectionAs(connect(server.address).get('alpha'), EngineCallError);
    expect(e.status).toBe('INTERNAL');
    expect(e.message).toBe(
      `the engine at ${server.address} failed the call (INTERNAL): internal error in Get; ` +
        `the engine's log has the details`,
    );
    expect(e.message).not.toMatch(/secret|TypeError|\n\s+at /);
    expect(errors).toEqual([{ method: 'Get', error: bug }]);
  });

  it('an invalid answer of the executor is INTERNAL, never sent', async () => {
    const { fake, server, errors } = await serve();
    const client = connect(server.address);
    const bad: [Partial<StudyInfo>, RegExp][] = [
      [{ state: 'bogus' as StudyInfo['state'] }, /study\.state: expected a study state/],
      [{ stepsTrained: Number.NaN }, /study\.stepsTrained: expected a finite number >= 0/],
      [{ trials: { total: 1.5, active: 0, stopped: 0, failed: 0 } }, /study\.trials\.total/],
      [{ best: { trial: 't1', step: -1, value: 0 } }, /study\.best\.step/],
      [{ metric: { name: '', mode: 'min' } }, /study\.metric\.name/],
    ];
    for (const [over, why] of bad) {
      fake.answerWith = study('alpha', over);
      const e = await rejectionAs(client.get('alpha'), EngineCallError);
      expect(e.status).toBe('INTERNAL');
      expect(describeCause(errors.at(-1)?.error)).toMatch(why);
    }
    expect(errors).toHaveLength(bad.length);
  });

  it('an unreachable engine is EngineUnavailableError naming the address', async () => {
    const e = await rejection(connect('127.0.0.1:1').get('alpha'));
    expect(e).toBeInstanceOf(EngineUnavailableError);
    expect(e.message).toMatch(/^cannot reach the engine at 127\.0\.0\.1:1: /);
  });

  it('a call past its deadline is EngineUnavailableError', async () => {
    const { fake, server } = await serve();
    fake.hang = true;
    const e = await rejection(
      connect(server.address, { deadlineSeconds: 0.2 }).submit({
        studyJson: '{"name":"slow"}',
        baseDir: BASE,
        priority: null,
      }),
    );
    expect(e).toBeInstanceOf(EngineUnavailableError);
    expect(e.message).toBe(`cannot reach the engine at ${server.address}: no answer within 0.2 s`);
  });
});

function describeCause(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// ------------------------------------------------------------------ a hostile server

describe('engine client: a hostile server cannot crash it', () => {
  const valid: WireStudy = {
    id: 'alpha',
    state: WireStudyState.STUDY_STATE_RUNNING,
    best: undefined,
    trials: { total: 1, active: 1, stopped: 0, failed: 0 },
    stepsTrained: 0,
    stepsReused: 0,
    gpuSeconds: 0,
    metric: { name: 'loss', mode: MetricMode.METRIC_MODE_MIN },
  };

  async function hostile(answer: WireStudy | undefined, event: WireStudyEvent): Promise<string> {
    const server = new Server();
    const reply = { study: answer };
    const impl: EngineServiceServer = {
      submit: (_c, cb) => cb(null, reply),
      get: (_c, cb) => cb(null, reply),
      list: (_c, cb) => cb(null, { studies: answer ? [valid, answer] : [] }),
      cancel: (_c, cb) => cb(null, reply),
      pause: (_c, cb) => cb(null, reply),
      resume: (_c, cb) => cb(null, reply),
      watch: (call) => {
        call.write({ event });
      },
    };
    server.addService(EngineServiceService, impl);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    servers.push({
      close: () => {
        server.forceShutdown();
        return Promise.resolve();
      },
    });
    return `127.0.0.1:${port}`;
  }

  const answers: [string, WireStudy | undefined, RegExp][] = [
    ['no study', undefined, /study: expected a study/],
    ['an unknown state', { ...valid, state: WireStudyState.UNRECOGNIZED }, /study\.state/],
    ['no state', { ...valid, state: WireStudyState.STUDY_STATE_UNSPECIFIED }, /study\.state/],
    ['no trial counts', { ...valid, trials: undefined }, /study\.trials: expected trial counts/],
    [
      'a negative count',
      { ...valid, trials: { total: -1, active: 0, stopped: 0, failed: 0 } },
      /study\.trials\.total: expected an integer >= 0/,
    ],
    ['NaN steps', { ...valid, stepsReused: Number.NaN }, /study\.stepsReused/],
    ['negative seconds', { ...valid, gpuSeconds: -1 }, /study\.gpuSeconds/],
    ['no metric', { ...valid, metric: undefined }, /study\.metric: expected a metric/],
    [
      'no metric mode',
      { ...valid, metric: { name: 'loss', mode: MetricMode.METRIC_MODE_UNSPECIFIED } },
      /study\.metric\.mode: expected min or max/,
    ],
    ['an empty id', { ...valid, id: '' }, /study\.id/],
    ['another study', { ...valid, id: 'beta' }, /study\.id: expected "alpha", got "beta"/],
    [
      'a best without a trial',
      { ...valid, best: { trial: '', step: 1, value: 0 } },
      /study\.best\.trial/,
    ],
  ];
  const event: WireStudyEvent = {
    study: 'alpha',
    t: 1,
    kind: {
      $case: 'trial',
      value: { trial: 't1', status: WireTrialStatus.UNRECOGNIZED, message: '' },
    },
  };

  for (const [what, answer, why] of answers) {
    it(`an answer with ${what} is a MalformedAnswerError`, async () => {
      const client = connect(await hostile(answer, event));
      const e = await rejection(client.get('alpha'));
      expect(e).toBeInstanceOf(MalformedAnswerError);
      expect(e.message).toMatch(why);
      expect(e.message).toMatch(/^the engine at 127\.0\.0\.1:\d+ sent a malformed answer: /);
    });
  }

  it('a malformed list, event, or another study’s event is refused the same way', async () => {
    const address = await hostile({ ...valid, stepsTrained: -5 }, event);
    const client = connect(address);
    const l = await rejection(client.list());
    expect(l).toBeInstanceOf(MalformedAnswerError);
    expect(l.message).toMatch(/studies\[1\]\.stepsTrained/);
    const w = await rejection(client.watch('alpha')[Symbol.asyncIterator]().next());
    expect(w).toBeInstanceOf(MalformedAnswerError);
    expect(w.message).toMatch(/event\.trial\.status: expected proposed, stopped or failed/);
    const other = connect(
      await hostile(valid, {
        study: 'beta',
        t: 1,
        kind: { $case: 'state', value: { state: WireStudyState.STUDY_STATE_RUNNING } },
      }),
    );
    const o = await rejection(other.watch('alpha')[Symbol.asyncIterator]().next());
    expect(o.message).toMatch(/event\.study: expected "alpha", got "beta"/);
    const noKind = connect(await hostile(valid, { study: 'alpha', t: Infinity, kind: undefined }));
    const k = await rejection(noKind.watch('alpha')[Symbol.asyncIterator]().next());
    expect(k.message).toMatch(/event\.t: expected a finite time/);
  });
});

// ------------------------------------------------------------------ security

describe('engine service: the token', () => {
  it('no token and a wrong token are UNAUTHENTICATED and run nothing; the right one passes', async () => {
    const { fake, server } = await serve({ token: TOKEN });
    const none = await rejection(connect(server.address).get('alpha'));
    expect(none).toBeInstanceOf(EngineAuthError);
    expect(none.message).toBe(
      `the engine at ${server.address} refused the call: this engine needs a token: send the ` +
        `metadata "authorization: Bearer <token>"; give the token it was started with`,
    );
    const wrong = await rejection(connect(server.address, { token: TOKEN + 'x' }).list());
    expect(wrong).toBeInstanceOf(EngineAuthError);
    expect(wrong.message).toMatch(/the token is wrong/);
    const watch = await rejection(
      connect(server.address, { token: 'short' }).watch('alpha')[Symbol.asyncIterator]().next(),
    );
    expect(watch).toBeInstanceOf(EngineAuthError);
    const submit = await rejection(
      connect(server.address).submit({ studyJson: '{"name":"x"}', baseDir: BASE, priority: 1 }),
    );
    expect(submit).toBeInstanceOf(EngineAuthError);
    expect(fake.calls).toEqual([]);
    expect(fake.submitted).toEqual([]);

    const right = connect(server.address, { token: TOKEN });
    expect((await right.get('alpha')).id).toBe('alpha');
    expect(fake.calls).toEqual(['get']);
  });

  it('metadata that is not exactly one "Bearer <token>" is refused', async () => {
    const { fake, server } = await serve({ token: TOKEN });
    const client = raw(server.address);
    // (Two values grpc-js refuses to send itself; the server refuses them too.)
    const variants: string[][] = [[TOKEN], [`bearer ${TOKEN}`], [`Basic ${TOKEN}`], ['Bearer ']];
    for (const values of variants) {
      const m = new Metadata();
      for (const v of values) m.add('authorization', v);
      const s = await rawStatus((cb) => client.get({ id: 'alpha' }, m, cb));
      expect(s.code, values.join(' + ')).toBe(status.UNAUTHENTICATED);
    }
    expect(fake.calls).toEqual([]);
  });

  it('refuses to serve off loopback without a token, before binding', async () => {
    const fake = new FakeEngine();
    for (const address of ['0.0.0.0:0', '[::]:0', '192.0.2.1:0', 'example.com:0']) {
      const e = await rejectionAs(
        startEngineServer({ address, api: fake, token: null, tls: null }),
        TokenRequiredError,
      );
      expect(e.code).toBe('STAGETREE_INSECURE');
      expect(e.message).toMatch(
        new RegExp(`^refusing to serve on ${address.replace(/[[\].]/g, '\\$&')} without a token`),
      );
    }
  });

  it('refuses a weak token', async () => {
    const e = await rejection(
      startEngineServer({
        address: '127.0.0.1:0',
        api: new FakeEngine(),
        token: 'short',
        tls: null,
      }),
    );
    expect(e).toBeInstanceOf(ValidationError);
    expect(e.message).toMatch(/^token: expected at least 16 visible ASCII characters/);
  });

  it('knows what loopback is', () => {
    for (const h of [
      '127.0.0.1',
      '127.1.2.3',
      '::1',
      '0:0:0:0:0:0:0:1',
      '::ffff:127.0.0.1',
      'localhost',
      'LocalHost',
    ])
      expect(isLoopback(h)).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'localhost.example.com', 'my-host'])
      expect(isLoopback(h)).toBe(false);
  });

  it('the client refuses to send a token in clear text off loopback', () => {
    expect(() => connectEngine('192.0.2.1:7000', { token: TOKEN })).toThrow(PlaintextTokenError);
    expect(() => connectEngine('example.com:7000', { token: TOKEN, tls: null })).toThrow(
      'refusing to send the token to example.com:7000 without TLS',
    );
    // Without a token, or over TLS, or on loopback, it may (connections are lazy).
    for (const c of [
      connectEngine('192.0.2.1:7000'),
      connectEngine('192.0.2.1:7000', { token: TOKEN, tls: {} }),
      connectEngine('localhost:7000', { token: TOKEN }),
      connectEngine('[::1]:7000', { token: TOKEN }),
    ])
      c.close();
  });
});

describe.skipIf(!hasOpenssl)(
  'engine service: TLS (a self-signed certificate made by openssl)',
  () => {
    let dir: string;
    let cert: Buffer;
    let key: Buffer;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'stagetree-tls-'));
      const made = selfSignedCertificate(dir);
      cert = readFileSync(made.cert);
      key = readFileSync(made.key);
    });
    afterAll(() => {
      rmSync(dir, { recursive: true, force: true });
    });

    it('a client trusting the certificate connects (with the token); others cannot', async () => {
      const { fake, server } = await serve({ token: TOKEN, tls: { cert, key } });
      const good = connect(server.address, { token: TOKEN, tls: { ca: cert } });
      expect((await good.get('alpha')).id).toBe('alpha');
      const it = good.watch('alpha')[Symbol.asyncIterator]();
      const next = it.next();
      await until(() => fake.subscribers('alpha') === 1);
      fake.emit({ kind: 'metric', study: 'alpha', t: 1, trial: 't1', step: 1, value: Number.NaN });
      expect((await next).value).toMatchObject({ kind: 'metric', step: 1 });
      await it.return?.();

      const untrusted = await rejection(
        connect(server.address, { token: TOKEN, tls: {} }).get('alpha'),
      );
      expect(untrusted).toBeInstanceOf(EngineUnavailableError);
      const plain = await rejection(connect(server.address, { deadlineSeconds: 5 }).get('alpha'));
      expect(plain).toBeInstanceOf(EngineUnavailableError);
      expect(fake.calls).toEqual(['get', 'watch']);
    });

    it('a certificate that is not one refuses to start', async () => {
      const e = await rejection(
        startEngineServer({
          address: '127.0.0.1:0',
          api: new FakeEngine(),
          token: null,
          tls: { cert: Buffer.from('not a certificate'), key },
        }),
      );
      expect(e).toBeInstanceOf(ValidationError);
      expect(e.message).toMatch(/^tls: expected a PEM certificate chain and its private key/);
    });
  },
);
