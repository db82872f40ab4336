import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, makeGenericClientConstructor } from '@grpc/grpc-js';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { checkTrainer, runStudy } from '../../src/cli/run.js';
import { ExecutionMode } from '../../src/engine/index.js';
import { EnvironmentError, ErrorCode, ResumeError, StoreBusyError } from '../../src/errors.js';
import { WorkerHubServiceClient } from '../../src/gen/stagetree/v1/worker.js';
import type { ConnectRequest } from '../../src/gen/stagetree/v1/worker.js';
import { startWorkerHub } from '../../src/rpc/index.js';
import { createTuner } from '../../src/tuner/index.js';
import { ProcessPool, runWithPool } from '../../src/workers/index.js';
import { retryDelay } from '../../src/workers/runner.js';
import { engineOptions } from '../../src/workers/sim/index.js';
import {
  alone,
  fromStore,
  quiet,
  ROOT,
  setup,
  stepsTrained,
  storedLog,
  storedMetrics,
  studyJson,
  TRAINER,
} from '../support/real-run.js';

/**
 * The hardening regressions (issue: every input hostile, every process accounted for):
 * each test drives a real run (worker processes, the gRPC hub, SQLite) into one of the
 * holes a prober found, and checks that the engine survives it, says what happened, and
 * that every healthy trial's metrics are still bit-identical to training it alone.
 */

const MISBEHAVING = join(ROOT, 'test', 'fixtures', 'misbehaving-trainer.mjs');
const FORGING = join(ROOT, 'test', 'fixtures', 'forging-worker.mjs');
const BIN = join(ROOT, 'bin', 'stagetree.js');

type Body = NonNullable<ConnectRequest['body']>;

const misbehaving = { kind: 'node', module: MISBEHAVING, export: 'MisbehavingTrainer' };

const ENV_KEYS = ['MISBEHAVE', 'MISBEHAVE_ABOVE_LR', 'MISBEHAVE_MS', 'MISBEHAVE_COUNT'];
afterEach(() => {
  for (const k of ENV_KEYS) Reflect.deleteProperty(process.env, k);
});

/** Switches a fault of the misbehaving trainer on for the workers this process starts. */
function misbehave(mode: string, vars: Record<string, string | number> = {}): void {
  process.env.MISBEHAVE = mode;
  for (const [k, v] of Object.entries(vars)) process.env[`MISBEHAVE_${k}`] = String(v);
}

async function waitFor(what: string, cond: () => boolean, seconds = 30): Promise<void> {
  const end = Date.now() + seconds * 1000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Direct children of a process (pgrep). */
function childPids(pid: number): number[] {
  const r = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number);
}

/** `stagetree run` as a separate process, as a user starts it. */
function spawnRun(file: string, db: string, env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [BIN, 'run', file, '--db', db], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
}

const doneCount = (db: string): number =>
  existsSync(db) ? storedLog(db).filter((e) => e.kind === 'done').length : 0;

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
  return { code, out, err };
}

describe('security: only workers this engine started take part', () => {
  it('ends the stream of a started worker that sends a result for a task it does not run', async () => {
    const { study, dir } = setup(studyJson({ workers: 1 }));
    const socketDir = join(dir, 'hub');
    mkdirSync(socketDir, { mode: 0o700 });
    let pool: ProcessPool | null = null;
    const hub = await startWorkerHub({
      socket: join(socketDir, 'hub.sock'),
      admit: (r) => (pool ? pool.admit(r) : { code: 'unauthenticated', message: 'not yet' }),
      onConnect: (c) => pool?.attach(c),
    });
    try {
      pool = new ProcessPool({
        // The first worker lies; the ones that replace it are real.
        command: (id) =>
          id === 'w1'
            ? { file: process.execPath, args: [FORGING], env: {} }
            : {
                file: process.execPath,
                args: [join(ROOT, 'dist', 'cli', 'worker.js')],
                env: {
                  STAGETREE_TRAINER_MODULE: join(ROOT, 'dist', 'trainer', 'quadratic.js'),
                  STAGETREE_TRAINER_EXPORT: 'QuadraticTrainer',
                },
              },
        engineAddress: hub.address,
        gpus: false,
        welcome: { kind: 'welcome', checkpointDir: join(dir, 'ck'), heartbeatSeconds: 1 },
        log: quiet,
      });
      const entries: { kind: string; reason?: string }[] = [];
      const metrics = new Map<string, number>();
      const result = await runWithPool({
        study,
        tuner: createTuner(study),
        engine: { ...engineOptions(study, ExecutionMode.stageTree), durable: true },
        pool,
        clock: () => performance.now() / 1000,
        sink: (batch) => {
          for (const e of batch) {
            entries.push(e.kind === 'lost' ? { kind: e.kind, reason: e.reason } : e);
            if (e.kind === 'metric') metrics.set(`${e.trial}@${e.step}`, e.value);
          }
        },
      });
      expect(result.stopped).toBeNull();
      expect(result.protocolViolations).toBe(1);
      // The liar's stream was ended with the reason, it was lost once, and its forged
      // metric (-1000) reached nothing: every trial's metrics are the real ones.
      expect(entries.filter((e) => e.kind === 'lost')).toEqual([
        {
          kind: 'lost',
          reason: expect.stringMatching(
            /^its stream ended \(done for task \d+, which is not running on this worker\)$/,
          ) as unknown,
        },
      ]);
      expect(metrics).toEqual(await alone(study));
    } finally {
      await hub.close();
    }
  });

  it('refuses forged, duplicate, out-of-order, oversized and garbage streams during a real run', async () => {
    const { file, study, dir } = setup(studyJson({}, { stepDelayMs: 25 }));
    const outcomes: { attack: string; code: number | null; gotData: boolean }[] = [];
    const idle: { cancel(): void }[] = [];
    let attacks: Promise<void> | null = null;
    const attack = (address: string, name: string, body: Body | Buffer): Promise<void> =>
      new Promise((resolve) => {
        let gotData = false;
        let finished = false;
        const finish = (code: number | null): void => {
          if (finished) return;
          finished = true;
          outcomes.push({ attack: name, code, gotData });
          resolve();
        };
        if (Buffer.isBuffer(body)) {
          const Raw = makeGenericClientConstructor(
            {
              connect: {
                path: '/stagetree.v1.WorkerHubService/Connect',
                requestStream: true,
                responseStream: true,
                requestSerialize: (b: Buffer) => b,
                requestDeserialize: (b: Buffer) => b,
                responseSerialize: (b: Buffer) => b,
                responseDeserialize: (b: Buffer) => b,
              },
            },
            'Raw',
          );
          const client = new Raw(address, credentials.createInsecure());
          const call = (
            client as unknown as { connect(): ClientDuplexStream<Buffer, Buffer> }
          ).connect();
          call.on('data', () => (gotData = true));
          call.on('error', (e: { code: number }) => finish(e.code));
          call.on('end', () => finish(null));
          call.write(body);
          return;
        }
        const client = new WorkerHubServiceClient(address, credentials.createInsecure(), {
          'grpc.max_send_message_length': 64 * 1024 * 1024,
        });
        const call = client.connect();
        call.on('data', () => (gotData = true));
        call.on('error', (e: { code: number }) => finish(e.code));
        call.on('end', () => finish(null));
        call.write({ body });
      });
    const register = (workerId: string, secret: string, holds = ''): Body => ({
      $case: 'register',
      value: {
        workerId,
        language: 'typescript',
        protocol: 'stagetree.v1',
        pid: 1,
        gpus: [],
        gpuShare: 1,
        holds,
        secret,
      },
    });
    const out = await runStudy(
      file,
      study,
      { db: join(dir, 'h.db') },
      {
        log: quiet,
        onEvent: (e, pool) => {
          if (attacks !== null || e.kind !== 'done') return;
          // A worker has registered and finished a task: attack now.
          const address = pool.engineAddress;
          const pid = pool.pid('w1') as number;
          const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
          const stolen = (
            environ.find((v) => v.startsWith('STAGETREE_WORKER_SECRET=')) ?? '='
          ).split('=')[1] as string;
          for (let i = 0; i < 200; i++) {
            const call = new WorkerHubServiceClient(
              address,
              credentials.createInsecure(),
            ).connect();
            call.on('error', () => undefined);
            idle.push(call);
          }
          attacks = Promise.all([
            attack(address, 'forged secret', register('w1', 'Zm9yZ2Vk')),
            attack(address, 'no secret', register('w2', '')),
            attack(address, 'unknown worker', register('w99', stolen)),
            attack(address, 'stolen secret, worker connected', register('w1', stolen)),
            attack(address, 'heartbeat first', { $case: 'heartbeat', value: { taskId: 0 } }),
            attack(address, 'oversized', register('w1', stolen, 'K'.repeat(17 * 1024 * 1024))),
            attack(address, 'garbage', Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])),
          ]).then(() => undefined);
        },
      },
    );
    const launched = attacks as Promise<void> | null;
    expect(launched).not.toBeNull();
    await launched;
    for (const c of idle) c.cancel();
    const code = new Map(outcomes.map((o) => [o.attack, o.code]));
    expect(Object.fromEntries(code)).toEqual({
      'forged secret': 16, // UNAUTHENTICATED
      'no secret': 16,
      'unknown worker': 16,
      'stolen secret, worker connected': 6, // ALREADY_EXISTS
      'heartbeat first': 9, // FAILED_PRECONDITION
      oversized: 8, // RESOURCE_EXHAUSTED
      garbage: 13, // INTERNAL: the request does not parse
    });
    // Nobody refused was welcomed (the welcome names the checkpoint folder).
    expect(outcomes.filter((o) => o.gotData)).toEqual([]);
    expect(out.status.finished).toBe(true);
    expect(storedLog(out.paths.db).filter((e) => e.kind === 'lost')).toEqual([]);
    expect(storedMetrics(out.paths.db)).toEqual(await alone(study));
  });
});

describe('the store: one engine at a time, and a log that never strands a study', () => {
  it('refuses a second run of a study while one runs, and takes over from a dead one', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 1 }, { stepDelayMs: 30 }));
    const db = join(dir, 'lock.db');
    const first = spawnRun(file, db);
    await waitFor('a completed stage', () => doneCount(db) >= 1);
    await expect(runStudy(file, study, { db }, { log: quiet })).rejects.toThrow(StoreBusyError);
    const r = await cli('run', file, '--db', db);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      new RegExp(
        `^error ${ErrorCode.busy}: study quadratic is being run by pid ${first.pid} since \\d{4}-`,
      ),
    );
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.resumed).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });

  it('stops a resume whose log does not replay, and --restart goes on reusing trained states', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 1 }, { stepDelayMs: 20 }));
    const db = join(dir, 'replay.db');
    const child = spawnRun(file, db);
    await waitFor('three completed stages', () => doneCount(db) >= 3);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // Damage the log: the first task now names a worker the engine never chose.
    const raw = new Database(db);
    const first = raw
      .prepare(`SELECT seq, json FROM events WHERE kind = 'task' ORDER BY seq LIMIT 1`)
      .get() as {
      seq: number;
      json: string;
    };
    raw
      .prepare('UPDATE events SET json = ? WHERE seq = ?')
      .run(first.json.replace('"w1"', '"w9"'), first.seq);
    raw.close();
    await expect(runStudy(file, study, { db }, { log: quiet })).rejects.toThrow(ResumeError);
    const r = await cli('run', file, '--db', db);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^error STAGETREE_RESUME: the stored log of study quadratic does not replay: at event \d+ the log has .*"w9".* --restart/s,
    );
    const out = await runStudy(file, study, { db }, { log: quiet, restart: true });
    expect(out.status.finished).toBe(true);
    expect(out.reused).toBeGreaterThan(0);
    const log = storedLog(db);
    expect(log.filter((e) => e.kind === 'reuse').length).toBe(out.reused);
    // The whole tree is 60 steps; the restart trained less, since reused stages were not trained.
    expect(stepsTrained(log)).toBeLessThan(60);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });

  it('detects two valid checkpoint files swapped between a kill and a resume', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 1 }, { stepDelayMs: 20 }));
    const db = join(dir, 'swap.db');
    const child = spawnRun(file, db);
    await waitFor('four completed stages', () => doneCount(db) >= 4);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const ck = join(dir, '.stagetree', 'quadratic-checkpoints');
    const files = readdirSync(ck).filter((f) => f.endsWith('.ckpt'));
    expect(files.length).toBeGreaterThanOrEqual(2);
    // Rotate every file's content to the next name: each file is valid, under a wrong key.
    const contents = files.map((f) => readFileSync(join(ck, f)));
    files.forEach((f, i) => writeFileSync(join(ck, f), contents[(i + 1) % files.length] as Buffer));
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.status.finished).toBe(true);
    expect(storedLog(db).some((e) => e.kind === 'fail' && e.reason === 'checkpoint')).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });

  it('identifies a trainer by the hash of its file, or by the version the study declares', () => {
    const declared = setup(
      studyJson({
        trainer: { kind: 'node', module: TRAINER, export: 'QuadraticTrainer', version: 'v7' },
      }),
    );
    expect(checkTrainer(declared.file, declared.study)).toBe('version:v7');
    const plain = setup(studyJson());
    expect(checkTrainer(plain.file, plain.study)).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it('refuses to resume with changed trainer code, and resumes with the old code back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-code-'));
    const trainer = join(dir, 'trainer.js');
    copyFileSync(join(ROOT, 'dist', 'trainer', 'quadratic.js'), trainer);
    const { file, study } = setup(
      studyJson(
        { workers: 1, trainer: { kind: 'node', module: trainer, export: 'QuadraticTrainer' } },
        { stepDelayMs: 20 },
      ),
    );
    const db = join(dir, 'code.db');
    const child = spawnRun(file, db);
    await waitFor('a completed stage', () => doneCount(db) >= 1);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    appendFileSync(trainer, '\n// changed\n');
    await expect(runStudy(file, study, { db }, { log: quiet })).rejects.toThrow(
      /the trainer of study quadratic changed since it started \(sha256:[0-9a-f]{64} then, sha256:[0-9a-f]{64} now\)/,
    );
    // Nothing was lost: with the old code back it resumes.
    const original = readFileSync(trainer, 'utf8').replace('\n// changed\n', '');
    writeFileSync(trainer, original);
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.resumed).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });
});

describe('liveness: every task ends, every process is accounted for', () => {
  it('fails a task that hangs past its time limit, retries it, and finishes the others', async () => {
    misbehave('hang', { ABOVE_LR: 0.03 });
    const { file, study, dir } = setup(
      studyJson({ trainer: misbehaving, taskTimeout: 2, retries: 1 }),
    );
    const out = await runStudy(file, study, { db: join(dir, 't.db') }, { log: quiet });
    expect(out.status.finished).toBe(true);
    expect(out.status.failed.map((f) => f.message)).toEqual([
      expect.stringMatching(/^timed out after 2 s/),
      expect.stringMatching(/^timed out after 2 s/),
    ]);
    const fails = storedLog(out.paths.db).filter((e) => e.kind === 'fail');
    expect(fails.length).toBe(2); // the first try and its one retry
    const expected = await alone(study);
    const got = storedMetrics(out.paths.db);
    let checked = 0;
    for (const [k, v] of got) {
      expect(v).toBe(expected.get(k));
      checked++;
    }
    expect(checked).toBe(8); // the two lr 0.02 trials, 4 reports each
  });

  it('keeps heart-beating while a trainer holds its thread with synchronous work', async () => {
    // Each stage at lr 0.05 holds the trainer's thread for 5 s; heartbeats must still
    // come at least every 3 s (before the fix they stopped for the whole 5 s).
    misbehave('busy', { ABOVE_LR: 0.03, MS: 5000 });
    const { file, study, dir } = setup(studyJson({ trainer: misbehaving, workers: 1 }));
    const out = await runStudy(
      file,
      study,
      { db: join(dir, 'b.db') },
      { log: quiet, heartbeatTimeout: 3 },
    );
    expect(out.status.finished).toBe(true);
    expect(storedLog(out.paths.db).filter((e) => e.kind === 'lost')).toEqual([]);
    expect(storedMetrics(out.paths.db)).toEqual(await alone(study));
  });

  it('ends every worker within seconds of the engine being SIGKILLed, even a blocked one', async () => {
    const { file, dir } = setup(studyJson({ trainer: misbehaving }));
    const db = join(dir, 'k.db');
    const engine = spawnRun(file, db, { MISBEHAVE: 'busy', MISBEHAVE_MS: '60000' });
    await waitFor('two workers', () => childPids(engine.pid as number).length >= 2);
    await waitFor(
      'tasks sent',
      () => existsSync(db) && storedLog(db).some((e) => e.kind === 'task'),
    );
    await new Promise((r) => setTimeout(r, 1500)); // the trainers now block their threads
    const workers = childPids(engine.pid as number);
    expect(workers.length).toBe(2);
    engine.kill('SIGKILL');
    await new Promise((r) => engine.once('exit', r));
    await waitFor('the workers to exit', () => workers.every((p) => !alive(p)), 5);
  });

  it('on SIGTERM starts no new work, leaves no process behind, and resumes', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 2 }, { stepDelayMs: 20 }));
    const db = join(dir, 'term.db');
    const engine = spawnRun(file, db);
    let stderr = '';
    engine.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitFor('two completed stages', () => doneCount(db) >= 2);
    const workers = childPids(engine.pid as number);
    expect(workers.length).toBeGreaterThan(0);
    engine.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => engine.once('exit', (c) => r(c)));
    expect(code).toBe(130);
    expect(stderr).toMatch(/SIGTERM, stopping workers/);
    await waitFor('the workers to exit', () => workers.every((p) => !alive(p)), 5);
    // No replacement workers were started and no worker was logged as lost.
    expect(storedLog(db).filter((e) => e.kind === 'lost')).toEqual([]);
    const status = await cli('status', file, '--db', db);
    expect(status.out).toMatch(
      /not finished.*\n[\s\S]*stopped: interrupted \(the engine got SIGTERM\)/,
    );
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.status.finished).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });
});

describe('bad input from trainers: a clear error, only the trials concerned affected', () => {
  it('stores NaN metrics of a diverged trial and finishes the others exactly', async () => {
    misbehave('nan', { ABOVE_LR: 0.03 });
    const { file, study, dir } = setup(studyJson({ trainer: misbehaving }));
    const out = await runStudy(file, study, { db: join(dir, 'n.db') }, { log: quiet });
    expect(out.status.finished).toBe(true);
    expect(out.status.trials.failed).toBe(0);
    expect(storedLog(out.paths.db).filter((e) => e.kind === 'lost')).toEqual([]);
    const expected = await alone(study);
    const got = storedMetrics(out.paths.db);
    // A stage that starts at lr 0.05 evaluates to NaN: trials 3 (milestone 10) and 4
    // (milestone 15) before their milestone (grid order: init, then milestone).
    const diverged = new Set(['t3@5', 't3@10', 't4@5', 't4@10', 't4@15']);
    let nan = 0;
    let exact = 0;
    for (const [k, v] of expected) {
      if (diverged.has(k)) {
        expect(got.get(k)).toBeNaN();
        nan++;
      } else {
        expect(got.get(k)).toBe(v);
        exact++;
      }
    }
    expect([nan, exact]).toEqual([5, 11]);
    expect(out.status.best?.value).not.toBeNaN();
  });

  it('turns a result over the message limit, a huge error and a non-Error throw into clear failures', async () => {
    const cases: [string, Record<string, string | number>, RegExp][] = [
      [
        'metrics',
        { COUNT: 1_000_000 },
        /^message of \d+ bytes exceeds the limit of 16777216 bytes \(evaluate\(\) returned 1000001 metrics\)$/,
      ],
      ['bigerror', { COUNT: 8_000_000 }, /^x{4000,}.* \[\d+ more characters cut\]$/],
      ['object', {}, /^object thrown: \{"code":42,"why":"a plain object"\}$/],
    ];
    let checked = 0;
    for (const [mode, vars, message] of cases) {
      misbehave(mode, { ABOVE_LR: 0.03, ...vars });
      const { file, study, dir } = setup(studyJson({ trainer: misbehaving, retries: 0 }));
      const out = await runStudy(file, study, { db: join(dir, `${mode}.db`) }, { log: quiet });
      expect(out.status.finished).toBe(true);
      expect(out.status.failed.length).toBe(2);
      for (const f of out.status.failed) {
        expect(f.message).toMatch(message);
        expect(f.message.length).toBeLessThanOrEqual(4096);
        checked++;
      }
      expect(storedLog(out.paths.db).filter((e) => e.kind === 'lost')).toEqual([]);
      const expected = await alone(study);
      for (const [k, v] of storedMetrics(out.paths.db)) expect(v).toBe(expected.get(k));
    }
    expect(checked).toBe(6);
  });

  it('passes on every line a trainer prints', async () => {
    misbehave('print', { COUNT: 240_000 });
    const { file, study, dir } = setup(
      studyJson({ trainer: misbehaving, workers: 1, space: { lr: 0.05 }, evalEvery: 20 }),
    );
    let lines = 0;
    const out = await runStudy(
      file,
      study,
      { db: join(dir, 'p.db') },
      { log: (_w, line) => (lines += line.startsWith('line ') ? 1 : 0) },
    );
    expect(out.status.finished).toBe(true);
    expect(lines).toBe(240_000);
  });
});

describe('environment failures: a clear error, a non-zero exit, a resumable study', () => {
  it('checks that the trainer loads before the study starts, and says why it does not', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-load-'));
    const module = join(dir, 'later.js');
    const { file, study } = setup(
      studyJson({ trainer: { kind: 'node', module, export: 'QuadraticTrainer' } }),
    );
    const db = join(dir, 'load.db');
    await expect(runStudy(file, study, { db }, { log: quiet })).rejects.toThrow(EnvironmentError);
    const r = await cli('run', file, '--db', db);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^error STAGETREE_ENVIRONMENT: the node trainer .*later\.js .* cannot be loaded: /,
    );
    const status = await cli('status', file, '--db', db);
    expect(status.out).toMatch(/not finished[\s\S]*stopped: the node trainer .* cannot be loaded/);
    // Fixed: the same study runs.
    copyFileSync(join(ROOT, 'dist', 'trainer', 'quadratic.js'), module);
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.status.finished).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });

  it('stops resumable when the checkpoint folder becomes unusable mid-run', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 1 }, { stepDelayMs: 20 }));
    const db = join(dir, 'ro.db');
    const ck = join(dir, 'ck');
    let broken = false;
    const out = await runStudy(
      file,
      study,
      { db, checkpoints: ck },
      {
        log: quiet,
        onEvent: (e) => {
          if (!broken && e.kind === 'done') {
            broken = true;
            renameSync(ck, `${ck}.away`);
            writeFileSync(ck, 'a file where the folder was');
          }
        },
      },
    );
    expect(broken).toBe(true);
    expect(out.stopped?.kind).toBe('environment');
    expect(out.status.finished).toBe(false);
    const r = await cli('run', file, '--db', db, '--checkpoints', ck);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(new RegExp(`^error ${ErrorCode.io}: ${ck}: `));
    rmSync(ck);
    renameSync(`${ck}.away`, ck);
    const again = await runStudy(file, study, { db, checkpoints: ck }, { log: quiet });
    expect(again.status.finished).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
  });

  it('runs a CPU-only study (resources.gpus 0) and says no GPU was used', async () => {
    const { file, study, dir } = setup(studyJson({ resources: { gpus: 0 } }));
    const db = join(dir, 'cpu.db');
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.status.finished).toBe(true);
    expect(storedMetrics(db)).toEqual(await alone(study));
    const status = await cli('status', file, '--db', db);
    expect(status.out).toMatch(/no GPU was used/);
  });

  it('backs off between retries of a failing stage and stores phase seconds', async () => {
    const { file, study, dir } = setup(studyJson({ retries: 3 }, { failAboveLr: 0.03 }));
    const out = await runStudy(file, study, { db: join(dir, 'r.db') }, { log: quiet });
    const attempts = fromStore(out.paths.db, (s) => s.attempts());
    const failed = attempts.filter((a) => a.outcome === 'failed').map((a) => a.endedAt as number);
    expect(failed.length).toBe(4);
    for (let i = 1; i < failed.length; i++) {
      expect((failed[i] as number) - (failed[i - 1] as number)).toBeGreaterThanOrEqual(
        retryDelay(i) - 0.01,
      );
    }
    const done = attempts.filter((a) => a.outcome === 'done');
    expect(done.length).toBeGreaterThan(0);
    for (const a of done) expect(a.seconds.train).toBeGreaterThan(0);
    expect(out.status.attempts.phaseSeconds.train).toBeGreaterThan(0);
    // GPU time counts every attempt's wall time (share 1 here), the failed ones too: at
    // least the time the workers spent training, plus the failed attempts' time.
    const failedWall = attempts
      .filter((a) => a.outcome === 'failed')
      .reduce((n, a) => n + ((a.endedAt as number) - a.startedAt), 0);
    expect(out.status.gpuSeconds).toBeGreaterThan(
      (out.status.attempts.phaseSeconds.train as number) + 0.5 * failedWall,
    );
  });
});
