import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { accountLog, ExecutionMode, replay } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import {
  NotFoundError,
  StoreBusyError,
  StudyMismatchError,
  ValidationError,
} from '../../src/errors.js';
import { StudyStore } from '../../src/store/index.js';
import type { StageRow } from '../../src/store/index.js';
import type { Study } from '../../src/study/index.js';
import { createTuner } from '../../src/tuner/index.js';
import { engineOptions, simulateStudies, trainerIdentity } from '../../src/workers/sim/index.js';
import { smallStudy } from '../support/sim-study.js';
import { metric, propose, task, useTempDirs } from './helpers.js';

/**
 * One store file holds the studies one executor runs: its one log interleaves them, and
 * every per-study view (events, trials, metrics, stages, attempts, status) is that study's.
 */

const tempDir = useTempDirs();
const storeFile = () => join(tempDir(), 'studies.db');

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

/** The study (by name; null: the primary) a log entry belongs to, as the store routes it. */
function owner(e: LogEntry): string | null | undefined {
  switch (e.kind) {
    case 'propose':
    case 'fork':
    case 'extend':
    case 'stop':
    case 'metric':
    case 'trialFailed':
      return e.trial.includes('/') ? e.trial.split('/')[0] : null;
    case 'finish':
      return e.study ?? null;
    case 'submit':
    case 'pause':
    case 'resume':
      return e.study;
    case 'task':
    case 'done':
    case 'cancel':
    case 'cut':
    case 'fail':
    case 'lost':
    case 'reuse':
      return undefined; // the executor's
  }
}

const MIN = { metric: { name: 'loss', mode: 'min' } };

describe('a store of two studies, from a real interleaved log', () => {
  // The grid of week2 contains week1's: week2 reuses what week1 trained.
  const week = (name: string, milestones: number[]): Study =>
    smallStudy({
      name,
      space: {
        lr: {
          kind: 'multistep',
          init: { choice: [0.05, 0.1, 0.2] },
          factor: 0.1,
          milestones: [{ choice: milestones }],
        },
        batchSize: 128,
      },
    });
  const a = week('week1', [20, 30]);
  const b = week('week2', [20, 30, 35]);
  const joint = simulateStudies([
    { study: a, at: 0 },
    { study: b, at: 60 },
  ]);
  const log = joint.log;

  it('routes every entry to its study, and each study reads as its own', () => {
    // The log is really interleaved, and tasks name the studies that demanded them.
    const submit = log.findIndex((e) => e.kind === 'submit');
    expect(submit).toBeGreaterThan(0);
    const after = log.slice(submit);
    expect(after.some((e) => e.kind === 'metric' && !e.trial.includes('/'))).toBe(true);
    expect(after.some((e) => e.kind === 'propose' && e.trial.startsWith('week2/'))).toBe(true);
    expect(log.some((e) => e.kind === 'task' && e.studies === undefined)).toBe(true);
    expect(log.some((e) => e.kind === 'task' && (e.studies?.length ?? 0) > 1)).toBe(true);

    const file = storeFile();
    const store = StudyStore.open(file);
    expect(store.initStudy(a.name, a, 0)).toBe('created');
    expect(store.initStudy(b.name, b, 0)).toBe('created');
    expect(store.unfinished()).toEqual(['week1', 'week2']);
    // In uneven batches, as an executor appends after each engine step.
    const firstFinish = log.findIndex((e) => e.kind === 'finish');
    expect(firstFinish).toBeGreaterThan(submit);
    store.append(log.slice(0, firstFinish));
    expect(store.unfinished()).toEqual(['week1', 'week2']);
    for (let i = firstFinish; i < log.length; i += 5) store.append(log.slice(i, i + 5));
    expect(store.unfinished()).toEqual([]);
    store.close();

    const again = StudyStore.open(file);
    expect(again.studyNames()).toEqual(['week1', 'week2']);
    expect(again.events()).toEqual(log);
    expect(again.eventCount()).toBe(log.length);
    const ofA = log.filter((e) => owner(e) === null);
    const ofB = log.filter((e) => owner(e) === 'week2');
    expect(ofA.length).toBeGreaterThan(0);
    expect(ofB.length).toBeGreaterThan(0);
    expect(again.events('week1')).toEqual(ofA);
    expect(again.events('week2')).toEqual(ofB);
    const executor = log.filter((e) => owner(e) === undefined);
    expect(ofA.length + ofB.length + executor.length).toBe(log.length);

    // Trials and metrics, by study and all together.
    const proposed = (es: readonly LogEntry[]) =>
      es.flatMap((e) => (e.kind === 'propose' || e.kind === 'fork' ? [e.trial] : []));
    expect(again.trials('week1').map((t) => t.id)).toEqual(proposed(ofA));
    expect(again.trials('week2').map((t) => t.id)).toEqual(proposed(ofB));
    expect(again.trials().map((t) => t.id)).toEqual(proposed(log));
    expect(again.trials('week1')).toHaveLength(6);
    expect(again.trials('week2')).toHaveLength(9);
    const metricsOf = (es: readonly LogEntry[]) => es.filter((e) => e.kind === 'metric').length;
    expect(again.metrics({ study: 'week1' })).toHaveLength(metricsOf(ofA));
    expect(again.metrics({ study: 'week2' })).toHaveLength(metricsOf(ofB));
    expect(again.metrics()).toHaveLength(metricsOf(log));
    let inB = 0;
    for (const m of again.metrics({ study: 'week2' })) {
      expect(m.trial.startsWith('week2/')).toBe(true);
      inB++;
    }
    expect(inB).toBe(metricsOf(ofB));

    // Status: each study's own finish, trials, best.
    const sa = again.status('week1');
    const sb = again.status('week2');
    expect(again.status()).toEqual(sa); // the primary by default
    expect(sa).toMatchObject({ name: 'week1', finished: true, events: log.length });
    expect(sb).toMatchObject({ name: 'week2', finished: true, events: log.length });
    expect(sa.trials).toEqual({ total: 6, active: 0, stopped: 6, failed: 0 });
    expect(sb.trials).toEqual({ total: 9, active: 0, stopped: 9, failed: 0 });
    const bestOf = (es: readonly LogEntry[]) =>
      Math.max(...es.flatMap((e) => (e.kind === 'metric' ? [e.value] : [])));
    expect(sa.best?.value).toBe(bestOf(ofA));
    expect(sb.best?.value).toBe(bestOf(ofB));
    expect(sb.best?.trial.startsWith('week2/')).toBe(true);
    expect(again.summaries()).toEqual([
      {
        name: 'week1',
        finished: true,
        trials: sa.trials,
        best: sa.best,
        gpuSeconds: sa.gpuSeconds,
      },
      {
        name: 'week2',
        finished: true,
        trials: sb.trials,
        best: sb.best,
        gpuSeconds: sb.gpuSeconds,
      },
    ]);

    // GPU time: the studies' credits add up to the log's, and week2, which reused what
    // week1 trained, was credited less than it would have spent alone.
    const total = accountLog(log).gpuSeconds;
    expect(total).toBeCloseTo(joint.gpuSeconds, 6);
    expect(sa.gpuSeconds).toBeGreaterThan(0);
    expect(sb.gpuSeconds).toBeGreaterThan(0);
    expect(sa.gpuSeconds + sb.gpuSeconds).toBeCloseTo(total, 6);
    expect(sa.gpuSeconds).toBe(accountLog(log, { study: 'week1', primary: 'week1' }).gpuSeconds);

    // Stages: each trained one is credited to the first study of the last task that
    // trained it; together they are every trained stage.
    const credit = new Map<string, string>();
    for (const e of log) {
      if (e.kind !== 'task') continue;
      for (const r of e.task.runs) credit.set(r.stage, e.studies?.[0] ?? 'week1');
    }
    const ids = (rows: readonly StageRow[]) => rows.map((r) => r.id).sort();
    const trained = again.stages().filter((s) => s.runs > 0);
    expect(trained).toHaveLength(credit.size);
    expect(ids(again.stages('week1'))).toEqual(
      [...credit]
        .filter(([, s]) => s === 'week1')
        .map(([id]) => id)
        .sort(),
    );
    expect(ids(again.stages('week2'))).toEqual(
      [...credit]
        .filter(([, s]) => s === 'week2')
        .map(([id]) => id)
        .sort(),
    );
    expect(again.stages('week1').length + again.stages('week2').length).toBe(trained.length);

    // The whole log replays, decision for decision.
    const r = replay(
      a,
      again.events(),
      createTuner(a),
      { ...engineOptions(a, ExecutionMode.stageTree), identity: trainerIdentity, studyCaps: true },
      (name) => {
        expect(name).toBe('week2');
        return { study: b, tuner: createTuner(b) };
      },
    );
    expect(r.firstDifference).toBeNull();
    again.close();
  });

  it('credits each attempt to the studies of its task entry', () => {
    const store = StudyStore.open(storeFile());
    store.initStudy(a.name, a, 0);
    store.initStudy(b.name, b, 0);
    store.append(log);
    let recorded = 0;
    let shared = 0;
    for (const e of log) {
      if (e.kind !== 'task') continue;
      store.recordAttempt({
        task: e.task.id,
        worker: e.task.worker,
        stage: e.task.runs[e.task.runs.length - 1]?.stage ?? '',
        startedAt: e.t,
        studies: e.studies,
      });
      recorded++;
      if ((e.studies?.length ?? 0) > 1) shared++;
    }
    expect(recorded).toBe(joint.stats.stagesRun);
    expect(shared).toBeGreaterThan(0);
    const ofA = store.attempts('week1').length;
    const ofB = store.attempts('week2').length;
    expect(store.attempts()).toHaveLength(recorded);
    // A shared attempt counts for the earliest-submitted study that demanded it.
    expect(ofA + ofB).toBe(recorded);
    const firstOf = (name: string): number =>
      log.filter((e) => e.kind === 'task' && (e.studies?.[0] ?? 'week1') === name).length;
    expect([ofA, ofB]).toEqual([firstOf('week1'), firstOf('week2')]);
    expect(store.status('week1').attempts.total).toBe(ofA);
    expect(store.status('week2').attempts.open).toBe(ofB);
    store.close();
  });
});

describe('a store of two studies, by hand', () => {
  /**
   * a (the primary, a loss) and b (an accuracy): task 1 both demanded (share 1, 10 s),
   * task 2 b alone (share 0.5, 20 s), task 3 is the primary's (no `studies`, 4 s, failed).
   */
  const log: LogEntry[] = [
    propose(0, 't1', 20),
    { t: 5, kind: 'submit', study: 'b', priority: 1 },
    propose(5, 'b/t1', 20),
    task(10, 1, [['S1', 0, 10]], { studies: ['b', 'a'] }),
    task(10, 2, [['S2', 0, 10]], { share: 0.5, studies: ['b'], worker: 'w1' }),
    { t: 20, kind: 'done', task: 1, metric: 0.5 },
    metric(20, 't1', 10, 0.5),
    { t: 30, kind: 'done', task: 2, metric: 0.7 },
    metric(30, 'b/t1', 10, 0.7),
    task(30, 3, [
      ['S1', 0, 10],
      ['S3', 10, 20],
    ]),
    { t: 34, kind: 'fail', task: 3, message: 'boom', reason: 'trainer' },
    { t: 34, kind: 'trialFailed', trial: 't1', message: 'boom' },
    { t: 34, kind: 'stop', trial: 't1' },
    { t: 40, kind: 'finish' },
  ];

  function twoStudies(file = storeFile()): StudyStore {
    const store = StudyStore.open(file);
    store.initStudy('a', { name: 'a', ...MIN }, 1);
    store.initStudy('b', { name: 'b', metric: { name: 'acc', mode: 'max' } }, 2);
    return store;
  }

  it('status, finished, trials, attempts and GPU time per study', () => {
    const file = storeFile();
    const store = twoStudies(file);
    store.append(log, 50);
    const a1 = store.recordAttempt({
      task: 1,
      worker: 'w0',
      stage: 'S1',
      startedAt: 10,
      studies: ['b', 'a'],
    });
    const a2 = store.recordAttempt({
      task: 2,
      worker: 'w1',
      stage: 'S2',
      startedAt: 10,
      studies: ['b'],
    });
    const a3 = store.recordAttempt({ task: 3, worker: 'w0', stage: 'S3', startedAt: 30 });
    store.finishAttempt(a1, { endedAt: 20, outcome: 'done', seconds: { train: 8, save: 1 } });
    store.finishAttempt(a2, { endedAt: 30, outcome: 'done', seconds: { train: 16 } });
    store.finishAttempt(a3, {
      endedAt: 34,
      outcome: 'failed',
      seconds: { train: 2 },
      error: 'boom',
    });
    store.close();

    const again = StudyStore.open(file);
    expect(again.unfinished()).toEqual(['b']);
    const sa = again.status('a');
    const sb = again.status('b');
    expect(sa).toMatchObject({
      file,
      name: 'a',
      createdAt: 1,
      updatedAt: 50,
      metric: { name: 'loss', mode: 'min' },
      events: log.length,
      finished: true,
      trials: { total: 1, active: 0, stopped: 0, failed: 1 },
      best: { trial: 't1', step: 10, value: 0.5 },
      failed: [{ trial: 't1', message: 'boom' }],
      // Task 3 (4 s x 1); task 1 was b's (b is first in its entry's studies): a reused it.
      gpuSeconds: 4,
    });
    expect(sa.attempts).toEqual({
      total: 1,
      open: 0,
      byOutcome: {
        done: { count: 0, seconds: 0 },
        failed: { count: 1, seconds: 4 },
        cancelled: { count: 0, seconds: 0 },
        lost: { count: 0, seconds: 0 },
      },
      phaseSeconds: { train: 2 },
    });
    expect(sb).toMatchObject({
      name: 'b',
      createdAt: 2,
      metric: { name: 'acc', mode: 'max' },
      finished: false,
      trials: { total: 1, active: 1, stopped: 0, failed: 0 },
      best: { trial: 'b/t1', step: 10, value: 0.7 },
      failed: [],
      // Task 1 (10 s x 1) and task 2 (20 s x 0.5).
      gpuSeconds: 20,
    });
    expect(sb.attempts).toEqual({
      total: 2,
      open: 0,
      byOutcome: {
        done: { count: 2, seconds: 30 },
        failed: { count: 0, seconds: 0 },
        cancelled: { count: 0, seconds: 0 },
        lost: { count: 0, seconds: 0 },
      },
      phaseSeconds: { train: 24, save: 1 },
    });
    expect(sa.gpuSeconds + sb.gpuSeconds).toBe(accountLog(log).gpuSeconds);
    expect(again.summaries()).toEqual([
      { name: 'a', finished: true, trials: sa.trials, best: sa.best, gpuSeconds: 4 },
      { name: 'b', finished: false, trials: sb.trials, best: sb.best, gpuSeconds: 20 },
    ]);

    expect(again.attempts('a').map((x) => x.id)).toEqual([a3]);
    expect(again.attempts('b').map((x) => x.id)).toEqual([a1, a2]);
    expect(again.attempts().map((x) => x.id)).toEqual([a1, a2, a3]);
    expect(again.trials('a').map((t) => t.id)).toEqual(['t1']);
    expect(again.trials('b').map((t) => t.id)).toEqual(['b/t1']);
    expect(again.metrics({ study: 'b' })).toEqual([{ trial: 'b/t1', step: 10, value: 0.7 }]);
    expect(again.metrics('b/t1')).toEqual([{ trial: 'b/t1', step: 10, value: 0.7 }]);
    expect(again.events('b').map((e) => e.kind)).toEqual(['submit', 'propose', 'metric']);
    expect(again.events('a').map((e) => e.kind)).toEqual([
      'propose',
      'metric',
      'trialFailed',
      'stop',
      'finish',
    ]);
    // S1 was trained first by task 1 (b first), last by task 3 (the primary's): a's.
    expect(again.stages('a').map((s) => s.id)).toEqual(['S1', 'S3']);
    expect(again.stages('b').map((s) => s.id)).toEqual(['S2']);
    again.close();

    const raw = new Database(file, { readonly: true });
    expect(
      raw
        .prepare(
          'SELECT e.kind, s.name FROM events e LEFT JOIN studies s ON s.id = e.study ORDER BY seq',
        )
        .raw()
        .all(),
    ).toEqual(log.map((e) => [e.kind, owner(e) === undefined ? null : (owner(e) ?? 'a')]));
    expect(
      raw.prepare('SELECT attempt, study, weight FROM attempt_studies ORDER BY 1, 2').raw().all(),
    ).toEqual([
      [a1, 1, 0],
      [a1, 2, 1],
      [a2, 2, 1],
      [a3, 1, 1],
    ]);
    raw.close();
  });

  it('sets the updated time of the studies a batch touched, of all for executor entries', () => {
    const store = twoStudies();
    store.append([propose(10, 't1', 20)], 10);
    expect([store.study('a').updatedAt, store.study('b').updatedAt]).toEqual([10, 2]);
    store.append([propose(11, 'b/t1', 20), metric(12, 'b/t1', 10, 1)], 20);
    expect([store.study('a').updatedAt, store.study('b').updatedAt]).toEqual([10, 20]);
    store.append([task(30, 1, [['S1', 0, 10]], { studies: ['b'] })], 30);
    expect([store.study('a').updatedAt, store.study('b').updatedAt]).toEqual([30, 30]);
    store.append([], 40);
    expect([store.study('a').updatedAt, store.study('b').updatedAt]).toEqual([40, 40]);
    store.close();
  });

  it('keeps each study its own fingerprint, problem and settings', () => {
    const file = storeFile();
    const store = twoStudies(file);
    store.setTrainerFingerprint('sha256:a');
    store.setTrainerFingerprint('sha256:b', 'b');
    store.setProblem('disk full', 7, 'b');
    expect(store.trainerFingerprint()).toBe('sha256:a');
    expect(store.trainerFingerprint('a')).toBe('sha256:a');
    expect(store.trainerFingerprint('b')).toBe('sha256:b');
    expect(store.problem()).toBeNull();
    expect(store.problem('b')).toBe('disk full');
    expect(store.status('b')).toMatchObject({ problem: 'disk full', updatedAt: 7 });
    expect(store.status('a')).toMatchObject({ problem: null, updatedAt: 1 });
    // Resuming either is byte for byte; a changed one is refused at its first difference.
    expect(store.initStudy('b', { metric: { mode: 'max', name: 'acc' }, name: 'b' }, 8)).toBe(
      'resumed',
    );
    const e = caught(() =>
      store.initStudy('b', { name: 'b', metric: { name: 'acc', mode: 'min' } }, 9),
    );
    expect(e).toBeInstanceOf(StudyMismatchError);
    expect(e).toMatchObject({ file, storedName: 'b', path: 'metric.mode' });
    expect(store.study('b').updatedAt).toBe(8);
    expect(store.studyNames()).toEqual(['a', 'b']);
    store.close();
  });

  it('StoreBusyError names the primary study', () => {
    const file = storeFile();
    const first = twoStudies(file);
    first.acquire(100);
    const second = StudyStore.open(file);
    const e = caught(() => second.acquire(101));
    expect(e).toBeInstanceOf(StoreBusyError);
    expect((e as Error).message).toMatch(/^study a is being run by pid \d+ since /);
    second.close();
    first.close();
  });

  it("restartLog archives every study's log and clears every study's trials", () => {
    const file = storeFile();
    const store = twoStudies(file);
    store.append(log);
    const at = store.recordAttempt({
      task: 1,
      worker: 'w0',
      stage: 'S1',
      startedAt: 10,
      studies: ['a', 'b'],
    });
    expect(store.unfinished()).toEqual(['b']);
    expect(store.restartLog(60)).toBe(log.length);
    expect(store.events()).toEqual([]);
    expect(store.events('a')).toEqual([]);
    expect(store.events('b')).toEqual([]);
    expect(store.trials()).toEqual([]);
    expect(store.metrics()).toEqual([]);
    expect(store.stages()).toEqual([]);
    expect(store.archivedEvents()).toEqual(log);
    expect(store.unfinished()).toEqual(['a', 'b']);
    expect([store.study('a').updatedAt, store.study('b').updatedAt]).toEqual([60, 60]);
    // Attempts stay, credited as they were (to a, the first of the two).
    expect(store.attempts('a').map((x) => x.id)).toEqual([at]);
    expect(store.attempts('b').map((x) => x.id)).toEqual([]);
    expect(store.status('b')).toMatchObject({ finished: false, events: 0, gpuSeconds: 0 });
    expect(store.status('a').attempts.total).toBe(1);
    // The new log starts afresh for both.
    store.append([propose(61, 'b/t1', 20), propose(61, 't1', 20)]);
    expect(store.trials('b').map((t) => t.id)).toEqual(['b/t1']);
    store.close();
    const raw = new Database(file, { readonly: true });
    expect(
      raw
        .prepare('SELECT kind, study FROM archived_events WHERE generation = 1 ORDER BY seq')
        .raw()
        .all(),
    ).toEqual(log.map((e) => [e.kind, owner(e) === undefined ? null : owner(e) === 'b' ? 2 : 1]));
    raw.close();
  });
});

describe('entries of a study the file does not hold', () => {
  function oneStudy(): StudyStore {
    const store = StudyStore.open(storeFile());
    store.initStudy('a', { name: 'a', ...MIN }, 0);
    store.append([propose(0, 't1', 20)]);
    return store;
  }

  it('roll their whole batch back with a NotFoundError naming the study and the entry', () => {
    const store = oneStudy();
    const bad: [LogEntry, string, string][] = [
      [propose(1, 'x/t1', 20), 'x', 'entries[1].trial "x/t1"'],
      [metric(1, 'x/t1', 10, 0.5), 'x', 'entries[1].trial "x/t1"'],
      [{ t: 1, kind: 'submit', study: 'x', priority: 1 }, 'x', 'entries[1].study'],
      [{ t: 1, kind: 'finish', study: 'y' }, 'y', 'entries[1].study'],
      [task(1, 7, [['S1', 0, 10]], { studies: ['a', 'z'] }), 'z', 'entries[1].studies'],
    ];
    let checked = 0;
    for (const [entry, study, where] of bad) {
      const e = caught(() => store.append([propose(1, 't2', 20), entry], 5));
      expect(e).toBeInstanceOf(NotFoundError);
      expect(e).toMatchObject({ what: 'study', id: study });
      expect((e as Error).message).toContain(`${where} names it`);
      expect((e as Error).message).toContain('add it with initStudy');
      expect(store.eventCount()).toBe(1);
      expect(store.trials().map((t) => t.id)).toEqual(['t1']);
      expect(store.stages()).toEqual([]);
      expect(store.study().updatedAt).toBe(0);
      checked++;
    }
    expect(checked).toBe(bad.length);
    // Once the study is there, the same entries go in.
    store.initStudy('x', { name: 'x', ...MIN }, 1);
    store.append([{ t: 2, kind: 'submit', study: 'x', priority: 1 }, propose(2, 'x/t1', 20)]);
    expect(store.trials('x').map((t) => t.id)).toEqual(['x/t1']);
    store.close();
  });

  it('attempts, reads and names are checked too', () => {
    const store = oneStudy();
    expect(() =>
      store.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 1, studies: ['q'] }),
    ).toThrow(NotFoundError);
    expect(store.attempts()).toEqual([]); // nothing half-written
    const reads = [
      () => store.status('q'),
      () => store.events('q'),
      () => store.trials('q'),
      () => store.metrics({ study: 'q' }),
      () => store.stages('q'),
      () => store.attempts('q'),
      () => store.study('q'),
      () => store.trainerFingerprint('q'),
      () => store.problem('q'),
      () => store.setProblem('x', 1, 'q'),
      () => store.setTrainerFingerprint('fp', 'q'),
    ];
    let checked = 0;
    for (const read of reads) {
      const e = caught(read);
      expect(e).toBeInstanceOf(NotFoundError);
      expect((e as Error).message).toBe(
        `study "q" does not exist: ${store.file} holds no such study (it holds "a")`,
      );
      checked++;
    }
    expect(checked).toBe(reads.length);
    expect(store.problem()).toBeNull();
    expect(store.trainerFingerprint()).toBeNull();
    expect(caught(() => store.initStudy('a/b', { ...MIN }, 1))).toBeInstanceOf(ValidationError);
    expect(store.studyNames()).toEqual(['a']);
    store.close();
  });

  it('a task entry names 1 to 1000 distinct studies', () => {
    const store = oneStudy();
    const bad: unknown[] = [
      [],
      [''],
      ['a', 'a'],
      'a',
      [1],
      Array.from({ length: 1001 }, (_, i) => `s${i}`),
    ];
    let checked = 0;
    for (const studies of bad) {
      const entry = { ...task(1, 1, [['S1', 0, 10]]), studies } as unknown as LogEntry;
      const e = caught(() => store.append([entry]));
      expect(e).toBeInstanceOf(ValidationError);
      expect((e as ValidationError).path).toMatch(/^entries\[0\]\.studies/);
      checked++;
    }
    expect(checked).toBe(bad.length);
    expect(() =>
      store.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 1, studies: [] }),
    ).toThrow(ValidationError);
    expect(store.eventCount()).toBe(1);
    store.close();
  });
});
