import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { ExecutionMode, replay } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { canonicalJson, MIGRATIONS, StudyStore } from '../../src/store/index.js';
import type { AttemptEnd, AttemptStart } from '../../src/store/index.js';
import { encodeEntry } from '../../src/store/json.js';
import { parseStudy } from '../../src/study/index.js';
import type { MetricMode, Study } from '../../src/study/index.js';
import { createTuner } from '../../src/tuner/index.js';
import { isBetter } from '../../src/tuner/types.js';
import { engineOptions, simulate } from '../../src/workers/sim/index.js';
import { metric, propose, task, useTempDirs } from './helpers.js';

/**
 * A file the previous release (schema version 3, one study per file) wrote opens,
 * migrates to version 4 (many studies per file) keeping every row, and reads and works
 * exactly like a file the new release wrote from the same calls.
 */

const tempDir = useTempDirs();

/**
 * The previous release's study store, statement for statement (`src/store/study-store.ts`
 * at commit 693b407, schema version 3): what it wrote for each call.
 */
class V3Store {
  private readonly sql;

  constructor(
    private readonly db: Database.Database,
    private readonly mode: MetricMode,
  ) {
    this.sql = {
      insertStudy: db.prepare(
        'INSERT INTO study (id, name, json, created_at, updated_at) VALUES (1, ?, ?, ?, ?)',
      ),
      touchStudy: db.prepare('UPDATE study SET updated_at = ? WHERE id = 1'),
      setFingerprint: db.prepare('UPDATE study SET trainer_fingerprint = ? WHERE id = 1'),
      setProblem: db.prepare('UPDATE study SET problem = ?, updated_at = ? WHERE id = 1'),
      setOwner: db.prepare(
        `INSERT OR REPLACE INTO owner (id, pid, start, host, since, token)
         VALUES (1, @pid, @start, @host, @since, @token)`,
      ),
      nextGeneration: db.prepare(
        'SELECT coalesce(max(generation), 0) + 1 AS g FROM archived_events',
      ),
      archiveEvents: db.prepare(
        `INSERT INTO archived_events (generation, seq, t, kind, json)
         SELECT ?, seq, t, kind, json FROM events ORDER BY seq`,
      ),
      clearEvents: db.prepare('DELETE FROM events'),
      clearTrials: db.prepare('DELETE FROM trials'),
      clearMetrics: db.prepare('DELETE FROM metrics'),
      clearStages: db.prepare('DELETE FROM stages'),
      insertEvent: db.prepare('INSERT INTO events (t, kind, json) VALUES (?, ?, ?)'),
      insertTrial: db.prepare(
        `INSERT INTO trials (id, seq, status, until, fork_of, fork_at) VALUES (?, ?, 'active', ?, ?, ?)`,
      ),
      setUntil: db.prepare('UPDATE trials SET until = ? WHERE id = ?'),
      stopTrial: db.prepare(
        `UPDATE trials SET status = 'stopped' WHERE id = ? AND status = 'active'`,
      ),
      failTrial: db.prepare(`UPDATE trials SET status = 'failed', error = ? WHERE id = ?`),
      setBest: db.prepare('UPDATE trials SET best = ?, best_step = ?, last_step = ? WHERE id = ?'),
      upsertMetric: db.prepare(
        `INSERT INTO metrics (trial, step, value, seq) VALUES (?, ?, ?, ?)
         ON CONFLICT (trial, step) DO UPDATE SET value = excluded.value, seq = excluded.seq`,
      ),
      trialMetrics: db.prepare('SELECT step, value FROM metrics WHERE trial = ? ORDER BY step'),
      touchStage: db.prepare(
        `INSERT INTO stages (id, start, end, runs, last_task) VALUES (@id, @start, @end, 1, @task)
         ON CONFLICT (id) DO UPDATE SET start = excluded.start, end = excluded.end,
           runs = runs + 1, last_task = coalesce(@task, last_task)`,
      ),
      reuseStage: db.prepare(
        `INSERT INTO stages (id, runs, done_at) VALUES (@id, 0, @t)
         ON CONFLICT (id) DO UPDATE SET done_at = coalesce(done_at, excluded.done_at)`,
      ),
      stageDone: db.prepare(
        'UPDATE stages SET done_at = @t WHERE last_task = @task AND done_at IS NULL',
      ),
      insertAttempt: db.prepare(
        'INSERT INTO attempts (task, worker, stage, started_at) VALUES (?, ?, ?, ?)',
      ),
      finishAttempt: db.prepare(
        'UPDATE attempts SET ended_at = ?, outcome = ?, seconds = ?, error = ?, detail = ? WHERE id = ?',
      ),
    };
  }

  initStudy(name: string, study: object, now: number): void {
    this.sql.insertStudy.run(name, canonicalJson(study, 'study'), now, now);
  }

  setTrainerFingerprint(fp: string): void {
    this.sql.setFingerprint.run(fp);
  }

  setProblem(text: string | null, now: number): void {
    this.sql.setProblem.run(text, now);
  }

  acquire(row: { pid: number; start: string | null; host: string; since: number }): void {
    this.sql.setOwner.run({ ...row, token: 'f'.repeat(32) });
  }

  append(entries: readonly LogEntry[], now?: number): void {
    this.db.transaction(() => {
      const touched = new Set<string>();
      entries.forEach((entry, i) => {
        const info = this.sql.insertEvent.run(
          entry.t,
          entry.kind,
          encodeEntry(entry, `entries[${i}]`),
        );
        this.apply(entry, Number(info.lastInsertRowid), touched);
      });
      for (const trial of touched) this.refreshBest(trial);
      if (now !== undefined) this.sql.touchStudy.run(now);
    })();
  }

  restartLog(now: number): void {
    this.db.transaction(() => {
      const { g } = this.sql.nextGeneration.get() as { g: number };
      this.sql.archiveEvents.run(g);
      this.sql.clearMetrics.run();
      this.sql.clearTrials.run();
      this.sql.clearStages.run();
      this.sql.clearEvents.run();
      this.sql.touchStudy.run(now);
    })();
  }

  recordAttempt(start: AttemptStart): number {
    const info = this.sql.insertAttempt.run(start.task, start.worker, start.stage, start.startedAt);
    return Number(info.lastInsertRowid);
  }

  finishAttempt(id: number, end: AttemptEnd): void {
    this.sql.finishAttempt.run(
      end.endedAt,
      end.outcome,
      canonicalJson(end.seconds ?? {}, 'seconds'),
      end.error ?? null,
      end.detail ?? null,
      id,
    );
  }

  private apply(entry: LogEntry, seq: number, touched: Set<string>): void {
    switch (entry.kind) {
      case 'propose':
        this.sql.insertTrial.run(entry.trial, seq, entry.spec.until, null, null);
        return;
      case 'fork':
        this.sql.insertTrial.run(entry.trial, seq, entry.until, entry.source, entry.at);
        return;
      case 'extend':
        this.sql.setUntil.run(entry.until, entry.trial);
        return;
      case 'stop':
        this.sql.stopTrial.run(entry.trial);
        return;
      case 'metric':
        this.sql.upsertMetric.run(
          entry.trial,
          entry.step,
          Number.isNaN(entry.value) ? null : entry.value,
          seq,
        );
        touched.add(entry.trial);
        return;
      case 'trialFailed':
        this.sql.failTrial.run(entry.message, entry.trial);
        return;
      case 'task':
        entry.task.runs.forEach((r, i) => {
          this.sql.touchStage.run({
            id: r.stage,
            start: r.start,
            end: r.end,
            task: i === entry.task.runs.length - 1 ? entry.task.id : null,
          });
        });
        return;
      case 'done':
        this.sql.stageDone.run({ t: entry.t, task: entry.task });
        return;
      case 'reuse':
        this.sql.reuseStage.run({ id: entry.stage, t: entry.t });
        return;
      case 'cancel':
      case 'fail':
      case 'lost':
      case 'finish':
      case 'submit':
      case 'pause':
      case 'resume':
      case 'cut': // (newer than v3: never in a v3 log)
        return;
    }
  }

  private refreshBest(trial: string): void {
    const rows = this.sql.trialMetrics.all(trial) as { step: number; value: number | null }[];
    let best: { step: number; value: number } | null = null;
    let last: number | null = null;
    for (const r of rows) {
      last = r.step;
      if (r.value === null) continue;
      if (best === null || isBetter(this.mode, r.value, best.value))
        best = { step: r.step, value: r.value };
    }
    this.sql.setBest.run(best?.value ?? null, best?.step ?? null, last, trial);
  }
}

/** The calls both releases are given: the same study, logs, restarts and attempts. */
interface Calls {
  initStudy(name: string, study: object, now: number): void;
  setTrainerFingerprint(fp: string): void;
  setProblem(text: string | null, now: number): void;
  append(entries: readonly LogEntry[], now?: number): void;
  restartLog(now: number): void;
  recordAttempt(start: AttemptStart): number;
  finishAttempt(id: number, end: AttemptEnd): void;
}

const study: Study = parseStudy({
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
});
const sim = simulate(study, ExecutionMode.stageTree);

/** A log whose rows cover every table shape: forks, failures, lost workers, reuse, cancel. */
const extras: LogEntry[] = [
  propose(9000, 't100', 40),
  metric(9001, 't100', 10, Number.NaN),
  metric(9002, 't100', 20, 0.3),
  {
    t: 9003,
    kind: 'fork',
    trial: 't101',
    source: 't100',
    at: 20,
    schedules: {},
    until: 40,
    reports: [],
  },
  task(
    9004,
    900,
    [
      ['X1', 0, 10],
      ['X2', 10, 20],
    ],
    { share: 0.5, worker: 'w9' },
  ),
  { t: 9005, kind: 'fail', task: 900, message: 'CUDA error', reason: 'trainer' },
  { t: 9005, kind: 'trialFailed', trial: 't101', message: 'CUDA error' },
  { t: 9005, kind: 'stop', trial: 't101' },
  task(9006, 901, [['X3', 20, 30]], { worker: 'w9' }),
  { t: 9007, kind: 'lost', worker: 'w9', reason: 'heartbeat timeout' },
  { t: 9008, kind: 'reuse', stage: 'X4', key: 'KX4', metric: Number.POSITIVE_INFINITY },
  task(9009, 902, [['X5', 30, 40]]),
  { t: 9010, kind: 'cancel', task: 902 },
  { t: 9011, kind: 'extend', trial: 't100', until: 50, reports: [50] },
];
const firstLog: LogEntry[] = [
  propose(1, 't1', 20),
  task(2, 1, [['S1', 0, 10]]),
  { t: 3, kind: 'done', task: 1, metric: 0.5 },
  metric(3, 't1', 10, 0.5),
];

/** Run and restarted, as the previous release's `stagetree run --restart` left a file. */
function history(s: Calls): void {
  s.initStudy(study.name, study, 100);
  s.setTrainerFingerprint('sha256:old');
  s.append(firstLog, 101);
  const a = s.recordAttempt({ task: 1, worker: 'w0', stage: 'S1', startedAt: 2 });
  s.finishAttempt(a, { endedAt: 3, outcome: 'done', seconds: { train: 1 } });
  s.restartLog(110);
  for (let i = 0; i < sim.log.length; i += 9) s.append(sim.log.slice(i, i + 9), 120 + i);
  s.append(extras, 9500);
  const done = s.recordAttempt({ task: 5, worker: 'w1', stage: 'S5', startedAt: 200 });
  s.finishAttempt(done, { endedAt: 207.5, outcome: 'done', seconds: { start: 5, train: 2.5 } });
  const failed = s.recordAttempt({ task: 900, worker: 'w9', stage: 'X2', startedAt: 9004 });
  s.finishAttempt(failed, {
    endedAt: 9005,
    outcome: 'failed',
    seconds: { train: 0.5 },
    error: 'CUDA error',
    detail: 'Traceback (most recent call last): ...',
  });
  const lost = s.recordAttempt({ task: 901, worker: 'w9', stage: 'X3', startedAt: 9006 });
  s.finishAttempt(lost, { endedAt: 9007, outcome: 'lost', error: 'heartbeat timeout' });
  const cancelled = s.recordAttempt({ task: 902, worker: 'w0', stage: 'X5', startedAt: 9009 });
  s.finishAttempt(cancelled, { endedAt: 9010, outcome: 'cancelled' });
  s.recordAttempt({ task: 903, worker: 'w0', stage: 'X6', startedAt: 9012 }); // still open
  s.setProblem('the trainer cannot load: ModuleNotFoundError: torch', 9600);
}

/** A version 3 file, made by the first three migrations and the previous release's writes. */
function v3File(file: string): void {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('foreign_keys = ON');
  for (let v = 0; v < 3; v++) {
    db.exec(MIGRATIONS[v] as string);
    db.pragma(`user_version = ${v + 1}`);
  }
  const old = new V3Store(db, study.metric.mode);
  history(old);
  old.acquire({ pid: 4242, start: '123', host: 'another-host', since: 9000 });
  db.close();
}

/** Every row of the version 3 tables, by their version 3 columns. */
const V3_TABLES: Readonly<Record<string, string>> = {
  study:
    'SELECT id, name, json, created_at, updated_at, trainer_fingerprint, problem FROM study ORDER BY id',
  events: 'SELECT seq, t, kind, json FROM events ORDER BY seq',
  trials:
    'SELECT id, seq, status, until, fork_of, fork_at, best, best_step, last_step, error FROM trials ORDER BY id',
  metrics: 'SELECT trial, step, value, seq FROM metrics ORDER BY trial, step',
  attempts: 'SELECT * FROM attempts ORDER BY id',
  stages: 'SELECT id, start, end, runs, last_task, done_at FROM stages ORDER BY id',
  owner: 'SELECT * FROM owner',
  archived_events: 'SELECT generation, seq, t, kind, json FROM archived_events ORDER BY 1, 2',
};

function rows(db: Database.Database, table: string): unknown[] {
  const sql = V3_TABLES[table] as string;
  return db.prepare(table === 'study' ? sql.replace(/FROM study/, 'FROM studies') : sql).all();
}

const EXECUTOR = "('task', 'done', 'cancel', 'fail', 'lost', 'reuse')";

describe('a version 3 file (one study) migrates to version 4 (many studies)', () => {
  it('keeps every row, fills the study columns, and reads like a file written now', () => {
    const dir = tempDir();
    const file = join(dir, 'v3.db');
    v3File(file);
    const before = new Database(file, { readonly: true });
    expect(before.pragma('user_version', { simple: true })).toBe(3);
    const old: Record<string, unknown[]> = {};
    for (const table of Object.keys(V3_TABLES)) {
      old[table] = before.prepare(V3_TABLES[table] as string).all();
    }
    before.close();
    // Each table had rows to keep.
    let tables = 0;
    for (const [table, content] of Object.entries(old)) {
      expect(content.length, table).toBeGreaterThan(0);
      tables++;
    }
    expect(tables).toBe(8);

    const store = StudyStore.open(file);
    store.close();

    const after = new Database(file, { readonly: true });
    expect(after.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    expect(after.pragma('foreign_key_check')).toEqual([]);
    expect(after.pragma('integrity_check', { simple: true })).toBe('ok');
    expect(after.prepare(`SELECT name FROM sqlite_master WHERE name = 'study'`).all()).toEqual([]);
    expect(after.prepare(`SELECT name FROM sqlite_temp_master`).all()).toEqual([]);
    let kept = 0;
    for (const table of Object.keys(V3_TABLES)) {
      expect(rows(after, table), table).toEqual(old[table]);
      kept++;
    }
    expect(kept).toBe(8);
    // The study columns: the one study (id 1), or NULL for the executor's entries and
    // stages only ever reused.
    const pairs = (sql: string) => after.prepare(sql).raw().all();
    expect(pairs(`SELECT DISTINCT kind IN ${EXECUTOR}, study FROM events ORDER BY 1`)).toEqual([
      [0, 1],
      [1, null],
    ]);
    expect(
      pairs(`SELECT DISTINCT kind IN ${EXECUTOR}, study FROM archived_events ORDER BY 1`),
    ).toEqual([
      [0, 1],
      [1, null],
    ]);
    expect(pairs('SELECT DISTINCT study FROM trials')).toEqual([[1]]);
    expect(pairs('SELECT DISTINCT study FROM metrics')).toEqual([[1]]);
    expect(pairs('SELECT DISTINCT runs > 0, study FROM stages ORDER BY 1')).toEqual([
      [0, null],
      [1, 1],
    ]);
    expect(pairs('SELECT attempt, study, weight FROM attempt_studies ORDER BY 1')).toEqual(
      (old.attempts as { id: number }[]).map((a) => [a.id, 1, 1]),
    );
    after.close();

    // What the new release reads from it is what it would have written itself.
    const fresh = StudyStore.open(join(dir, 'v4.db'));
    history(fresh);
    const migrated = StudyStore.open(file);
    expect(migrated.studyNames()).toEqual([study.name]);
    expect(migrated.study()).toEqual(fresh.study());
    expect(migrated.trainerFingerprint()).toBe('sha256:old');
    expect(migrated.events()).toEqual(fresh.events());
    expect(migrated.events(study.name)).toEqual(fresh.events(study.name));
    expect(migrated.archivedEvents()).toEqual(firstLog);
    expect(migrated.trials()).toEqual(fresh.trials());
    expect(migrated.trials(study.name)).toEqual(fresh.trials());
    expect(migrated.metrics()).toEqual(fresh.metrics());
    expect(migrated.metrics({ study: study.name })).toEqual(fresh.metrics());
    expect(migrated.stages()).toEqual(fresh.stages());
    expect(migrated.stages(study.name)).toEqual(fresh.stages(study.name));
    expect(migrated.attempts()).toEqual(fresh.attempts());
    expect(migrated.attempts(study.name)).toEqual(fresh.attempts());
    expect(migrated.unfinished()).toEqual([]);
    const status = migrated.status();
    expect(status).toEqual({ ...fresh.status(), file });
    expect(status).toMatchObject({
      finished: true,
      problem: 'the trainer cannot load: ModuleNotFoundError: torch',
      owner: null, // the old owner ran on another host: gone
      attempts: { total: 6, open: 1 },
    });
    expect(status.trials.failed).toBe(1);
    expect(status.gpuSeconds).toBeGreaterThan(sim.gpuSeconds);
    expect(migrated.summaries()).toEqual(fresh.summaries());
    fresh.close();

    // The simulated part of its log replays decision for decision.
    const r = replay(
      study,
      migrated.events().slice(0, sim.log.length),
      createTuner(study),
      engineOptions(study, ExecutionMode.stageTree),
    );
    expect(r.sameLog).toBe(true);

    // And it goes on working: resume, append, attempts, another study, restart.
    expect(migrated.initStudy(study.name, study, 10_000)).toBe('resumed');
    migrated.acquire(10_000);
    migrated.append([propose(10_001, 't200', 40), metric(10_002, 't200', 10, 0.99)], 10_002);
    const attempt = migrated.recordAttempt({
      task: 904,
      worker: 'w0',
      stage: 'X7',
      startedAt: 10_001,
    });
    migrated.finishAttempt(attempt, { endedAt: 10_002, outcome: 'done' });
    expect(migrated.status()).toMatchObject({
      updatedAt: 10_002,
      events: status.events + 2,
      trials: { total: status.trials.total + 1 },
      best: { trial: 't200', step: 10, value: 0.99 },
      attempts: { total: 7 },
      owner: { pid: process.pid, since: 10_000 },
    });
    expect(migrated.initStudy('second', { name: 'second', metric: study.metric }, 10_003)).toBe(
      'created',
    );
    migrated.append([
      { t: 10_004, kind: 'submit', study: 'second', priority: 1 },
      propose(10_004, 'second/t1', 10),
    ]);
    expect(migrated.trials('second').map((t) => t.id)).toEqual(['second/t1']);
    expect(migrated.unfinished()).toEqual(['second']);
    expect(migrated.restartLog(10_005)).toBe(status.events + 4);
    expect(migrated.events()).toEqual([]);
    expect(migrated.archivedEvents()).toHaveLength(status.events + 4);
    migrated.close();
    const last = new Database(file, { readonly: true });
    expect(
      last.prepare('SELECT generation, count(*) FROM archived_events GROUP BY 1').raw().all(),
    ).toEqual([
      [1, firstLog.length],
      [2, status.events + 4],
    ]);
    expect(last.pragma('foreign_key_check')).toEqual([]);
    last.close();
  });

  it('migrates a version 3 file that never stored a study', () => {
    const file = join(tempDir(), 'empty.db');
    const db = new Database(file);
    for (let v = 0; v < 3; v++) {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    }
    db.close();
    const store = StudyStore.open(file);
    expect(store.studyNames()).toEqual([]);
    expect(store.initStudy('s', { metric: { name: 'loss', mode: 'min' } }, 1)).toBe('created');
    store.append([propose(1, 't1', 10)]);
    expect(store.status().trials.total).toBe(1);
    store.close();
  });
});
