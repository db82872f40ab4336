import { randomBytes } from 'node:crypto';
import { mkdirSync, statSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { accountLog } from '../engine/replay.js';
import type { LogEntry, TaskId, WorkerId } from '../engine/types.js';
import {
  AttemptEndedError,
  describeValue,
  IoError,
  LogConflictError,
  NotAStoreError,
  NotFoundError,
  StagetreeError,
  StoreBusyError,
  StudyMismatchError,
  ValidationError,
} from '../errors.js';
import { METRIC_MODES } from '../study/index.js';
import type { MetricMode } from '../study/index.js';
import type { StageId, TrialId } from '../tree/index.js';
import { isBetter } from '../tuner/types.js';
import { checkCheckpointKey } from './checkpoints.js';
import { isErrno, toIoError } from './fs-errors.js';
import { canonicalJson, decodeEntry, encodeEntry, firstJsonDifference } from './json.js';
import { currentProcess, isRunning } from './owner.js';
import { migrate } from './schema.js';

/**
 * The study store: one SQLite file (WAL mode) that is the single source of truth of a
 * study run. It holds the study as validated, the engine's event log in order, and, kept
 * in step with the log in the same transactions, a table of trials and of their metrics;
 * plus the attempts workers made at tasks (timings and failures). A run killed at any
 * point leaves every committed write readable; a second run on the same file resumes by
 * replaying `events()`.
 *
 * The store reads no clock: every time it records is passed in by the caller.
 *
 * One engine runs a study at a time: `acquire` records this process as the store's owner
 * (atomically, taking over only from a process that is gone), `release` / `close` give it
 * up. Readers (`stagetree status`) need no lock.
 */

/** Longest `error` an attempt keeps (characters); a longer one is cut, with a note. */
export const MAX_ERROR_CHARS = 4096;
/** Longest `detail` (traceback) an attempt keeps (characters); a longer one is cut. */
export const MAX_DETAIL_CHARS = 65536;

export const TrialRowStatus = { active: 'active', stopped: 'stopped', failed: 'failed' } as const;
export type TrialRowStatus = (typeof TrialRowStatus)[keyof typeof TrialRowStatus];

export const AttemptOutcome = {
  done: 'done',
  failed: 'failed',
  cancelled: 'cancelled',
  lost: 'lost',
} as const;
export type AttemptOutcome = (typeof AttemptOutcome)[keyof typeof AttemptOutcome];
const OUTCOMES = Object.values(AttemptOutcome);

/** The stored study: its name, canonical JSON and the times the caller gave. */
export interface StoredStudy {
  readonly name: string;
  /** Canonical JSON (sorted keys, no whitespace) of the study as validated. */
  readonly json: string;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** A row of the `trials` table: what the log says about one trial. */
export interface TrialRow {
  readonly id: TrialId;
  /** The event (`seq`) that proposed or forked it. */
  readonly seq: number;
  readonly status: TrialRowStatus;
  readonly until: number;
  readonly forkOf: { readonly trial: TrialId; readonly at: number } | null;
  /** Its best metric (by the study's mode) and where; null before any (or only NaN). */
  readonly best: { readonly step: number; readonly value: number } | null;
  /** The highest step it has a metric at, or null. */
  readonly lastStep: number | null;
  /** Why it failed (its `trialFailed` entry's message), or null. */
  readonly error: string | null;
}

export interface StageRow {
  readonly id: string;
  /** Its step range; null for a stage only ever reused (never trained in this log). */
  readonly start: number | null;
  readonly end: number | null;
  /** Tasks that trained it (as their stage or as a re-computed ancestor); 0: reused only. */
  readonly runs: number;
  /** When a task ended with it, or a `reuse` entry marked it done; null: not done. */
  readonly doneAt: number | null;
}

/** The process that owns the store (`acquire`): one engine per store. */
export interface StoreOwner {
  readonly pid: number;
  readonly host: string;
  /** When it acquired the store (the caller's clock, seconds). */
  readonly since: number;
}

export interface MetricRow {
  readonly trial: TrialId;
  readonly step: number;
  /** NaN for a diverged run (stored as NULL). */
  readonly value: number;
}

export interface AttemptStart {
  readonly task: TaskId;
  readonly worker: WorkerId;
  /** The stage the task trains (its last run). */
  readonly stage: StageId;
  readonly startedAt: number;
}

export interface AttemptEnd {
  readonly endedAt: number;
  readonly outcome: AttemptOutcome;
  /** Seconds by phase as the worker measured them (start, load, train, eval, save, ...). */
  readonly seconds?: Readonly<Record<string, number>>;
  /** One line; cut to `MAX_ERROR_CHARS` characters, with a note of how many were cut. */
  readonly error?: string;
  /** A longer diagnostic (a traceback); cut to `MAX_DETAIL_CHARS` characters likewise. */
  readonly detail?: string;
}

export interface AttemptRow extends AttemptStart {
  readonly id: number;
  readonly endedAt: number | null;
  readonly outcome: AttemptOutcome | null;
  readonly seconds: Readonly<Record<string, number>>;
  readonly error: string | null;
  readonly detail: string | null;
}

/** What `stagetree status` shows; plain data (JSON-serialisable). */
export interface StudyStatus {
  readonly file: string;
  readonly name: string;
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly metric: { readonly name: string; readonly mode: MetricMode };
  /** Events in the log. */
  readonly events: number;
  /** The log holds a `finish` entry: the tuner ended the study. */
  readonly finished: boolean;
  readonly trials: {
    readonly total: number;
    readonly active: number;
    readonly stopped: number;
    readonly failed: number;
  };
  /**
   * The best metric of any trial by the metric's mode (NaN never; an infinity like any
   * number: -Infinity is the best loss). Ties: the earlier trial, then the earlier step.
   */
  readonly best: { readonly trial: TrialId; readonly step: number; readonly value: number } | null;
  /** Failed trials, in proposal order, with their messages. */
  readonly failed: readonly { readonly trial: TrialId; readonly message: string }[];
  readonly attempts: {
    readonly total: number;
    /** Started and not (yet) finished. */
    readonly open: number;
    /** Count and wall seconds (`endedAt - startedAt`) of finished attempts by outcome. */
    readonly byOutcome: Readonly<
      Record<AttemptOutcome, { readonly count: number; readonly seconds: number }>
    >;
    /** The workers' own seconds by phase, summed over finished attempts. */
    readonly phaseSeconds: Readonly<Record<string, number>>;
  };
  /**
   * GPU time of the study: share x wall time of every attempt, failed, lost and
   * cancelled ones included (`accountLog`, the one definition simulate uses too).
   */
  readonly gpuSeconds: number;
  /** Why the last run stopped without finishing (`setProblem`), or null. */
  readonly problem: string | null;
  /** The live process running the study now (`acquire`), or null. */
  readonly owner: { readonly pid: number; readonly since: number } | null;
}

interface StudyDbRow {
  name: string;
  json: string;
  created_at: number;
  updated_at: number;
}
interface OwnerDbRow {
  pid: number;
  start: string | null;
  host: string;
  since: number;
  token: string;
}
interface TrialDbRow {
  id: string;
  seq: number;
  status: TrialRowStatus;
  until: number;
  fork_of: string | null;
  fork_at: number | null;
  best: number | null;
  best_step: number | null;
  last_step: number | null;
  error: string | null;
}
interface AttemptDbRow {
  id: number;
  task: number;
  worker: string;
  stage: string;
  started_at: number;
  ended_at: number | null;
  outcome: AttemptOutcome | null;
  seconds: string | null;
  error: string | null;
  detail: string | null;
}

export class StudyStore {
  /** The file, as an absolute path (named in every error). */
  readonly file: string;
  private readonly db: Database.Database;
  private mode: MetricMode | null = null;
  private readonly sql: ReturnType<typeof prepare>;
  /** Tells this object's ownership apart from any other's, even in the same process. */
  private readonly token = randomBytes(16).toString('hex');
  /** Whether this object wrote the owner row (so `close` releases it). */
  private held = false;

  private constructor(file: string, db: Database.Database) {
    this.file = file;
    this.db = db;
    this.sql = prepare(db);
  }

  /**
   * Opens (creating if needed, with its folder) the study store at `path`, in WAL mode,
   * migrating it to the current schema. Refuses an SQLite file that is not a study store
   * and one written by a newer schema. A path that cannot be a store file (a folder, a
   * device such as /dev/null, a path under a file, a name too long, a read-only place) is
   * an `IoError` naming it and why; never a raw SQLite or file-system error.
   */
  static open(path: string): StudyStore {
    const file = resolve(path);
    prepareFile(file);
    let db: Database.Database;
    try {
      db = new Database(file);
    } catch (e) {
      throw storeError(e, file);
    }
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      migrate(db, file);
      return new StudyStore(file, db);
    } catch (e) {
      db.close();
      throw storeError(e, file);
    }
  }

  /**
   * Releases the store if this object owns it (`release`), then closes the file. Calling
   * it twice is harmless.
   */
  close(): void {
    if (!this.db.open) return;
    try {
      this.release();
    } finally {
      this.db.close();
    }
  }

  // ------------------------------------------------------------------ owner

  /**
   * Makes this process the store's one engine, atomically (inside `BEGIN IMMEDIATE`).
   * When another live process owns it, or another `StudyStore` object of this process,
   * throws `StoreBusyError` naming the study (the file before `initStudy`), that owner's
   * pid and since when. An owner that is gone (its pid is dead, a zombie, or a new process
   * with its start time; or it ran on another host) is taken over. Acquiring again what
   * this object holds changes nothing.
   */
  acquire(now: number): void {
    checkTime(now, 'now');
    const me = currentProcess();
    this.db
      .transaction(() => {
        const row = this.sql.getOwner.get() as OwnerDbRow | undefined;
        if (row?.token === this.token) return;
        if (row !== undefined && isRunning(row)) {
          const study = this.sql.getStudy.get() as StudyDbRow | undefined;
          throw new StoreBusyError(study?.name ?? this.file, row.pid, row.since);
        }
        this.sql.setOwner.run({ ...me, since: now, token: this.token });
      })
      .immediate();
    this.held = true;
  }

  /** Gives up the store if this object owns it (another's ownership is left alone). */
  release(): void {
    if (!this.held) return;
    this.sql.deleteOwner.run(this.token);
    this.held = false;
  }

  /** The live process that owns the store (for `stagetree status`), or null: none, or gone. */
  owner(): StoreOwner | null {
    const row = this.sql.getOwner.get() as OwnerDbRow | undefined;
    if (row === undefined || !isRunning(row)) return null;
    return { pid: row.pid, host: row.host, since: row.since };
  }

  // ------------------------------------------------------------------ study

  /**
   * Stores the study (the object `parseStudy` returned), or, when the file holds one
   * already, checks that it is the same study (canonical JSON, byte for byte) and marks
   * it updated at `now`: that is a resume. A different study is a `StudyMismatchError`
   * naming the file and the first field that differs.
   */
  initStudy(name: string, study: object, now: number): 'created' | 'resumed' {
    if (typeof name !== 'string' || name === '') {
      throw new ValidationError('name', 'a non-empty string', name);
    }
    checkTime(now, 'now');
    const json = canonicalJson(study, 'study');
    const mode = modeOf(json, this.file);
    return this.db
      .transaction((): 'created' | 'resumed' => {
        const stored = this.sql.getStudy.get() as StudyDbRow | undefined;
        if (!stored) {
          this.sql.insertStudy.run(name, json, now, now);
          this.mode = mode;
          return 'created';
        }
        if (
          stored.name === name &&
          stored.json !== json &&
          upgradeStudyJson(stored.json) === json
        ) {
          // A study stored by the previous release: the same study, with the new defaults.
          this.sql.setStudyJson.run(json, now);
          this.mode = mode;
          return 'resumed';
        }
        if (stored.name !== name || stored.json !== json) {
          const d =
            stored.name !== name
              ? { path: 'name', stored: describeValue(stored.name), given: describeValue(name) }
              : firstJsonDifference(JSON.parse(stored.json), JSON.parse(json));
          throw new StudyMismatchError(this.file, stored.name, d);
        }
        this.sql.touchStudy.run(now);
        return 'resumed';
      })
      .immediate();
  }

  /** The stored study. `NotFoundError` when `initStudy` was never called on this file. */
  study(): StoredStudy {
    const row = this.sql.getStudy.get() as StudyDbRow | undefined;
    if (!row) throw new NotFoundError('study in store', this.file, 'run initStudy first');
    return { name: row.name, json: row.json, createdAt: row.created_at, updatedAt: row.updated_at };
  }

  /**
   * Records the fingerprint of the trainer the study runs (what a resume compares to see
   * whether the trainer changed). `NotFoundError` before `initStudy`.
   */
  setTrainerFingerprint(fp: string): void {
    if (typeof fp !== 'string' || fp === '') {
      throw new ValidationError('fingerprint', 'a non-empty string', fp);
    }
    this.requireMode();
    this.sql.setFingerprint.run(fp);
  }

  /** The recorded trainer fingerprint, or null before any. `NotFoundError` before `initStudy`. */
  trainerFingerprint(): string | null {
    this.requireMode();
    return (this.sql.getStudyExtra.get() as { trainer_fingerprint: string | null })
      .trainer_fingerprint;
  }

  /**
   * Records why the run stopped without finishing (an environment failure: the trainer
   * cannot load, the disk is full), shown by `status()`; null clears it, which a run does
   * once it has started well. Also sets the updated time. Text longer than
   * `MAX_ERROR_CHARS` is cut. `NotFoundError` before `initStudy`.
   */
  setProblem(text: string | null, now: number): void {
    if (text !== null && typeof text !== 'string') {
      throw new ValidationError('problem', 'a string or null', text);
    }
    checkTime(now, 'now');
    this.requireMode();
    this.sql.setProblem.run(text === null ? null : clip(text, MAX_ERROR_CHARS), now);
  }

  /** The recorded problem (`setProblem`), or null. */
  problem(): string | null {
    this.requireMode();
    return (this.sql.getStudyExtra.get() as { problem: string | null }).problem;
  }

  // ------------------------------------------------------------------ events

  /**
   * Appends log entries, in order, in one transaction, and keeps `trials` and `metrics`
   * in step: propose/fork add an active trial, extend sets its `until`, stop stops it (a
   * failed trial stays failed), trialFailed fails it with its message, metric adds a
   * metric row and updates its best. An entry that contradicts the log (a trial proposed
   * twice, a metric of an unknown trial) rolls the whole batch back. With `now`, the
   * study's updated time is set too.
   */
  append(entries: readonly LogEntry[], now?: number): void {
    const mode = this.requireMode();
    if (now !== undefined) checkTime(now, 'now');
    this.db
      .transaction(() => {
        const touched = new Set<TrialId>();
        entries.forEach((entry, i) => {
          const where = `entries[${i}]`;
          checkEntry(entry, where);
          const info = this.sql.insertEvent.run(entry.t, entry.kind, encodeEntry(entry, where));
          this.applyEntry(entry, Number(info.lastInsertRowid), where, touched);
        });
        for (const trial of touched) this.refreshBest(trial, mode);
        if (now !== undefined) this.sql.touchStudy.run(now);
      })
      .immediate();
  }

  /** Every log entry, in order (what a resumed run replays). */
  events(): LogEntry[] {
    const rows = this.sql.allEvents.all() as { seq: number; json: string }[];
    return rows.map((r) => decodeEntry(r.json, `events[seq ${r.seq}]`));
  }

  eventCount(): number {
    return (this.sql.countEvents.get() as { n: number }).n;
  }

  /**
   * Starts the log afresh (`stagetree run --restart`: a log that no longer replays must
   * never strand a study). In one transaction, moves every event into `archived_events`
   * as a new generation and clears `trials`, `metrics` and `stages`; `attempts` stay (the
   * record of the GPU time spent), and so do the study, its fingerprint and problem.
   * Returns the number of events archived (0: the log was empty, no generation is made).
   */
  restartLog(now: number): number {
    checkTime(now, 'now');
    this.requireMode();
    return this.db
      .transaction((): number => {
        const { g } = this.sql.nextGeneration.get() as { g: number };
        const moved = this.sql.archiveEvents.run(g).changes;
        this.sql.clearMetrics.run();
        this.sql.clearTrials.run();
        this.sql.clearStages.run();
        this.sql.clearEvents.run();
        this.sql.touchStudy.run(now);
        return moved;
      })
      .immediate();
  }

  /**
   * The log entries of the most recent `restartLog`, in order (empty before any): what a
   * restarted run reads to offer the checkpoints the old log trained to the new run.
   */
  archivedEvents(): LogEntry[] {
    const rows = this.sql.lastArchive.all() as { generation: number; seq: number; json: string }[];
    return rows.map((r) =>
      decodeEntry(r.json, `archived_events[generation ${r.generation}, seq ${r.seq}]`),
    );
  }

  private applyEntry(entry: LogEntry, seq: number, where: string, touched: Set<TrialId>): void {
    switch (entry.kind) {
      case 'propose':
        this.addTrial(entry.trial, seq, entry.spec.until, null, null, where);
        return;
      case 'fork':
        this.requireTrial(entry.source, `${where}.source`);
        this.addTrial(entry.trial, seq, entry.until, entry.source, entry.at, where);
        return;
      case 'extend':
        this.requireTrial(entry.trial, `${where}.trial`);
        this.sql.setUntil.run(entry.until, entry.trial);
        return;
      case 'stop':
        this.requireTrial(entry.trial, `${where}.trial`);
        this.sql.stopTrial.run(entry.trial);
        return;
      case 'metric':
        this.requireTrial(entry.trial, `${where}.trial`);
        this.sql.upsertMetric.run(
          entry.trial,
          entry.step,
          Number.isNaN(entry.value) ? null : entry.value,
          seq,
        );
        touched.add(entry.trial);
        return;
      case 'trialFailed':
        this.requireTrial(entry.trial, `${where}.trial`);
        this.sql.failTrial.run(entry.message, entry.trial);
        return;
      case 'task': {
        const runs = entry.task.runs;
        runs.forEach((r, i) => {
          this.sql.touchStage.run({
            id: r.stage,
            start: r.start,
            end: r.end,
            task: i === runs.length - 1 ? entry.task.id : null,
          });
        });
        return;
      }
      case 'done':
        this.sql.stageDone.run({ t: entry.t, task: entry.task });
        return;
      case 'reuse':
        // Done without training: `runs` stays; a stage this log never trained gets a row.
        this.sql.reuseStage.run({ id: entry.stage, t: entry.t });
        return;
      case 'cancel':
      case 'fail':
      case 'lost':
      case 'finish':
      case 'submit':
        return;
    }
  }

  private addTrial(
    id: TrialId,
    seq: number,
    until: number,
    forkOf: TrialId | null,
    forkAt: number | null,
    where: string,
  ): void {
    if (this.sql.getTrial.get(id) !== undefined) {
      throw new LogConflictError(this.file, where, id, 'duplicate');
    }
    this.sql.insertTrial.run(id, seq, until, forkOf, forkAt);
  }

  private requireTrial(id: TrialId, where: string): void {
    if (this.sql.getTrial.get(id) === undefined) {
      throw new LogConflictError(this.file, where, id, 'unknown');
    }
  }

  /** Recomputes a trial's best and last step from its metric rows. */
  private refreshBest(trial: TrialId, mode: MetricMode): void {
    const rows = this.sql.trialMetrics.all(trial) as { step: number; value: number | null }[];
    let best: { step: number; value: number } | null = null;
    let last: number | null = null;
    for (const r of rows) {
      last = r.step;
      if (r.value === null) continue;
      if (best === null || isBetter(mode, r.value, best.value))
        best = { step: r.step, value: r.value };
    }
    this.sql.setBest.run(best?.value ?? null, best?.step ?? null, last, trial);
  }

  // ------------------------------------------------------------------ trials

  /**
   * Every stage a task trained or a `reuse` entry marked done, with how many times it was
   * trained (more than once only after a failure or a lost state; 0: reused only) and when
   * it was done (null: never finished). Stages with a range first, by start.
   */
  stages(): StageRow[] {
    return (
      this.sql.allStages.all() as {
        id: string;
        start: number | null;
        end: number | null;
        runs: number;
        done_at: number | null;
      }[]
    ).map((r) => ({ id: r.id, start: r.start, end: r.end, runs: r.runs, doneAt: r.done_at }));
  }

  /** Every trial, in proposal order. */
  trials(): TrialRow[] {
    return (this.sql.allTrials.all() as TrialDbRow[]).map(toTrialRow);
  }

  /** One trial. `NotFoundError` when the log never proposed it. */
  trial(id: TrialId): TrialRow {
    const row = this.sql.getTrial.get(id) as TrialDbRow | undefined;
    if (!row) throw new NotFoundError('trial', id, `${this.file} has no such trial`);
    return toTrialRow(row);
  }

  /** A trial's metrics by step (all trials' when `trial` is omitted, by trial then step). */
  metrics(trial?: TrialId): MetricRow[] {
    const rows = (
      trial === undefined ? this.sql.allMetrics.all() : this.sql.trialMetricsFull.all(trial)
    ) as { trial: string; step: number; value: number | null }[];
    return rows.map((r) => ({ trial: r.trial, step: r.step, value: r.value ?? Number.NaN }));
  }

  // ------------------------------------------------------------------ attempts

  /** Records that a worker started a task; returns the attempt's id. */
  recordAttempt(start: AttemptStart): number {
    if (!Number.isSafeInteger(start.task) || start.task < 0) {
      throw new ValidationError('task', 'an integer >= 0', start.task);
    }
    checkTime(start.startedAt, 'startedAt');
    const info = this.sql.insertAttempt.run(start.task, start.worker, start.stage, start.startedAt);
    return Number(info.lastInsertRowid);
  }

  /**
   * Records how an attempt ended: its outcome, the worker's seconds by phase (summed in
   * `status().attempts.phaseSeconds`), its error and detail, cut to `MAX_ERROR_CHARS` and
   * `MAX_DETAIL_CHARS` with a note of how much was cut (a runaway error text must not
   * bloat the store). `NotFoundError` for an unknown attempt, `AttemptEndedError` for one
   * that ended already.
   */
  finishAttempt(id: number, end: AttemptEnd): void {
    checkTime(end.endedAt, 'endedAt');
    if (!OUTCOMES.includes(end.outcome)) {
      throw new ValidationError(
        'outcome',
        OUTCOMES.map((o) => JSON.stringify(o)).join(' | '),
        end.outcome,
      );
    }
    checkOptionalText(end.error, 'error');
    checkOptionalText(end.detail, 'detail');
    const seconds = end.seconds ?? {};
    for (const [k, v] of Object.entries(seconds)) {
      if (!Number.isFinite(v) || v < 0) {
        throw new ValidationError(['seconds', k], 'a finite number >= 0', v);
      }
    }
    this.db
      .transaction(() => {
        const row = this.sql.getAttempt.get(id) as AttemptDbRow | undefined;
        if (!row)
          throw new NotFoundError('attempt', String(id), `${this.file} has no such attempt`);
        if (row.outcome !== null) {
          throw new AttemptEndedError(this.file, id, row.task, row.outcome);
        }
        this.sql.finishAttempt.run(
          end.endedAt,
          end.outcome,
          canonicalJson(seconds, 'seconds'),
          end.error === undefined ? null : clip(end.error, MAX_ERROR_CHARS),
          end.detail === undefined ? null : clip(end.detail, MAX_DETAIL_CHARS),
          id,
        );
      })
      .immediate();
  }

  /**
   * Ends every attempt still open as `lost` at `now` (a resumed run does this first: the
   * workers of the killed run are gone). Returns how many.
   */
  loseOpenAttempts(now: number, message: string): number {
    checkTime(now, 'now');
    if (typeof message !== 'string') throw new ValidationError('message', 'a string', message);
    return this.sql.loseOpen.run(now, clip(message, MAX_ERROR_CHARS)).changes;
  }

  /** Every attempt, in the order they started. */
  attempts(): AttemptRow[] {
    return (this.sql.allAttempts.all() as AttemptDbRow[]).map((r) => ({
      id: r.id,
      task: r.task,
      worker: r.worker,
      stage: r.stage,
      startedAt: r.started_at,
      endedAt: r.ended_at,
      outcome: r.outcome,
      seconds: r.seconds === null ? {} : (JSON.parse(r.seconds) as Record<string, number>),
      error: r.error,
      detail: r.detail,
    }));
  }

  // ------------------------------------------------------------------ status

  /**
   * What `stagetree status` prints: trials, the best metric, failures, attempts, the last
   * run's problem and the live owner.
   */
  status(): StudyStatus {
    return this.db
      .transaction((): StudyStatus => {
        const study = this.study();
        const mode = this.requireMode();
        const parsed = JSON.parse(study.json) as { metric: { name: unknown } };
        const trials = this.trials();
        const counts = { total: trials.length, active: 0, stopped: 0, failed: 0 };
        let best: StudyStatus['best'] = null;
        const failed: { trial: TrialId; message: string }[] = [];
        for (const t of trials) {
          counts[t.status]++;
          if (t.status === 'failed') failed.push({ trial: t.id, message: t.error ?? '' });
          if (t.best && (best === null || isBetter(mode, t.best.value, best.value))) {
            best = { trial: t.id, step: t.best.step, value: t.best.value };
          }
        }
        const byOutcome = Object.fromEntries(
          OUTCOMES.map((o) => [o, { count: 0, seconds: 0 }]),
        ) as Record<AttemptOutcome, { count: number; seconds: number }>;
        const phaseSeconds: Record<string, number> = {};
        let open = 0;
        const attempts = this.attempts();
        const owner = this.owner();
        for (const a of attempts) {
          if (a.outcome === null || a.endedAt === null) {
            open++;
            continue;
          }
          byOutcome[a.outcome].count++;
          byOutcome[a.outcome].seconds += Math.max(0, a.endedAt - a.startedAt);
          for (const [k, v] of Object.entries(a.seconds))
            phaseSeconds[k] = (phaseSeconds[k] ?? 0) + v;
        }
        return {
          file: this.file,
          name: study.name,
          createdAt: study.createdAt,
          updatedAt: study.updatedAt,
          metric: { name: String(parsed.metric.name), mode },
          events: this.eventCount(),
          finished: (this.sql.hasFinish.get() as { n: number }).n > 0,
          trials: counts,
          best,
          failed,
          attempts: { total: attempts.length, open, byOutcome, phaseSeconds },
          gpuSeconds: accountLog(this.events()).gpuSeconds,
          problem: this.problem(),
          owner: owner === null ? null : { pid: owner.pid, since: owner.since },
        };
      })
      .deferred();
  }

  /** The study's metric mode (read once; another connection may have stored the study). */
  private requireMode(): MetricMode {
    if (this.mode === null) {
      const row = this.sql.getStudy.get() as StudyDbRow | undefined;
      if (!row) throw new NotFoundError('study in store', this.file, 'run initStudy first');
      this.mode = modeOf(row.json, this.file);
    }
    return this.mode;
  }
}

function prepare(db: Database.Database) {
  return {
    getStudy: db.prepare('SELECT name, json, created_at, updated_at FROM study WHERE id = 1'),
    insertStudy: db.prepare(
      'INSERT INTO study (id, name, json, created_at, updated_at) VALUES (1, ?, ?, ?, ?)',
    ),
    touchStudy: db.prepare('UPDATE study SET updated_at = ? WHERE id = 1'),
    setStudyJson: db.prepare('UPDATE study SET json = ?, updated_at = ? WHERE id = 1'),
    getStudyExtra: db.prepare('SELECT trainer_fingerprint, problem FROM study WHERE id = 1'),
    setFingerprint: db.prepare('UPDATE study SET trainer_fingerprint = ? WHERE id = 1'),
    setProblem: db.prepare('UPDATE study SET problem = ?, updated_at = ? WHERE id = 1'),
    getOwner: db.prepare('SELECT pid, start, host, since, token FROM owner WHERE id = 1'),
    setOwner: db.prepare(
      `INSERT OR REPLACE INTO owner (id, pid, start, host, since, token)
       VALUES (1, @pid, @start, @host, @since, @token)`,
    ),
    deleteOwner: db.prepare('DELETE FROM owner WHERE id = 1 AND token = ?'),
    nextGeneration: db.prepare('SELECT coalesce(max(generation), 0) + 1 AS g FROM archived_events'),
    archiveEvents: db.prepare(
      `INSERT INTO archived_events (generation, seq, t, kind, json)
       SELECT ?, seq, t, kind, json FROM events ORDER BY seq`,
    ),
    lastArchive: db.prepare(
      `SELECT generation, seq, json FROM archived_events
       WHERE generation = (SELECT max(generation) FROM archived_events) ORDER BY seq`,
    ),
    clearEvents: db.prepare('DELETE FROM events'),
    clearTrials: db.prepare('DELETE FROM trials'),
    clearMetrics: db.prepare('DELETE FROM metrics'),
    clearStages: db.prepare('DELETE FROM stages'),
    insertEvent: db.prepare('INSERT INTO events (t, kind, json) VALUES (?, ?, ?)'),
    allEvents: db.prepare('SELECT seq, json FROM events ORDER BY seq'),
    countEvents: db.prepare('SELECT count(*) AS n FROM events'),
    hasFinish: db.prepare(`SELECT count(*) AS n FROM events WHERE kind = 'finish'`),
    getTrial: db.prepare('SELECT * FROM trials WHERE id = ?'),
    allTrials: db.prepare('SELECT * FROM trials ORDER BY seq'),
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
    trialMetricsFull: db.prepare(
      'SELECT trial, step, value FROM metrics WHERE trial = ? ORDER BY step',
    ),
    allMetrics: db.prepare(
      'SELECT m.trial, m.step, m.value FROM metrics m JOIN trials t ON t.id = m.trial ORDER BY t.seq, m.step',
    ),
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
    allStages: db.prepare(
      'SELECT id, start, end, runs, done_at FROM stages ORDER BY start IS NULL, start, id',
    ),
    insertAttempt: db.prepare(
      'INSERT INTO attempts (task, worker, stage, started_at) VALUES (?, ?, ?, ?)',
    ),
    getAttempt: db.prepare('SELECT * FROM attempts WHERE id = ?'),
    finishAttempt: db.prepare(
      'UPDATE attempts SET ended_at = ?, outcome = ?, seconds = ?, error = ?, detail = ? WHERE id = ?',
    ),
    loseOpen: db.prepare(
      `UPDATE attempts SET ended_at = ?, outcome = 'lost', seconds = '{}', error = ? WHERE outcome IS NULL`,
    ),
    allAttempts: db.prepare('SELECT * FROM attempts ORDER BY id'),
  };
}

function toTrialRow(r: TrialDbRow): TrialRow {
  return {
    id: r.id,
    seq: r.seq,
    status: r.status,
    until: r.until,
    forkOf: r.fork_of === null ? null : { trial: r.fork_of, at: r.fork_at ?? 0 },
    best: r.best === null || r.best_step === null ? null : { step: r.best_step, value: r.best },
    lastStep: r.last_step,
    error: r.error,
  };
}

/** The metric mode of a study's JSON (`metric.mode`). */
function modeOf(json: string, file: string): MetricMode {
  const study = JSON.parse(json) as { metric?: { mode?: unknown } };
  const mode = study.metric?.mode;
  if (!METRIC_MODES.includes(mode as MetricMode)) {
    throw new ValidationError(
      'study.metric.mode',
      `${METRIC_MODES.map((m) => JSON.stringify(m)).join(' or ')} (in ${file})`,
      mode,
    );
  }
  return mode as MetricMode;
}

function checkTime(t: unknown, what: string): void {
  if (typeof t !== 'number' || !Number.isFinite(t)) {
    throw new ValidationError(what, 'a finite number (seconds)', t);
  }
}

/** Every log entry kind (a record, so a kind added to `LogEntry` fails to compile here). */
const KIND_NAMES: Readonly<Record<LogEntry['kind'], true>> = {
  propose: true,
  fork: true,
  extend: true,
  stop: true,
  task: true,
  done: true,
  cancel: true,
  submit: true,
  reuse: true,
  metric: true,
  fail: true,
  lost: true,
  trialFailed: true,
  finish: true,
};
const KINDS = new Set<string>(Object.keys(KIND_NAMES));

/** The fields the store itself relies on; the rest is the engine's business. */
function checkEntry(entry: LogEntry, where: string): void {
  const e = entry as unknown as Record<string, unknown>;
  if (typeof e !== 'object') throw new ValidationError(where, 'a log entry object', entry);
  if (!KINDS.has(e['kind'] as string)) {
    throw new ValidationError(`${where}.kind`, `one of ${[...KINDS].join(', ')}`, e['kind']);
  }
  checkTime(e['t'], `${where}.t`);
  const int = (field: string, value: unknown) => {
    if (!Number.isSafeInteger(value) || (value as number) < 0) {
      throw new ValidationError(`${where}.${field}`, 'an integer >= 0', value);
    }
  };
  const str = (field: string, value: unknown) => {
    if (typeof value !== 'string' || value === '') {
      throw new ValidationError(`${where}.${field}`, 'a non-empty string', value);
    }
  };
  // A metric: any number, NaN and infinities included (a diverged trial is normal).
  const num = (field: string, value: unknown) => {
    if (typeof value !== 'number') {
      throw new ValidationError(
        `${where}.${field}`,
        'a number (NaN and infinities allowed)',
        value,
      );
    }
  };
  switch (entry.kind) {
    case 'propose':
      str('trial', entry.trial);
      int('spec.until', (entry.spec as { until?: unknown } | undefined)?.until);
      return;
    case 'fork':
      str('trial', entry.trial);
      str('source', entry.source);
      int('at', entry.at);
      int('until', entry.until);
      return;
    case 'extend':
      str('trial', entry.trial);
      int('until', entry.until);
      return;
    case 'stop':
      str('trial', entry.trial);
      return;
    case 'metric':
      str('trial', entry.trial);
      int('step', entry.step);
      num('value', entry.value);
      return;
    case 'trialFailed':
      str('trial', entry.trial);
      if (typeof entry.message !== 'string') {
        throw new ValidationError(`${where}.message`, 'a string', entry.message);
      }
      return;
    case 'done':
      int('task', entry.task);
      num('metric', entry.metric);
      return;
    case 'reuse':
      str('stage', entry.stage);
      checkCheckpointKey(entry.key, `${where}.key`);
      num('metric', entry.metric);
      return;
    case 'cancel':
    case 'fail':
      int('task', entry.task);
      return;
    case 'finish':
      if (entry.study !== undefined) str('study', entry.study);
      return;
    case 'submit':
      str('study', entry.study);
      num('priority', entry.priority);
      return;
    case 'lost':
    case 'task':
      return;
  }
}

function isSqliteError(e: unknown): e is Error & { code: string } {
  return e instanceof Database.SqliteError;
}

function checkOptionalText(text: unknown, what: string): void {
  if (text !== undefined && typeof text !== 'string') {
    throw new ValidationError(what, 'a string', text);
  }
}

/**
 * `text` cut to at most `limit` characters, ending with a note of how many were cut
 * ("... [12345 more characters cut]"); unchanged when it fits. Never splits a surrogate
 * pair.
 */
export function clip(text: string, limit: number): string {
  if (text.length <= limit) return text;
  const note = (n: number) => ` ... [${n} more characters cut]`;
  let keep = Math.max(0, limit - note(text.length).length);
  // Fewer characters cut can make a shorter note: keep as many as fit exactly.
  while (keep < text.length && keep + 1 + note(text.length - keep - 1).length <= limit) keep++;
  const last = text.charCodeAt(keep - 1);
  if (last >= 0xd800 && last <= 0xdbff) keep--;
  return text.slice(0, keep) + note(text.length - keep);
}

/**
 * Checks, before SQLite sees it, that `file` can be a study store file, and creates its
 * folder: an existing path must be a regular file (not a folder, not a device such as
 * /dev/null, where SQLite would write `/dev/null-journal`).
 */
function prepareFile(file: string): void {
  let stat: Stats | undefined;
  try {
    stat = statSync(file);
  } catch (e) {
    if (!isErrno(e, 'ENOENT')) throw toIoError(e, file, 'cannot use it as a study store');
  }
  if (stat?.isDirectory()) {
    throw new IoError(file, 'is a folder, not a study store file; name a file (e.g. study.db)');
  }
  if (stat !== undefined && !stat.isFile()) {
    throw new IoError(
      file,
      `is not a regular file (${fileKind(stat)}); name a study store file (e.g. study.db)`,
    );
  }
  if (stat !== undefined) return;
  try {
    mkdirSync(dirname(file), { recursive: true });
  } catch (e) {
    throw toIoError(e, file, 'cannot create its folder');
  }
}

function fileKind(stat: Stats): string {
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  if (stat.isFIFO()) return 'a named pipe';
  if (stat.isSocket()) return 'a socket';
  return 'not a file';
}

/** What SQLite's result codes mean for the user. */
const SQLITE_PROBLEMS: Readonly<Record<string, string>> = {
  SQLITE_CANTOPEN: 'cannot open the file (is its folder writable?)',
  SQLITE_READONLY: 'the file or its folder is read-only; make them writable',
  SQLITE_FULL: 'the disk is full; free some space',
  SQLITE_PERM: 'permission denied; make the file and its folder writable',
  SQLITE_BUSY: 'another process holds the file locked; try again',
};

/**
 * An error from opening a store, as the store reports it: stagetree's own errors as they
 * are; a file that is not SQLite or is damaged a `NotAStoreError`; every other SQLite or
 * file-system error an `IoError` naming the file.
 */
function storeError(e: unknown, file: string): unknown {
  if (e instanceof StagetreeError) return e;
  if (isSqliteError(e)) {
    if (e.code === 'SQLITE_NOTADB' || e.code === 'SQLITE_CORRUPT') {
      return new NotAStoreError(file, e.message, { cause: e });
    }
    const base = e.code.replace(/^(SQLITE_[A-Z]+).*$/, '$1');
    const hint = SQLITE_PROBLEMS[base];
    return new IoError(
      file,
      `cannot use it as a study store: ${e.code}: ${e.message}${hint ? `; ${hint}` : ''}`,
      { cause: e },
    );
  }
  return toIoError(e, file, 'cannot use it as a study store');
}

/**
 * A study as stored before the hardening release, with the fields that release added set
 * to the values that kept its meaning (`cpuOnly` false: a GPU share of 0 was rejected then;
 * no `taskTimeout`; no trainer `version`), as canonical JSON; the text unchanged when it
 * is not such a study.
 */
export function upgradeStudyJson(text: string): string {
  const parsed: unknown = JSON.parse(text);
  if (typeof parsed !== 'object' || parsed === null || 'cpuOnly' in parsed) return text;
  const study = parsed as Record<string, unknown>;
  const trainer = study.trainer as Record<string, unknown> | undefined;
  const upgraded: Record<string, unknown> = { ...study, cpuOnly: false, taskTimeout: null };
  if (trainer && (trainer.kind === 'node' || trainer.kind === 'python') && !('version' in trainer))
    upgraded.trainer = { ...trainer, version: null };
  return canonicalJson(upgraded, 'study');
}
