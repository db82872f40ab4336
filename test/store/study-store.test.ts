import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { ExecutionMode, replay } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import {
  AttemptEndedError,
  ConflictError,
  ErrorCode,
  IoError,
  LogConflictError,
  NotAStoreError,
  NotFoundError,
  StagetreeError,
  StudyMismatchError,
  ValidationError,
} from '../../src/errors.js';
import {
  MAX_DETAIL_CHARS,
  MAX_ERROR_CHARS,
  MIGRATIONS,
  StudyStore,
} from '../../src/store/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { createTuner } from '../../src/tuner/index.js';
import { engineOptions, simulate } from '../../src/workers/sim/index.js';
import { BATCH, metric, propose, useTempDirs } from './helpers.js';

const tempDir = useTempDirs();
const storeFile = () => join(tempDir(), 'study.db');

function ashaStudy(overrides: Record<string, unknown> = {}): Study {
  return parseStudy({
    name: 'asha-small',
    params: { model: 'resnet20', seed: 0 },
    space: {
      lr: { kind: 'multistep', init: { loguniform: [0.01, 0.5] }, factor: 0.1, milestones: [30] },
      momentum: 0.9,
    },
    steps: 40,
    evalEvery: 10,
    tuner: { kind: 'asha', trials: 12, eta: 3, minSteps: 10, seed: 4 },
    metric: { name: 'accuracy', mode: 'max' },
    trainer: { kind: 'sim', stepSeconds: 2, startSeconds: 5, saveSeconds: 0.5, loadSeconds: 0.2 },
    workers: 3,
    ...overrides,
  });
}

/** A store with a `min` study, as most tests want. */
function minStore(file = storeFile()): StudyStore {
  const store = StudyStore.open(file);
  store.initStudy('s', { name: 's', steps: 30, metric: { name: 'loss', mode: 'min' } }, 100);
  return store;
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

describe('StudyStore: file and schema', () => {
  it('creates the file (and folder) in WAL mode at the current schema version', () => {
    const file = join(tempDir(), 'nested', 'dir', 'study.db');
    const store = StudyStore.open(file);
    expect(store.file).toBe(file);
    expect(() => store.study()).toThrow(NotFoundError);
    store.close();
    store.close(); // harmless
    const db = new Database(file, { readonly: true });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    const tables = db
      .prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
      .pluck()
      .all();
    expect(tables).toEqual([
      'archived_events',
      'attempt_studies',
      'attempts',
      'events',
      'metrics',
      'owner',
      'stages',
      'studies',
      'trials',
    ]);
    db.close();
  });

  it('refuses an SQLite file that is not a study store, and a file that is not SQLite', () => {
    const other = storeFile();
    const db = new Database(other);
    db.exec('CREATE TABLE users (id INTEGER)');
    db.close();
    const e = caught(() => StudyStore.open(other));
    expect(e).toBeInstanceOf(NotAStoreError);
    expect(e).toBeInstanceOf(ConflictError);
    expect(e).toMatchObject({ code: ErrorCode.conflict, file: other });
    expect((e as NotAStoreError).found).toBe(
      'an SQLite database with 1 table and no stagetree schema',
    );
    expect((e as Error).message).toContain(other);
    expect((e as Error).message).toContain('not a stagetree study store');

    const text = join(tempDir(), 'study.json');
    writeFileSync(text, JSON.stringify({ name: 'oops', and: 'some more text'.repeat(100) }));
    const e2 = caught(() => StudyStore.open(text));
    expect(e2).toBeInstanceOf(NotAStoreError);
    expect(e2).toMatchObject({ code: ErrorCode.conflict, file: text });
    expect((e2 as Error).message).toContain(text);
  });

  it('refuses a file written by a newer schema', () => {
    const file = storeFile();
    StudyStore.open(file).close();
    const db = new Database(file);
    db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    db.close();
    const e = caught(() => StudyStore.open(file));
    expect((e as { code: string }).code).toBe(ErrorCode.unsupported);
    expect((e as Error).message).toMatch(/newer than this stagetree knows/);
  });
});

describe('StudyStore: the study', () => {
  it('stores canonical JSON and resumes only the same study', () => {
    const file = storeFile();
    const study = ashaStudy();
    const a = StudyStore.open(file);
    expect(() => a.study()).toThrow(NotFoundError);
    expect(a.initStudy(study.name, study, 1000)).toBe('created');
    const { json } = a.study();
    expect(JSON.parse(json)).toEqual(JSON.parse(JSON.stringify(study)));
    expect(json.startsWith('{"checkpointEvery":')).toBe(true); // sorted keys
    a.close();

    // The same study, its keys in another order: a resume.
    const b = StudyStore.open(file);
    const reordered = Object.fromEntries(Object.entries(study).reverse());
    expect(b.initStudy(study.name, reordered, 2000)).toBe('resumed');
    expect(b.study()).toEqual({ name: study.name, json, createdAt: 1000, updatedAt: 2000 });

    // A different one: a StudyMismatchError naming the file and the field.
    const e = caught(() => b.initStudy(study.name, ashaStudy({ steps: 50 }), 3000));
    expect(e).toBeInstanceOf(StudyMismatchError);
    expect(e).toBeInstanceOf(ConflictError);
    expect(e).toMatchObject({
      code: ErrorCode.conflict,
      file,
      storedName: study.name,
      path: 'steps',
      stored: '40 (number)',
      given: '50 (number)',
    });
    const msg = (e as Error).message;
    expect(msg).toContain(file);
    expect(msg).toContain('first difference at steps: stored 40 (number), given 50 (number)');
    expect(b.study().json).toBe(json);
    expect(b.study().updatedAt).toBe(2000);

    // Another name is another study of the same file; the first stays the primary.
    expect(b.initStudy('renamed', study, 3000)).toBe('created');
    expect(b.studyNames()).toEqual([study.name, 'renamed']);
    expect(b.study().name).toBe(study.name);
    expect(b.study('renamed')).toEqual({ name: 'renamed', json, createdAt: 3000, updatedAt: 3000 });
    b.close();
  });

  it('rejects a study without a metric mode, and values JSON cannot hold', () => {
    const store = StudyStore.open(storeFile());
    expect(() => store.initStudy('x', { metric: { name: 'loss' } }, 0)).toThrow(
      /study\.metric\.mode: expected "min" or "max"/,
    );
    expect(() =>
      store.initStudy('x', { metric: { name: 'loss', mode: 'min' }, steps: Number.NaN }, 0),
    ).toThrow(ValidationError);
    expect(() => store.study()).toThrow(NotFoundError);
    expect(() => store.append([propose(0, 't1', 10)])).toThrow(/initStudy first/);
    store.close();
  });
});

describe('StudyStore: the event log', () => {
  it('round-trips a simulated study log, which replays to the same decisions', () => {
    const study = ashaStudy();
    const sim = simulate(study, ExecutionMode.stageTree);
    expect(sim.log.length).toBeGreaterThan(50);
    const file = storeFile();
    const store = StudyStore.open(file);
    store.initStudy(study.name, study, 0);
    // In uneven batches, as a run appends after each engine step.
    for (let i = 0; i < sim.log.length; i += 7) store.append(sim.log.slice(i, i + 7));
    store.close();

    const again = StudyStore.open(file);
    const events = again.events();
    expect(events).toEqual(sim.log);
    expect(again.eventCount()).toBe(sim.log.length);
    expect(JSON.parse(again.study().json)).toEqual(JSON.parse(JSON.stringify(study)));
    const r = replay(
      study,
      events,
      createTuner(study),
      engineOptions(study, ExecutionMode.stageTree),
    );
    expect(r.sameLog).toBe(true);

    // The derived tables agree with the log.
    const proposed = sim.log.filter((e) => e.kind === 'propose' || e.kind === 'fork');
    const trials = again.trials();
    expect(trials.map((t) => t.id)).toEqual(proposed.map((e) => e.trial));
    const metrics = sim.log.filter((e) => e.kind === 'metric');
    expect(again.metrics()).toHaveLength(metrics.length);
    const status = again.status();
    expect(status.finished).toBe(sim.log.some((e) => e.kind === 'finish'));
    expect(status.best?.value).toBe(sim.best?.metric);
    expect(status.trials.total).toBe(proposed.length);
    again.close();
  });

  it('reads what another, still open, store on the same file committed', () => {
    const file = storeFile();
    const early = StudyStore.open(file); // opened before the study exists
    const writer = minStore(file);
    writer.append([propose(1, 't1', 30), metric(2, 't1', 10, 0.5)]);
    expect(early.status().best).toEqual({ trial: 't1', step: 10, value: 0.5 });
    early.close();
    const reader = StudyStore.open(file); // the writer is neither closed nor checkpointed
    expect(reader.events()).toHaveLength(2);
    expect(reader.trial('t1').best).toEqual({ step: 10, value: 0.5 });
    writer.append([metric(3, 't1', 20, 0.25)]);
    expect(reader.eventCount()).toBe(3);
    expect(
      reader.initStudy('s', { name: 's', steps: 30, metric: { name: 'loss', mode: 'min' } }, 5),
    ).toBe('resumed');
    reader.close();
    writer.close();
  });

  it('keeps every committed batch whole when the writing process is killed', async () => {
    const file = storeFile();
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(new URL('./writer.ts', import.meta.url)), file],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let committed = 0;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const lines = out.split('\n').filter((l) => l !== '');
        committed = Number(lines[lines.length - 1]);
        if (lines.length >= 25 && child.exitCode === null) child.kill('SIGKILL');
      });
      child.on('exit', (code, signal) => {
        if (signal === 'SIGKILL') resolve();
        else reject(new Error(`writer exited with ${code}: ${stderr}`));
      });
    });
    expect(existsSync(`${file}-wal`)).toBe(true); // killed before any clean close

    const store = StudyStore.open(file);
    const events = store.events();
    expect(events.length).toBeGreaterThanOrEqual(committed);
    expect(events.length % BATCH).toBe(0); // no half batch
    const trials = store.trials();
    expect(trials).toHaveLength(events.length / 2);
    expect(store.metrics()).toHaveLength(events.length / 2);
    expect(trials.every((t) => t.best !== null && t.status === 'active')).toBe(true);
    expect(store.status().best).toEqual({ trial: 't1', step: 10, value: 0 });
    store.close();
  });

  it('stores NaN and infinite metrics losslessly; NaN is never best', () => {
    const file = storeFile();
    const store = minStore(file);
    const log: LogEntry[] = [
      propose(0, 't1', 30),
      metric(1, 't1', 10, Number.NaN),
      metric(2, 't1', 20, Number.POSITIVE_INFINITY),
      metric(3, 't1', 30, 2.5),
      propose(4, 't2', 30),
      metric(5, 't2', 10, Number.NEGATIVE_INFINITY),
      { t: 6, kind: 'done', task: 3, metric: Number.NaN },
    ];
    store.append(log);
    store.close();
    const again = StudyStore.open(file);
    expect(again.events()).toEqual(log);
    expect(again.metrics('t1').map((m) => m.value)).toEqual([Number.NaN, Infinity, 2.5]);
    expect(again.trial('t1').best).toEqual({ step: 30, value: 2.5 });
    expect(again.trial('t2').best).toEqual({ step: 10, value: -Infinity });
    expect(again.status().best).toEqual({ trial: 't2', step: 10, value: -Infinity });
    again.close();
  });

  it('rejects a batch that contradicts the log, and writes none of it', () => {
    const store = minStore();
    store.append([propose(0, 't1', 30)]);
    const bad = caught(() => store.append([propose(1, 't2', 30), metric(2, 't9', 10, 1)]));
    expect(bad).toBeInstanceOf(LogConflictError);
    expect(bad).toBeInstanceOf(ConflictError);
    expect(bad).toMatchObject({ entry: 'entries[1].trial', trial: 't9', problem: 'unknown' });
    expect((bad as Error).message).toContain('entries[1].trial names trial "t9"');
    const twice = caught(() => store.append([propose(1, 't1', 30)]));
    expect(twice).toMatchObject({ trial: 't1', problem: 'duplicate' });
    expect((twice as Error).message).toMatch(/already has/);
    expect(() => store.append([{ t: Number.NaN, kind: 'finish' }])).toThrow(
      /entries\[0\]\.t: expected a finite number/,
    );
    expect(() => store.append([metric(1, 't1', -1, 0)])).toThrow(/entries\[0\]\.step/);
    expect(store.eventCount()).toBe(1);
    expect(store.trials().map((t) => t.id)).toEqual(['t1']);
    store.close();
  });
});

describe('StudyStore: trials and metrics follow the events', () => {
  it('propose, metric, extend, fork, stop, fail', () => {
    const store = minStore();
    store.append([propose(0, 't1', 10), propose(0, 't2', 10), metric(5, 't1', 10, 0.5)]);
    store.append([
      metric(5, 't2', 10, 0.7),
      { t: 6, kind: 'extend', trial: 't1', until: 30, reports: [20] },
      metric(8, 't1', 20, 0.3),
      metric(9, 't1', 30, 0.4),
      { t: 9, kind: 'stop', trial: 't2' },
      {
        t: 9,
        kind: 'fork',
        trial: 't3',
        source: 't1',
        at: 20,
        schedules: {},
        until: 30,
        reports: [],
      },
    ]);
    expect(store.trials()).toEqual([
      {
        id: 't1',
        seq: 1,
        status: 'active',
        until: 30,
        forkOf: null,
        best: { step: 20, value: 0.3 },
        lastStep: 30,
        error: null,
      },
      {
        id: 't2',
        seq: 2,
        status: 'stopped',
        until: 10,
        forkOf: null,
        best: { step: 10, value: 0.7 },
        lastStep: 10,
        error: null,
      },
      {
        id: 't3',
        seq: 9,
        status: 'active',
        until: 30,
        forkOf: { trial: 't1', at: 20 },
        best: null,
        lastStep: null,
        error: null,
      },
    ]);
    expect(store.metrics('t1')).toEqual([
      { trial: 't1', step: 10, value: 0.5 },
      { trial: 't1', step: 20, value: 0.3 },
      { trial: 't1', step: 30, value: 0.4 },
    ]);

    // As the engine logs a failure: the trial fails, then it is stopped (and stays failed).
    store.append([
      { t: 10, kind: 'fail', task: 4, message: 'CUDA out of memory', reason: 'trainer' },
      { t: 10, kind: 'trialFailed', trial: 't3', message: 'CUDA out of memory' },
      { t: 10, kind: 'stop', trial: 't3' },
      { t: 11, kind: 'lost', worker: 'w2', reason: 'heartbeat timeout' },
    ]);
    expect(store.trial('t3')).toMatchObject({ status: 'failed', error: 'CUDA out of memory' });
    expect(
      store
        .events()
        .slice(-4)
        .map((e) => e.kind),
    ).toEqual(['fail', 'trialFailed', 'stop', 'lost']);
    // A failure of a trial the log never proposed rolls its batch back.
    expect(() => store.append([{ t: 12, kind: 'trialFailed', trial: 't7', message: 'x' }])).toThrow(
      LogConflictError,
    );
    expect(() => store.trial('t7')).toThrow(NotFoundError);
    store.close();
  });

  it('takes the metric mode from the stored study', () => {
    const store = StudyStore.open(storeFile());
    store.initStudy('m', { metric: { name: 'acc', mode: 'max' } }, 0);
    store.append([propose(0, 't1', 20), metric(1, 't1', 10, 0.5), metric(2, 't1', 20, 0.4)]);
    expect(store.trial('t1').best).toEqual({ step: 10, value: 0.5 });
    store.close();
  });
});

describe('StudyStore: attempts and status', () => {
  it('summarises trials, the best, failures and attempts', () => {
    const file = storeFile();
    const store = minStore(file);
    store.append(
      [
        propose(0, 't1', 30),
        propose(0, 't2', 30),
        propose(0, 't3', 30),
        metric(10, 't1', 10, 0.9),
        metric(10, 't2', 10, 0.4),
        metric(20, 't1', 20, 0.6),
        { t: 20, kind: 'stop', trial: 't1' },
        {
          t: 30,
          kind: 'trialFailed',
          trial: 't3',
          message: 'task 3 failed twice: RuntimeError: CUDA error',
        },
      ],
      150,
    );
    const a1 = store.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 101 });
    const a2 = store.recordAttempt({ task: 2, worker: 'w1', stage: 'S2', startedAt: 102 });
    const a3 = store.recordAttempt({ task: 3, worker: 'w0', stage: 'S3', startedAt: 112 });
    const a4 = store.recordAttempt({ task: 3, worker: 'w1', stage: 'S3', startedAt: 130 });
    store.recordAttempt({ task: 4, worker: 'w2', stage: 'S4', startedAt: 131 });
    store.finishAttempt(a1, {
      endedAt: 111,
      outcome: 'done',
      seconds: { start: 5, train: 4, save: 0.5 },
    });
    store.finishAttempt(a2, { endedAt: 104, outcome: 'cancelled' });
    store.finishAttempt(a3, {
      endedAt: 115,
      outcome: 'failed',
      seconds: { train: 2 },
      error: 'RuntimeError: CUDA error',
      detail: 'Traceback (most recent call last): ...',
    });
    const ended = caught(() => store.finishAttempt(a3, { endedAt: 116, outcome: 'done' }));
    expect(ended).toBeInstanceOf(AttemptEndedError);
    expect(ended).toMatchObject({ file, attempt: a3, task: 3, outcome: 'failed' });
    expect((ended as Error).message).toMatch(/attempt 3 \(task 3\) ended already \(failed\)/);
    expect(() => store.finishAttempt(99, { endedAt: 116, outcome: 'done' })).toThrow(NotFoundError);
    expect(() => store.finishAttempt(a4, { endedAt: 140, outcome: 'exploded' as 'done' })).toThrow(
      ValidationError,
    );
    store.finishAttempt(a4, { endedAt: 140, outcome: 'failed', error: 'again' });
    store.close();

    // A resumed run: the open attempt's worker is gone.
    const again = StudyStore.open(file);
    expect(again.loseOpenAttempts(200, 'the run was interrupted')).toBe(1);
    const status = again.status();
    expect(status).toEqual({
      file,
      name: 's',
      createdAt: 100,
      updatedAt: 150,
      metric: { name: 'loss', mode: 'min' },
      events: 8,
      finished: false,
      trials: { total: 3, active: 1, stopped: 1, failed: 1 },
      best: { trial: 't2', step: 10, value: 0.4 },
      failed: [{ trial: 't3', message: 'task 3 failed twice: RuntimeError: CUDA error' }],
      attempts: {
        total: 5,
        open: 0,
        byOutcome: {
          done: { count: 1, seconds: 10 },
          failed: { count: 2, seconds: 13 },
          cancelled: { count: 1, seconds: 2 },
          lost: { count: 1, seconds: 69 },
        },
        phaseSeconds: { start: 5, train: 6, save: 0.5 },
      },
      // No task entries in this log: its GPU time (from the log, accountLog) is 0.
      gpuSeconds: 0,
      problem: null,
      owner: null,
    });
    expect(JSON.parse(JSON.stringify(status))).toEqual(status);
    expect(again.attempts()[2]).toEqual({
      id: a3,
      task: 3,
      worker: 'w0',
      stage: 'S3',
      startedAt: 112,
      endedAt: 115,
      outcome: 'failed',
      seconds: { train: 2 },
      error: 'RuntimeError: CUDA error',
      detail: 'Traceback (most recent call last): ...',
    });
    again.close();
  });

  it('status without a study is a NotFoundError', () => {
    const store = StudyStore.open(storeFile());
    expect(() => store.status()).toThrow(NotFoundError);
    store.close();
  });
});

/** A `task` entry that trains `runs` (stage, start, end). */
function taskEntry(t: number, id: number, runs: [string, number, number][]): LogEntry {
  return {
    t,
    kind: 'task',
    task: {
      id,
      worker: 'w0',
      gpu: 0,
      startProcess: false,
      saveFirst: null,
      restore: { from: 'init' },
      runs: runs.map(([stage, start, end]) => ({ stage, start, end, params: {}, schedules: {} })),
      saveAfter: `K${runs[runs.length - 1]?.[0] ?? 'x'}`,
      endKey: `K${runs[runs.length - 1]?.[0] ?? 'x'}`,
      share: 1,
    },
  };
}

describe('StudyStore.open: paths that cannot be a store', () => {
  const refused = (path: string): IoError => {
    const e = caught(() => StudyStore.open(path));
    expect(e).toBeInstanceOf(StagetreeError);
    expect(e).toBeInstanceOf(IoError);
    expect(e).not.toBeInstanceOf(Database.SqliteError);
    expect((e as IoError).path).toBe(path);
    expect((e as Error).message.startsWith(`${path}: `)).toBe(true);
    return e as IoError;
  };

  it('/dev/null: not a regular file, and no /dev/null-journal is made', () => {
    const journal = existsSync('/dev/null-journal');
    expect(refused('/dev/null').message).toBe(
      '/dev/null: is not a regular file (a character device); name a study store file (e.g. study.db)',
    );
    expect(existsSync('/dev/null-journal')).toBe(journal);
  });

  it('a folder', () => {
    const dir = tempDir();
    expect(refused(dir).message).toBe(
      `${dir}: is a folder, not a study store file; name a file (e.g. study.db)`,
    );
  });

  it('a path under a regular file', () => {
    const file = join(tempDir(), 'plain.txt');
    writeFileSync(file, 'a file, not a folder');
    const path = join(file, 'study.db');
    expect(refused(path).message).toBe(
      `${path}: cannot use it as a study store: ENOTDIR: a file is in the way: a part of the path is a file, not a folder`,
    );
    const deeper = join(file, 'sub', 'study.db');
    expect(refused(deeper).message).toContain('ENOTDIR');
  });

  it('a file name of 300 characters', () => {
    const path = join(tempDir(), `${'s'.repeat(297)}.db`);
    expect(refused(path).message).toBe(
      `${path}: cannot use it as a study store: ENAMETOOLONG: a name in the path is too long (at most 255 bytes)`,
    );
  });
});

describe('StudyStore: schema version 3', () => {
  it('migrates a version 2 file, keeping its stages', () => {
    const file = storeFile();
    const db = new Database(file);
    db.exec(MIGRATIONS[0] as string);
    db.exec(MIGRATIONS[1] as string);
    db.pragma('user_version = 2');
    db.exec(`INSERT INTO study VALUES (1, 's', '{"metric":{"mode":"min","name":"loss"}}', 1, 2)`);
    db.exec(`INSERT INTO stages VALUES ('S1', 0, 10, 1, 7, 3.5)`);
    db.close();
    const store = StudyStore.open(file);
    expect(store.stages()).toEqual([{ id: 'S1', start: 0, end: 10, runs: 1, doneAt: 3.5 }]);
    expect(store.trainerFingerprint()).toBeNull();
    expect(store.status().problem).toBeNull();
    store.acquire(5);
    store.close();
    const raw = new Database(file, { readonly: true });
    expect(raw.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    raw.close();
  });
});

describe('StudyStore: reuse entries', () => {
  it('mark a stage done without training it, and round-trip with any metric', () => {
    const file = storeFile();
    const store = minStore(file);
    const log: LogEntry[] = [
      taskEntry(1, 1, [
        ['S1', 0, 10],
        ['S2', 10, 20],
      ]),
      { t: 2, kind: 'reuse', stage: 'S2', key: 'KS2', metric: 0.5 },
      { t: 3, kind: 'reuse', stage: 'S9', key: 'KS9', metric: Number.NaN },
      { t: 4, kind: 'done', task: 1, metric: 0.4 },
      { t: 5, kind: 'reuse', stage: 'S8', key: 'KS8', metric: Number.POSITIVE_INFINITY },
      { t: 6, kind: 'reuse', stage: 'S7', key: 'KS7', metric: Number.NEGATIVE_INFINITY },
      { t: 7, kind: 'reuse', stage: 'S9', key: 'KS9', metric: 1 }, // done already: stays 3
      taskEntry(8, 2, [['S9', 20, 30]]), // a reused stage trained after all: its range
    ];
    store.append(log);
    store.close();
    const again = StudyStore.open(file);
    expect(again.events()).toEqual(log);
    expect(again.stages()).toEqual([
      { id: 'S1', start: 0, end: 10, runs: 1, doneAt: null },
      { id: 'S2', start: 10, end: 20, runs: 1, doneAt: 2 },
      { id: 'S9', start: 20, end: 30, runs: 1, doneAt: 3 },
      { id: 'S7', start: null, end: null, runs: 0, doneAt: 6 },
      { id: 'S8', start: null, end: null, runs: 0, doneAt: 5 },
    ]);
    expect(again.trials()).toEqual([]);
    again.close();
  });

  it('are validated: stage, checkpoint key, a number metric', () => {
    const store = minStore();
    const bad = (e: Record<string, unknown>) =>
      caught(() => store.append([{ t: 1, kind: 'reuse', ...e } as unknown as LogEntry]));
    expect(bad({ stage: '', key: 'Ka', metric: 1 })).toBeInstanceOf(ValidationError);
    expect((bad({ stage: 'S1', key: 'K/..', metric: 1 }) as Error).message).toMatch(
      /^entries\[0\]\.key: expected a checkpoint key/,
    );
    expect((bad({ stage: 'S1', key: 'Ka', metric: 'NaN' }) as Error).message).toBe(
      'entries[0].metric: expected a number (NaN and infinities allowed), got "NaN" (string)',
    );
    expect(
      (
        caught(() =>
          store.append([{ t: 1, kind: 'done', task: 1, metric: '1' as unknown as number }]),
        ) as Error
      ).message,
    ).toMatch(/^entries\[0\]\.metric: expected a number/);
    expect(store.eventCount()).toBe(0);
    store.close();
  });
});

describe('StudyStore: metrics that are NaN or infinite', () => {
  it('done and metric entries round-trip exactly; the tables keep them', () => {
    const file = storeFile();
    const store = minStore(file);
    const values = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -0.5];
    const log: LogEntry[] = [propose(0, 't1', 40)];
    values.forEach((v, i) => {
      log.push(metric(i + 1, 't1', (i + 1) * 10, v), {
        t: i + 1,
        kind: 'done',
        task: i,
        metric: v,
      });
    });
    store.append(log);
    store.close();
    const again = StudyStore.open(file);
    const events = again.events();
    expect(events).toEqual(log);
    const done = events.filter((e) => e.kind === 'done').map((e) => e.metric);
    expect(done.map((v) => Object.is(v, Number.NaN) || v)).toEqual([
      true,
      Infinity,
      -Infinity,
      -0.5,
    ]);
    expect(again.metrics('t1').map((m) => m.value)).toEqual(values);
    const raw = new Database(file, { readonly: true });
    expect(raw.prepare('SELECT value FROM metrics ORDER BY step').pluck().all()).toEqual([
      null,
      Infinity,
      -Infinity,
      -0.5,
    ]);
    raw.close();
    // min: -Infinity is the best loss
    expect(again.status().best).toEqual({ trial: 't1', step: 30, value: -Infinity });
    again.close();
  });

  it('status().best ignores NaN and ranks infinities by the mode', () => {
    const max = StudyStore.open(storeFile());
    max.initStudy('m', { metric: { name: 'acc', mode: 'max' } }, 0);
    max.append([propose(0, 't1', 30), propose(0, 't2', 30), propose(0, 't3', 30)]);
    max.append([metric(1, 't1', 10, Number.NaN)]);
    expect(max.status().best).toBeNull();
    max.append([metric(2, 't2', 10, 0.9), metric(3, 't3', 10, Number.NEGATIVE_INFINITY)]);
    expect(max.status().best).toEqual({ trial: 't2', step: 10, value: 0.9 });
    max.append([metric(4, 't3', 20, Number.POSITIVE_INFINITY), metric(5, 't1', 20, 0.95)]);
    expect(max.status().best).toEqual({ trial: 't3', step: 20, value: Infinity });
    expect(max.trial('t1').best).toEqual({ step: 20, value: 0.95 });
    max.close();

    const min = minStore();
    min.append([propose(0, 't1', 30), metric(1, 't1', 10, Number.POSITIVE_INFINITY)]);
    expect(min.status().best).toEqual({ trial: 't1', step: 10, value: Infinity });
    min.append([metric(2, 't1', 20, Number.NaN), metric(3, 't1', 30, 7)]);
    expect(min.status().best).toEqual({ trial: 't1', step: 30, value: 7 });
    min.close();
  });
});

describe('StudyStore: trainer fingerprint, problem, restart', () => {
  it('records the trainer fingerprint and the last problem', () => {
    const file = storeFile();
    const early = StudyStore.open(file);
    expect(() => early.trainerFingerprint()).toThrow(NotFoundError);
    expect(() => early.setProblem('x', 1)).toThrow(NotFoundError);
    early.close();
    const store = minStore(file);
    expect(store.trainerFingerprint()).toBeNull();
    store.setTrainerFingerprint('sha256:abc');
    expect(() => store.setTrainerFingerprint('')).toThrow(ValidationError);
    store.setProblem('the trainer cannot load: ModuleNotFoundError: torch', 300);
    store.close();

    const again = StudyStore.open(file);
    expect(again.trainerFingerprint()).toBe('sha256:abc');
    expect(again.status()).toMatchObject({
      problem: 'the trainer cannot load: ModuleNotFoundError: torch',
      updatedAt: 300,
      owner: null,
    });
    again.setProblem(null, 400); // a successful start clears it
    expect(again.status().problem).toBeNull();
    again.setProblem('x'.repeat(10_000), 500);
    expect(again.problem()?.length).toBe(MAX_ERROR_CHARS);
    again.close();
  });

  it('restartLog archives the log, clears trials, metrics and stages, keeps attempts', () => {
    const file = storeFile();
    const store = minStore(file);
    const first: LogEntry[] = [
      propose(1, 't1', 20),
      taskEntry(2, 1, [['S1', 0, 10]]),
      { t: 3, kind: 'done', task: 1, metric: 0.5 },
      metric(3, 't1', 10, 0.5),
    ];
    store.append(first);
    const a = store.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 2 });
    store.finishAttempt(a, { endedAt: 3, outcome: 'done', seconds: { train: 1 } });
    expect(store.archivedEvents()).toEqual([]);

    expect(store.restartLog(50)).toBe(4);
    expect(store.events()).toEqual([]);
    expect(store.eventCount()).toBe(0);
    expect(store.trials()).toEqual([]);
    expect(store.metrics()).toEqual([]);
    expect(store.stages()).toEqual([]);
    expect(store.attempts()).toHaveLength(1);
    expect(store.archivedEvents()).toEqual(first);
    expect(store.status()).toMatchObject({
      events: 0,
      updatedAt: 50,
      trials: { total: 0 },
      best: null,
      attempts: { total: 1, phaseSeconds: { train: 1 } },
    });

    // The new log starts afresh (the same trial ids are new again).
    const second: LogEntry[] = [
      propose(51, 't1', 20),
      { t: 52, kind: 'reuse', stage: 'S1', key: 'KS1', metric: 0.5 },
    ];
    store.append(second);
    expect(store.events()).toEqual(second);
    expect(store.stages()).toEqual([{ id: 'S1', start: null, end: null, runs: 0, doneAt: 52 }]);
    store.close();

    const again = StudyStore.open(file);
    expect(again.restartLog(60)).toBe(2);
    expect(again.archivedEvents()).toEqual(second); // the most recent generation
    expect(again.restartLog(70)).toBe(0); // nothing to archive: no new generation
    expect(again.archivedEvents()).toEqual(second);
    again.close();
    const raw = new Database(file, { readonly: true });
    expect(
      raw.prepare('SELECT generation, count(*) AS n FROM archived_events GROUP BY 1').all(),
    ).toEqual([
      { generation: 1, n: 4 },
      { generation: 2, n: 2 },
    ]);
    raw.close();
  });
});

describe('StudyStore: attempt seconds, errors and details', () => {
  it('sums the seconds by phase in status and keeps the detail', () => {
    const store = minStore();
    const a = store.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 10 });
    store.finishAttempt(a, {
      endedAt: 12,
      outcome: 'failed',
      seconds: { train: 1.5, save: 0.25 },
      error: 'RuntimeError: boom',
      detail: 'Traceback (most recent call last):\n  File "train.py", line 1\nRuntimeError: boom',
    });
    const b = store.recordAttempt({ task: 2, worker: 'w0', stage: 'S2', startedAt: 12 });
    store.finishAttempt(b, { endedAt: 13, outcome: 'done', seconds: { train: 0.5 } });
    expect(store.status().attempts.phaseSeconds).toEqual({ train: 2, save: 0.25 });
    expect(store.attempts()[0]).toMatchObject({
      seconds: { train: 1.5, save: 0.25 },
      error: 'RuntimeError: boom',
      detail: 'Traceback (most recent call last):\n  File "train.py", line 1\nRuntimeError: boom',
    });
    store.close();
  });

  it('cuts an 8 MB error and a long detail, saying how much was cut', () => {
    const file = storeFile();
    const store = minStore(file);
    const a = store.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 10 });
    const error = 'E'.repeat(8 * 1024 * 1024);
    const detail = 'D'.repeat(100_000);
    store.finishAttempt(a, { endedAt: 11, outcome: 'failed', error, detail });
    const row = store.attempts()[0];
    const cut = (text: string | null | undefined, limit: number, original: string) => {
      expect(text?.length).toBe(limit);
      const m = /^([A-Z]+) \.\.\. \[(\d+) more characters cut\]$/.exec(text ?? '');
      expect(m).not.toBeNull();
      expect(original.startsWith(m?.[1] ?? '-')).toBe(true);
      expect((m?.[1]?.length ?? 0) + Number(m?.[2])).toBe(original.length);
    };
    cut(row?.error, MAX_ERROR_CHARS, error);
    cut(row?.detail, MAX_DETAIL_CHARS, detail);
    // What fits is kept as it is.
    const b = store.recordAttempt({ task: 2, worker: 'w0', stage: 'S1', startedAt: 12 });
    store.finishAttempt(b, { endedAt: 13, outcome: 'failed', error: 'x'.repeat(MAX_ERROR_CHARS) });
    expect(store.attempts()[1]?.error).toBe('x'.repeat(MAX_ERROR_CHARS));
    store.close();
    expect(statSync(file).size).toBeLessThan(1024 * 1024); // closed: the WAL is merged
  });
});

describe('a study stored by the previous release', () => {
  it('resumes: the fields added since are filled with the values that kept its meaning', () => {
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-upgrade-'));
    const file = join(dir, 'old.db');
    const study = parseStudy({
      name: 'old',
      space: { lr: 0.1 },
      steps: 10,
      tuner: { kind: 'grid' },
      metric: { name: 'loss', mode: 'min' },
      trainer: { kind: 'node', module: './t.js', export: 'T' },
    });
    // The study as the previous release stored it: without the fields added since.
    const old = JSON.parse(JSON.stringify(study)) as Record<string, unknown>;
    delete old.cpuOnly;
    delete old.taskTimeout;
    delete (old.trainer as Record<string, unknown>).version;
    const a = StudyStore.open(file);
    expect(a.initStudy('old', old, 1)).toBe('created');
    a.close();
    const b = StudyStore.open(file);
    expect(b.initStudy('old', study, 2)).toBe('resumed');
    expect(JSON.parse(b.study().json)).toMatchObject({ cpuOnly: false, taskTimeout: null });
    // A real difference is still refused.
    b.close();
    const c = StudyStore.open(file);
    expect(() => c.initStudy('old', { ...study, steps: 11 }, 3)).toThrow(/different settings/);
    c.close();
  });
});
