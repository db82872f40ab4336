import { randomBytes } from 'node:crypto';
import { mkdirSync, statSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { accountLog } from '../engine/replay.js';
import type { LogEntry, TaskId, WorkerId } from '../engine/types.js';
import {
  AttemptEndedError,
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
 * The study store: one SQLite file (WAL mode) that is the single source of truth of the
 * studies one engine (an executor) runs. It holds each study as validated, the engine's
 * one event log in order (the studies interleaved, each entry routed to its study), and,
 * kept in step with the log in the same transactions, a table of trials and of their
 * metrics; plus the attempts workers made at tasks (timings and failures, credited to the
 * studies that demanded them). A run killed at any point leaves every committed write
 * readable; a second run on the same file resumes by replaying `events()`.
 *
 * The first study created in the file is its *primary*: the engine's own study, whose
 * trials are `t1, t2, ...` and whose `finish` entry names no study. Every per-study method
 * takes an optional study name and defaults to the primary, so a file of one study reads
 * as it always did.
 *
 * The store reads no clock: every time it records is passed in by the caller.
 *
 * One engine runs a store at a time: `acquire` records this process as the store's owner
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

/** Most studies one task entry or attempt may name (`studies`). */
export const MAX_TASK_STUDIES = 1000;

export interface AttemptStart {
  readonly task: TaskId;
  readonly worker: WorkerId;
  /** The stage the task trains (its last run). */
  readonly stage: StageId;
  readonly startedAt: number;
  /**
   * The studies (by name) that demanded the task when it started (the `task` entry's
   * `studies`): the first (the earliest submitted, the one that trained it) is credited
   * the attempt; the others are recorded as having reused it. Default: the primary alone.
   */
  readonly studies?: readonly string[] | undefined;
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

export interface AttemptRow extends Omit<AttemptStart, 'studies'> {
  readonly id: number;
  readonly endedAt: number | null;
  readonly outcome: AttemptOutcome | null;
  readonly seconds: Readonly<Record<string, number>>;
  readonly error: string | null;
  readonly detail: string | null;
}

/** What `stagetree status` shows of one study; plain data (JSON-serialisable). */
export interface StudyStatus {
  readonly file: string;
  readonly name: string;
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly metric: { readonly name: string; readonly mode: MetricMode };
  /** Events in the log (the whole log, every study's and the executor's entries). */
  readonly events: number;
  /** The log holds this study's `finish` entry: the tuner ended it (or it was cancelled). */
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
  /**
   * The attempts credited to the study: an attempt several studies demanded counts for
   * the earliest submitted of them (the others reused it).
   */
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
   * cancelled ones included (`accountLog`, the one definition simulate uses too); a task
   * several studies demanded is split between them equally.
   */
  readonly gpuSeconds: number;
  /** Why the last run stopped without finishing (`setProblem`), or null. */
  readonly problem: string | null;
  /** The live process running the store now (`acquire`), or null. */
  readonly owner: { readonly pid: number; readonly since: number } | null;
}

/** One study of a store, in short (`summaries()`, for `stagetree status` of many). */
export interface StudySummary {
  readonly name: string;
  readonly finished: boolean;
  readonly trials: StudyStatus['trials'];
  readonly best: StudyStatus['best'];
  readonly gpuSeconds: number;
}

interface StudyDbRow {
  id: number;
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
  study: number;
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
/** A study of the file: its row id and name. */
interface StudyRef {
  readonly id: number;
  readonly name: string;
}

/** The study a trial id belongs to: the name before its first '/', else the primary (null). */
function studyOfTrial(trial: TrialId): string | null {
  const slash = trial.indexOf('/');
  return slash < 0 ? null : trial.slice(0, slash);
}

export class StudyStore {
  /** The file, as an absolute path (named in every error). */
  readonly file: string;
  private readonly db: Database.Database;
  /** Metric modes by study id (a study's JSON never changes its mode once stored). */
  private readonly modes = new Map<number, MetricMode>();
  /** The first study of the file, once there is one (studies are never deleted). */
  private first: StudyRef | null = null;
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
   * throws `StoreBusyError` naming the primary study (the file before `initStudy`), that
   * owner's pid and since when. An owner that is gone (its pid is dead, a zombie, or a new
   * process with its start time; or it ran on another host) is taken over. Acquiring again
   * what this object holds changes nothing.
   */
  acquire(now: number): void {
    checkTime(now, 'now');
    const me = currentProcess();
    this.db
      .transaction(() => {
        const row = this.sql.getOwner.get() as OwnerDbRow | undefined;
        if (row?.token === this.token) return;
        if (row !== undefined && isRunning(row)) {
          const primary = this.sql.getPrimary.get() as StudyDbRow | undefined;
          throw new StoreBusyError(primary?.name ?? this.file, row.pid, row.since);
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

  // ------------------------------------------------------------------ studies

  /**
   * Stores a study (the object `parseStudy` returned) under `name`, or, when the file
   * holds a study of that name already, checks that it is the same study (canonical JSON,
   * byte for byte) and marks it updated at `now`: that is a resume. A different study of
   * that name is a `StudyMismatchError` naming the file and the first field that differs;
   * a new name adds a study to the file (the first one created is the primary). Names
   * never contain '/' (a trial `NAME/t1` belongs to study NAME).
   */
  initStudy(name: string, study: object, now: number): 'created' | 'resumed' {
    if (typeof name !== 'string' || name === '' || name.includes('/')) {
      throw new ValidationError('name', "a non-empty string without '/'", name);
    }
    checkTime(now, 'now');
    const json = canonicalJson(study, 'study');
    const mode = modeOf(json, this.file);
    return this.db
      .transaction((): 'created' | 'resumed' => {
        const stored = this.sql.getStudyByName.get(name) as StudyDbRow | undefined;
        if (!stored) {
          const info = this.sql.insertStudy.run(name, json, now, now);
          this.modes.set(Number(info.lastInsertRowid), mode);
          return 'created';
        }
        if (stored.json !== json && upgradeStudyJson(stored.json) === json) {
          // A study stored by the previous release: the same study, with the new defaults.
          this.sql.setStudyJson.run(json, now, stored.id);
          this.modes.set(stored.id, mode);
          return 'resumed';
        }
        if (stored.json !== json) {
          const d = firstJsonDifference(JSON.parse(stored.json), JSON.parse(json));
          throw new StudyMismatchError(this.file, stored.name, d);
        }
        this.sql.touchStudy.run(now, stored.id);
        return 'resumed';
      })
      .immediate();
  }

  /** The names of the file's studies, in the order they were created (the primary first). */
  studyNames(): string[] {
    return this.sql.studyNames.all() as string[];
  }

  /**
   * The studies whose `finish` entry the current log does not hold (still to run or to
   * resume), in the order they were created.
   */
  unfinished(): string[] {
    return this.sql.unfinished.all() as string[];
  }

  /**
   * A stored study (default: the primary). `NotFoundError` when `initStudy` was never
   * called on this file, or for a name the file does not hold.
   */
  study(name?: string): StoredStudy {
    const ref = this.studyRef(name);
    const row = this.sql.getStudy.get(ref.id) as StudyDbRow;
    return { name: row.name, json: row.json, createdAt: row.created_at, updatedAt: row.updated_at };
  }

  /**
   * Records the fingerprint of the trainer a study (default: the primary) runs: what a
   * resume compares to see whether the trainer changed. `NotFoundError` before `initStudy`.
   */
  setTrainerFingerprint(fp: string, name?: string): void {
    if (typeof fp !== 'string' || fp === '') {
      throw new ValidationError('fingerprint', 'a non-empty string', fp);
    }
    this.sql.setFingerprint.run(fp, this.studyRef(name).id);
  }

  /**
   * A study's (default: the primary's) recorded trainer fingerprint, or null before any.
   * `NotFoundError` before `initStudy`.
   */
  trainerFingerprint(name?: string): string | null {
    return (
      this.sql.getStudyExtra.get(this.studyRef(name).id) as { trainer_fingerprint: string | null }
    ).trainer_fingerprint;
  }

  /**
   * Records why a study's (default: the primary's) run stopped without finishing (an
   * environment failure: the trainer cannot load, the disk is full), shown by `status()`;
   * null clears it, which a run does once it has started well. Also sets its updated
   * time. Text longer than `MAX_ERROR_CHARS` is cut. `NotFoundError` before `initStudy`.
   */
  setProblem(text: string | null, now: number, name?: string): void {
    if (text !== null && typeof text !== 'string') {
      throw new ValidationError('problem', 'a string or null', text);
    }
    checkTime(now, 'now');
    const ref = this.studyRef(name);
    this.sql.setProblem.run(text === null ? null : clip(text, MAX_ERROR_CHARS), now, ref.id);
  }

  /** A study's (default: the primary's) recorded problem (`setProblem`), or null. */
  problem(name?: string): string | null {
    return (this.sql.getStudyExtra.get(this.studyRef(name).id) as { problem: string | null })
      .problem;
  }

  // ------------------------------------------------------------------ events

  /**
   * Appends entries of the engine's log, in order, in one transaction, each routed to its
   * study (a trial entry by its trial id: `NAME/t1` is study NAME's, `t1` the primary's;
   * `submit` and `finish` by their `study`, a `finish` without one the primary's; the
   * executor's entries, tasks and workers, to none), and keeps `trials`, `metrics` and
   * `stages` in step: propose/fork add an active trial, extend sets its `until`, stop
   * stops it (a failed trial stays failed), trialFailed fails it with its message, metric
   * adds a metric row and updates its best; a task adds its stages, credited to the first
   * of its `studies`. An entry that contradicts the log (a trial proposed twice, a metric
   * of an unknown trial) or names a study the file does not hold (`NotFoundError`: add it
   * with `initStudy` first) rolls the whole batch back. With `now`, the updated time of
   * the studies the batch has entries of is set too (of every study when it has only the
   * executor's entries).
   */
  append(entries: readonly LogEntry[], now?: number): void {
    const primary = this.primary();
    if (now !== undefined) checkTime(now, 'now');
    this.db
      .transaction(() => {
        const names = new Map<string, number>([[primary.name, primary.id]]);
        const studyId = (name: string, where: string): number => {
          let id = names.get(name);
          if (id === undefined) {
            const row = this.sql.getStudyByName.get(name) as StudyDbRow | undefined;
            if (!row) {
              throw new NotFoundError(
                'study',
                name,
                `${this.file}: ${where} names it, and the store holds no such study; ` +
                  'add it with initStudy before appending its entries',
              );
            }
            id = row.id;
            names.set(name, id);
          }
          return id;
        };
        const touched = new Map<TrialId, number>();
        const studies = new Set<number>();
        entries.forEach((entry, i) => {
          const where = `entries[${i}]`;
          checkEntry(entry, where);
          const study = this.routeEntry(entry, where, primary.id, studyId);
          const info = this.sql.insertEvent.run(
            entry.t,
            entry.kind,
            encodeEntry(entry, where),
            study,
          );
          if (study !== null) studies.add(study);
          this.applyEntry(entry, Number(info.lastInsertRowid), where, study, touched, (n) =>
            studyId(n, `${where}.studies`),
          );
        });
        for (const [trial, study] of touched) this.refreshBest(trial, this.modeOfStudy(study));
        if (now !== undefined) {
          if (studies.size === 0) this.sql.touchAllStudies.run(now);
          for (const id of studies) this.sql.touchStudy.run(now, id);
        }
      })
      .immediate();
  }

  /**
   * Log entries, in order. Without a name, the whole log: every study's entries and the
   * executor's (what a resumed run replays); with one, only that study's (its trials'
   * entries, its `submit` and `finish`).
   */
  events(name?: string): LogEntry[] {
    const rows = (
      name === undefined
        ? this.sql.allEvents.all()
        : this.sql.studyEvents.all(this.studyRef(name).id)
    ) as { seq: number; json: string }[];
    return rows.map((r) => decodeEntry(r.json, `events[seq ${r.seq}]`));
  }

  /** Entries in the whole log. */
  eventCount(): number {
    return (this.sql.countEvents.get() as { n: number }).n;
  }

  /**
   * Starts the log afresh (`stagetree run --restart`: a log that no longer replays must
   * never strand a study). In one transaction, moves every event, every study's, into
   * `archived_events` as a new generation and clears `trials`, `metrics` and `stages`;
   * `attempts` stay (the record of the GPU time spent), and so do the studies, their
   * fingerprints and problems. Sets every study's updated time. Returns the number of
   * events archived (0: the log was empty, no generation is made).
   */
  restartLog(now: number): number {
    checkTime(now, 'now');
    this.primary();
    return this.db
      .transaction((): number => {
        const { g } = this.sql.nextGeneration.get() as { g: number };
        const moved = this.sql.archiveEvents.run(g).changes;
        this.sql.clearMetrics.run();
        this.sql.clearTrials.run();
        this.sql.clearStages.run();
        this.sql.clearEvents.run();
        this.sql.touchAllStudies.run(now);
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

  /** The study (row id) an entry belongs to; null for the executor's entries. */
  private routeEntry(
    entry: LogEntry,
    where: string,
    primary: number,
    studyId: (name: string, where: string) => number,
  ): number | null {
    switch (entry.kind) {
      case 'propose':
      case 'fork':
      case 'extend':
      case 'stop':
      case 'metric':
      case 'trialFailed': {
        const name = studyOfTrial(entry.trial);
        return name === null
          ? primary
          : studyId(name, `${where}.trial ${JSON.stringify(entry.trial)}`);
      }
      case 'finish':
        return entry.study === undefined ? primary : studyId(entry.study, `${where}.study`);
      case 'submit':
      case 'pause':
      case 'resume':
        return studyId(entry.study, `${where}.study`);
      case 'task':
      case 'done':
      case 'cancel':
      case 'cut':
      case 'fail':
      case 'lost':
      case 'reuse':
        return null;
    }
  }

  private applyEntry(
    entry: LogEntry,
    seq: number,
    where: string,
    study: number | null,
    touched: Map<TrialId, number>,
    studyId: (name: string) => number,
  ): void {
    switch (entry.kind) {
      case 'propose':
        this.addTrial(entry.trial, study, seq, entry.spec.until, null, null, where);
        return;
      case 'fork':
        this.requireTrial(entry.source, `${where}.source`);
        this.addTrial(entry.trial, study, seq, entry.until, entry.source, entry.at, where);
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
          study,
          entry.step,
          Number.isNaN(entry.value) ? null : entry.value,
          seq,
        );
        touched.set(entry.trial, study ?? this.primary().id);
        return;
      case 'trialFailed':
        this.requireTrial(entry.trial, `${where}.trial`);
        this.sql.failTrial.run(entry.message, entry.trial);
        return;
      case 'task': {
        // Every study it names must be the file's; the first is credited its stages.
        const credited = (entry.studies ?? []).map(studyId)[0] ?? this.primary().id;
        const runs = entry.task.runs;
        runs.forEach((r, i) => {
          this.sql.touchStage.run({
            id: r.stage,
            start: r.start,
            end: r.end,
            task: i === runs.length - 1 ? entry.task.id : null,
            study: credited,
          });
        });
        return;
      }
      case 'done':
        this.sql.stageDone.run({ t: entry.t, task: entry.task });
        return;
      case 'cut': {
        // The task now trains the stage's upper piece: its row (the rest of the stage is
        // left untrained, as a split leaves it).
        const row = this.sql.stageOfTask.get(entry.task) as
          { start: number | null; study: number | null } | undefined;
        this.sql.uncountStage.run(entry.task);
        this.sql.touchStage.run({
          id: entry.stage,
          start: row?.start ?? null,
          end: entry.step,
          task: entry.task,
          study: row?.study ?? this.primary().id,
        });
        return;
      }
      case 'reuse':
        // Done without training: `runs` stays; a stage this log never trained gets a row.
        this.sql.reuseStage.run({ id: entry.stage, t: entry.t });
        return;
      case 'cancel':
      case 'fail':
      case 'lost':
      case 'finish':
      case 'submit':
      case 'pause':
      case 'resume':
        return;
    }
  }

  private addTrial(
    id: TrialId,
    study: number | null,
    seq: number,
    until: number,
    forkOf: TrialId | null,
    forkAt: number | null,
    where: string,
  ): void {
    if (this.sql.getTrial.get(id) !== undefined) {
      throw new LogConflictError(this.file, where, id, 'duplicate');
    }
    this.sql.insertTrial.run(id, study, seq, until, forkOf, forkAt);
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
   * it was done (null: never finished). Stages with a range first, by start. With a study
   * name, only the stages credited to it: those whose last training task it was the first
   * study of (a stage only ever reused is no study's).
   */
  stages(name?: string): StageRow[] {
    return (
      (name === undefined
        ? this.sql.allStages.all()
        : this.sql.studyStages.all(this.studyRef(name).id)) as {
        id: string;
        start: number | null;
        end: number | null;
        runs: number;
        done_at: number | null;
      }[]
    ).map((r) => ({ id: r.id, start: r.start, end: r.end, runs: r.runs, doneAt: r.done_at }));
  }

  /** Trials in proposal order: every study's, or only the named study's. */
  trials(name?: string): TrialRow[] {
    const rows =
      name === undefined
        ? this.sql.allTrials.all()
        : this.sql.studyTrials.all(this.studyRef(name).id);
    return (rows as TrialDbRow[]).map(toTrialRow);
  }

  /** One trial (trial ids are unique in a file). `NotFoundError` when the log never proposed it. */
  trial(id: TrialId): TrialRow {
    const row = this.sql.getTrial.get(id) as TrialDbRow | undefined;
    if (!row) throw new NotFoundError('trial', id, `${this.file} has no such trial`);
    return toTrialRow(row);
  }

  /**
   * Metrics by trial (in proposal order) then step: of one trial (`metrics('t3')`), of one
   * study's trials (`metrics({ study: 'b' })`), or of every trial (no argument).
   */
  metrics(of?: TrialId | { readonly study: string }): MetricRow[] {
    const rows = (
      of === undefined
        ? this.sql.allMetrics.all()
        : typeof of === 'string'
          ? this.sql.trialMetricsFull.all(of)
          : this.sql.studyMetrics.all(this.studyRef(of.study).id)
    ) as { trial: string; step: number; value: number | null }[];
    return rows.map((r) => ({ trial: r.trial, step: r.step, value: r.value ?? Number.NaN }));
  }

  // ------------------------------------------------------------------ attempts

  /**
   * Records that a worker started a task, credited to the first of `studies` (default:
   * the primary); returns the attempt's id. `NotFoundError` before `initStudy`
   * or for a study the file does not hold.
   */
  recordAttempt(start: AttemptStart): number {
    if (!Number.isSafeInteger(start.task) || start.task < 0) {
      throw new ValidationError('task', 'an integer >= 0', start.task);
    }
    checkTime(start.startedAt, 'startedAt');
    if (start.studies !== undefined) checkStudyNames(start.studies, 'studies');
    return this.db
      .transaction((): number => {
        const owners =
          start.studies === undefined
            ? [this.primary().id]
            : start.studies.map((n) => this.studyRef(n).id);
        const info = this.sql.insertAttempt.run(
          start.task,
          start.worker,
          start.stage,
          start.startedAt,
        );
        const id = Number(info.lastInsertRowid);
        // Credited whole to the first (the earliest-submitted study that demanded it: the
        // one that trained it); the others are recorded with weight 0 (they reused it).
        owners.forEach((study, i) => this.sql.creditAttempt.run(id, study, i === 0 ? 1 : 0));
        return id;
      })
      .immediate();
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
   * Ends every attempt still open, every study's, as `lost` at `now` (a resumed run does
   * this first: the workers of the killed run are gone). Returns how many.
   */
  loseOpenAttempts(now: number, message: string): number {
    checkTime(now, 'now');
    if (typeof message !== 'string') throw new ValidationError('message', 'a string', message);
    return this.sql.loseOpen.run(now, clip(message, MAX_ERROR_CHARS)).changes;
  }

  /**
   * Attempts in the order they started: every attempt, or those credited to the named
   * study (a shared attempt is each of its studies').
   */
  attempts(name?: string): AttemptRow[] {
    const rows =
      name === undefined
        ? this.sql.allAttempts.all()
        : this.sql.studyAttempts.all(this.studyRef(name).id);
    return (rows as AttemptDbRow[]).map(toAttemptRow);
  }

  // ------------------------------------------------------------------ status

  /**
   * What `stagetree status` prints of a study (default: the primary): its trials, the
   * best metric, failures, the attempts credited to it, its GPU time, its last run's
   * problem and the store's live owner.
   */
  status(name?: string): StudyStatus {
    return this.db
      .transaction((): StudyStatus => {
        const ref = this.studyRef(name);
        const study = this.study(ref.name);
        const parsed = JSON.parse(study.json) as { metric: { name: unknown } };
        const summary = this.summarize(ref, this.events(), this.primary());
        const failed = this.trials(ref.name)
          .filter((t) => t.status === 'failed')
          .map((t) => ({ trial: t.id, message: t.error ?? '' }));
        const byOutcome = Object.fromEntries(
          OUTCOMES.map((o) => [o, { count: 0, seconds: 0 }]),
        ) as Record<AttemptOutcome, { count: number; seconds: number }>;
        const phaseSeconds: Record<string, number> = {};
        let open = 0;
        const attempts = this.sql.creditedAttempts.all(ref.id) as (AttemptDbRow & {
          weight: number;
        })[];
        for (const row of attempts) {
          const a = toAttemptRow(row);
          if (a.outcome === null || a.endedAt === null) {
            open++;
            continue;
          }
          byOutcome[a.outcome].count++;
          byOutcome[a.outcome].seconds += Math.max(0, a.endedAt - a.startedAt) * row.weight;
          for (const [k, v] of Object.entries(a.seconds))
            phaseSeconds[k] = (phaseSeconds[k] ?? 0) + v * row.weight;
        }
        const owner = this.owner();
        return {
          file: this.file,
          name: study.name,
          createdAt: study.createdAt,
          updatedAt: study.updatedAt,
          metric: { name: String(parsed.metric.name), mode: this.modeOfStudy(ref.id) },
          events: this.eventCount(),
          finished: summary.finished,
          trials: summary.trials,
          best: summary.best,
          failed,
          attempts: { total: attempts.length, open, byOutcome, phaseSeconds },
          gpuSeconds: summary.gpuSeconds,
          problem: this.problem(ref.name),
          owner: owner === null ? null : { pid: owner.pid, since: owner.since },
        };
      })
      .deferred();
  }

  /** Every study of the file in short, in the order they were created (`stagetree status`). */
  summaries(): StudySummary[] {
    return this.db
      .transaction((): StudySummary[] => {
        const studies = this.sql.allStudies.all() as StudyDbRow[];
        const first = studies[0];
        if (first === undefined) return [];
        const log = this.events();
        return studies.map((s) => this.summarize(s, log, first));
      })
      .deferred();
  }

  /** A study's summary from the whole log (`log`) and its rows. */
  private summarize(ref: StudyRef, log: readonly LogEntry[], primary: StudyRef): StudySummary {
    const mode = this.modeOfStudy(ref.id);
    const trials = this.trials(ref.name);
    const counts = { total: trials.length, active: 0, stopped: 0, failed: 0 };
    let best: StudyStatus['best'] = null;
    for (const t of trials) {
      counts[t.status]++;
      if (t.best && (best === null || isBetter(mode, t.best.value, best.value))) {
        best = { trial: t.id, step: t.best.step, value: t.best.value };
      }
    }
    return {
      name: ref.name,
      finished: this.sql.hasFinish.get(ref.id) !== undefined,
      trials: counts,
      best,
      gpuSeconds: accountLog(log, { study: ref.name, primary: primary.name }).gpuSeconds,
    };
  }

  /** The first study created in the file. `NotFoundError` before `initStudy`. */
  private primary(): StudyRef {
    if (this.first === null) {
      const row = this.sql.getPrimary.get() as StudyDbRow | undefined;
      if (!row) throw new NotFoundError('study in store', this.file, 'run initStudy first');
      this.first = { id: row.id, name: row.name };
    }
    return this.first;
  }

  /** A study by name (default: the primary). `NotFoundError` for one the file does not hold. */
  private studyRef(name: string | undefined): StudyRef {
    if (name === undefined) return this.primary();
    if (typeof name !== 'string') throw new ValidationError('study', 'a study name', name);
    const row = this.sql.getStudyByName.get(name) as StudyDbRow | undefined;
    if (!row) {
      throw new NotFoundError(
        'study',
        name,
        `${this.file} holds no such study (it holds ${describeNames(this.studyNames())})`,
      );
    }
    return { id: row.id, name: row.name };
  }

  /** A study's metric mode (read once; another connection may have stored the study). */
  private modeOfStudy(id: number): MetricMode {
    let mode = this.modes.get(id);
    if (mode === undefined) {
      const row = this.sql.getStudy.get(id) as StudyDbRow | undefined;
      if (!row) throw new NotFoundError('study in store', this.file, 'run initStudy first');
      mode = modeOf(row.json, this.file);
      this.modes.set(id, mode);
    }
    return mode;
  }
}

function prepare(db: Database.Database) {
  return {
    getPrimary: db.prepare(
      'SELECT id, name, json, created_at, updated_at FROM studies ORDER BY id LIMIT 1',
    ),
    getStudy: db.prepare('SELECT id, name, json, created_at, updated_at FROM studies WHERE id = ?'),
    getStudyByName: db.prepare(
      'SELECT id, name, json, created_at, updated_at FROM studies WHERE name = ?',
    ),
    allStudies: db.prepare(
      'SELECT id, name, json, created_at, updated_at FROM studies ORDER BY id',
    ),
    studyNames: db.prepare('SELECT name FROM studies ORDER BY id').pluck(),
    unfinished: db
      .prepare(
        `SELECT name FROM studies s
       WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.study = s.id AND e.kind = 'finish')
       ORDER BY id`,
      )
      .pluck(),
    insertStudy: db.prepare(
      'INSERT INTO studies (name, json, created_at, updated_at) VALUES (?, ?, ?, ?)',
    ),
    touchStudy: db.prepare('UPDATE studies SET updated_at = ? WHERE id = ?'),
    touchAllStudies: db.prepare('UPDATE studies SET updated_at = ?'),
    setStudyJson: db.prepare('UPDATE studies SET json = ?, updated_at = ? WHERE id = ?'),
    getStudyExtra: db.prepare('SELECT trainer_fingerprint, problem FROM studies WHERE id = ?'),
    setFingerprint: db.prepare('UPDATE studies SET trainer_fingerprint = ? WHERE id = ?'),
    setProblem: db.prepare('UPDATE studies SET problem = ?, updated_at = ? WHERE id = ?'),
    getOwner: db.prepare('SELECT pid, start, host, since, token FROM owner WHERE id = 1'),
    setOwner: db.prepare(
      `INSERT OR REPLACE INTO owner (id, pid, start, host, since, token)
       VALUES (1, @pid, @start, @host, @since, @token)`,
    ),
    deleteOwner: db.prepare('DELETE FROM owner WHERE id = 1 AND token = ?'),
    nextGeneration: db.prepare('SELECT coalesce(max(generation), 0) + 1 AS g FROM archived_events'),
    archiveEvents: db.prepare(
      `INSERT INTO archived_events (generation, seq, t, kind, json, study)
       SELECT ?, seq, t, kind, json, study FROM events ORDER BY seq`,
    ),
    lastArchive: db.prepare(
      `SELECT generation, seq, json FROM archived_events
       WHERE generation = (SELECT max(generation) FROM archived_events) ORDER BY seq`,
    ),
    clearEvents: db.prepare('DELETE FROM events'),
    clearTrials: db.prepare('DELETE FROM trials'),
    clearMetrics: db.prepare('DELETE FROM metrics'),
    clearStages: db.prepare('DELETE FROM stages'),
    insertEvent: db.prepare('INSERT INTO events (t, kind, json, study) VALUES (?, ?, ?, ?)'),
    allEvents: db.prepare('SELECT seq, json FROM events ORDER BY seq'),
    studyEvents: db.prepare('SELECT seq, json FROM events WHERE study = ? ORDER BY seq'),
    countEvents: db.prepare('SELECT count(*) AS n FROM events'),
    hasFinish: db.prepare(`SELECT 1 FROM events WHERE study = ? AND kind = 'finish' LIMIT 1`),
    getTrial: db.prepare('SELECT * FROM trials WHERE id = ?'),
    allTrials: db.prepare('SELECT * FROM trials ORDER BY seq'),
    studyTrials: db.prepare('SELECT * FROM trials WHERE study = ? ORDER BY seq'),
    insertTrial: db.prepare(
      `INSERT INTO trials (id, study, seq, status, until, fork_of, fork_at)
       VALUES (?, ?, ?, 'active', ?, ?, ?)`,
    ),
    setUntil: db.prepare('UPDATE trials SET until = ? WHERE id = ?'),
    stopTrial: db.prepare(
      `UPDATE trials SET status = 'stopped' WHERE id = ? AND status = 'active'`,
    ),
    failTrial: db.prepare(`UPDATE trials SET status = 'failed', error = ? WHERE id = ?`),
    setBest: db.prepare('UPDATE trials SET best = ?, best_step = ?, last_step = ? WHERE id = ?'),
    upsertMetric: db.prepare(
      `INSERT INTO metrics (trial, study, step, value, seq) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (trial, step) DO UPDATE SET value = excluded.value, seq = excluded.seq`,
    ),
    trialMetrics: db.prepare('SELECT step, value FROM metrics WHERE trial = ? ORDER BY step'),
    trialMetricsFull: db.prepare(
      'SELECT trial, step, value FROM metrics WHERE trial = ? ORDER BY step',
    ),
    allMetrics: db.prepare(
      'SELECT m.trial, m.step, m.value FROM metrics m JOIN trials t ON t.id = m.trial ORDER BY t.seq, m.step',
    ),
    studyMetrics: db.prepare(
      `SELECT m.trial, m.step, m.value FROM metrics m JOIN trials t ON t.id = m.trial
       WHERE m.study = ? ORDER BY t.seq, m.step`,
    ),
    touchStage: db.prepare(
      `INSERT INTO stages (id, start, end, runs, last_task, study)
       VALUES (@id, @start, @end, 1, @task, @study)
       ON CONFLICT (id) DO UPDATE SET start = excluded.start, end = excluded.end,
         runs = runs + 1, last_task = coalesce(@task, last_task), study = excluded.study`,
    ),
    reuseStage: db.prepare(
      `INSERT INTO stages (id, runs, done_at) VALUES (@id, 0, @t)
       ON CONFLICT (id) DO UPDATE SET done_at = coalesce(done_at, excluded.done_at)`,
    ),
    stageOfTask: db.prepare(
      'SELECT start, study FROM stages WHERE last_task = ? AND done_at IS NULL LIMIT 1',
    ),
    uncountStage: db.prepare(
      'UPDATE stages SET runs = runs - 1, last_task = NULL WHERE last_task = ? AND done_at IS NULL',
    ),
    stageDone: db.prepare(
      'UPDATE stages SET done_at = @t WHERE last_task = @task AND done_at IS NULL',
    ),
    allStages: db.prepare(
      'SELECT id, start, end, runs, done_at FROM stages ORDER BY start IS NULL, start, id',
    ),
    studyStages: db.prepare(
      `SELECT id, start, end, runs, done_at FROM stages WHERE study = ?
       ORDER BY start IS NULL, start, id`,
    ),
    insertAttempt: db.prepare(
      'INSERT INTO attempts (task, worker, stage, started_at) VALUES (?, ?, ?, ?)',
    ),
    creditAttempt: db.prepare(
      'INSERT INTO attempt_studies (attempt, study, weight) VALUES (?, ?, ?)',
    ),
    getAttempt: db.prepare('SELECT * FROM attempts WHERE id = ?'),
    finishAttempt: db.prepare(
      'UPDATE attempts SET ended_at = ?, outcome = ?, seconds = ?, error = ?, detail = ? WHERE id = ?',
    ),
    loseOpen: db.prepare(
      `UPDATE attempts SET ended_at = ?, outcome = 'lost', seconds = '{}', error = ? WHERE outcome IS NULL`,
    ),
    allAttempts: db.prepare('SELECT * FROM attempts ORDER BY id'),
    studyAttempts: db.prepare(
      `SELECT a.* FROM attempts a JOIN attempt_studies c ON c.attempt = a.id
       WHERE c.study = ? AND c.weight > 0 ORDER BY a.id`,
    ),
    creditedAttempts: db.prepare(
      `SELECT a.*, c.weight FROM attempts a JOIN attempt_studies c ON c.attempt = a.id
       WHERE c.study = ? AND c.weight > 0 ORDER BY a.id`,
    ),
  };
}

function toAttemptRow(r: AttemptDbRow): AttemptRow {
  return {
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
  };
}

/** A list of study names for a message: `"a", "b"` (at most 10), or "no study". */
function describeNames(names: readonly string[]): string {
  if (names.length === 0) return 'no study';
  const shown = names.slice(0, 10).map((n) => JSON.stringify(n));
  return names.length > 10 ? `${shown.join(', ')} and ${names.length - 10} more` : shown.join(', ');
}

/** `studies` of a task entry or attempt: 1 to MAX_TASK_STUDIES distinct non-empty names. */
function checkStudyNames(value: unknown, where: string): void {
  if (!Array.isArray(value) || value.length === 0 || value.length > MAX_TASK_STUDIES) {
    throw new ValidationError(where, `an array of 1 to ${MAX_TASK_STUDIES} study names`, value);
  }
  const seen = new Set<string>();
  value.forEach((name: unknown, i) => {
    if (typeof name !== 'string' || name === '') {
      throw new ValidationError(`${where}[${i}]`, 'a non-empty string', name);
    }
    if (seen.has(name)) {
      throw new ValidationError(`${where}[${i}]`, 'a study not named before in the list', name);
    }
    seen.add(name);
  });
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
  cut: true,
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
  pause: true,
  resume: true,
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
    case 'cut':
      int('task', entry.task);
      int('step', entry.step);
      str('stage', entry.stage);
      checkCheckpointKey(entry.key, `${where}.key`);
      return;
    case 'finish':
      if (entry.study !== undefined) str('study', entry.study);
      if (entry.cancelled !== undefined && (entry.cancelled as unknown) !== true) {
        throw new ValidationError(`${where}.cancelled`, 'true or absent', entry.cancelled);
      }
      return;
    case 'submit':
      str('study', entry.study);
      num('priority', entry.priority);
      return;
    case 'pause':
    case 'resume':
      str('study', entry.study);
      return;
    case 'task':
      if (entry.studies !== undefined) checkStudyNames(entry.studies, `${where}.studies`);
      return;
    case 'lost':
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
