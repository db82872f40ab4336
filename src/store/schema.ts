import type Database from 'better-sqlite3';
import { ErrorCode, NotAStoreError, StagetreeError } from '../errors.js';

/**
 * The study store's schema, as migrations: `MIGRATIONS[i]` takes a file from
 * `PRAGMA user_version = i` to `i + 1`. A migration is only ever appended, never edited,
 * once released. docs/store.md describes the tables.
 */

/** `PRAGMA application_id` of a stagetree study store ("STST"). */
export const APPLICATION_ID = 0x53545354;

export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE study (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    name       TEXT NOT NULL,
    json       TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
  );
  CREATE TABLE events (
    seq  INTEGER PRIMARY KEY,
    t    REAL NOT NULL,
    kind TEXT NOT NULL,
    json TEXT NOT NULL
  );
  CREATE TABLE trials (
    id        TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL UNIQUE,
    status    TEXT NOT NULL CHECK (status IN ('active', 'stopped', 'failed')),
    until     INTEGER NOT NULL,
    fork_of   TEXT,
    fork_at   INTEGER,
    best      REAL,
    best_step INTEGER,
    last_step INTEGER,
    error     TEXT
  );
  CREATE TABLE metrics (
    trial TEXT NOT NULL REFERENCES trials (id),
    step  INTEGER NOT NULL,
    value REAL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (trial, step)
  ) WITHOUT ROWID;
  CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY,
    task       INTEGER NOT NULL,
    worker     TEXT NOT NULL,
    stage      TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL,
    outcome    TEXT CHECK (outcome IN ('done', 'failed', 'cancelled', 'lost')),
    seconds    TEXT,
    error      TEXT,
    detail     TEXT,
    CHECK ((ended_at IS NULL) = (outcome IS NULL))
  );
  CREATE INDEX attempts_task ON attempts (task);
  PRAGMA application_id = ${APPLICATION_ID};
  `,
  `
  CREATE TABLE stages (
    id        TEXT PRIMARY KEY,
    start     INTEGER NOT NULL,
    end       INTEGER NOT NULL,
    runs      INTEGER NOT NULL DEFAULT 0,
    last_task INTEGER,
    done_at   REAL
  );
  CREATE INDEX stages_last_task ON stages (last_task);
  `,
  // 3: the owner lock, the trainer fingerprint and last problem, the archive of restarted
  // logs; a stage's range may be unknown (a stage reused from a checkpoint, never trained).
  `
  CREATE TABLE owner (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    pid   INTEGER NOT NULL,
    start TEXT,
    host  TEXT NOT NULL,
    since REAL NOT NULL,
    token TEXT NOT NULL
  );
  ALTER TABLE study ADD COLUMN trainer_fingerprint TEXT;
  ALTER TABLE study ADD COLUMN problem TEXT;
  CREATE TABLE archived_events (
    generation INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    t          REAL NOT NULL,
    kind       TEXT NOT NULL,
    json       TEXT NOT NULL,
    PRIMARY KEY (generation, seq)
  ) WITHOUT ROWID;
  ALTER TABLE stages RENAME TO stages_v2;
  CREATE TABLE stages (
    id        TEXT PRIMARY KEY,
    start     INTEGER,
    end       INTEGER,
    runs      INTEGER NOT NULL DEFAULT 0,
    last_task INTEGER,
    done_at   REAL
  );
  INSERT INTO stages (id, start, end, runs, last_task, done_at)
    SELECT id, start, end, runs, last_task, done_at FROM stages_v2;
  DROP TABLE stages_v2;
  CREATE INDEX stages_last_task ON stages (last_task);
  `,
  // 4: one file holds many studies (one executor's log interleaves them). The one-row
  // \`study\` table becomes \`studies\` (its row keeps id 1); every per-study table gets a
  // \`study\` column; attempts are credited to studies through \`attempt_studies\`. A file of
  // version 3 holds one study, so every old row is that study's (NULL: an executor-level
  // event, a stage only ever reused). \`trials\` and \`metrics\` are rebuilt (a NOT NULL
  // column cannot be added), child first, through temporary copies, so that foreign keys
  // stay on and hold at every statement.
  `
  CREATE TABLE studies (
    id                  INTEGER PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    json                TEXT NOT NULL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    trainer_fingerprint TEXT,
    problem             TEXT
  );
  INSERT INTO studies (id, name, json, created_at, updated_at, trainer_fingerprint, problem)
    SELECT id, name, json, created_at, updated_at, trainer_fingerprint, problem FROM study;
  DROP TABLE study;

  ALTER TABLE events ADD COLUMN study INTEGER REFERENCES studies (id);
  UPDATE events SET study = (SELECT min(id) FROM studies)
    WHERE kind NOT IN ('task', 'done', 'cancel', 'fail', 'lost', 'reuse');
  CREATE INDEX events_study ON events (study);
  ALTER TABLE archived_events ADD COLUMN study INTEGER REFERENCES studies (id);
  UPDATE archived_events SET study = (SELECT min(id) FROM studies)
    WHERE kind NOT IN ('task', 'done', 'cancel', 'fail', 'lost', 'reuse');

  CREATE TEMP TABLE metrics_v3 AS SELECT * FROM metrics;
  CREATE TEMP TABLE trials_v3 AS SELECT * FROM trials;
  DROP TABLE metrics;
  DROP TABLE trials;
  CREATE TABLE trials (
    id        TEXT PRIMARY KEY,
    study     INTEGER NOT NULL REFERENCES studies (id),
    seq       INTEGER NOT NULL UNIQUE,
    status    TEXT NOT NULL CHECK (status IN ('active', 'stopped', 'failed')),
    until     INTEGER NOT NULL,
    fork_of   TEXT,
    fork_at   INTEGER,
    best      REAL,
    best_step INTEGER,
    last_step INTEGER,
    error     TEXT
  );
  CREATE INDEX trials_study ON trials (study, seq);
  INSERT INTO trials (id, study, seq, status, until, fork_of, fork_at, best, best_step, last_step, error)
    SELECT id, (SELECT min(id) FROM studies), seq, status, until, fork_of, fork_at, best,
      best_step, last_step, error
    FROM temp.trials_v3;
  CREATE TABLE metrics (
    trial TEXT NOT NULL REFERENCES trials (id),
    study INTEGER NOT NULL REFERENCES studies (id),
    step  INTEGER NOT NULL,
    value REAL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (trial, step)
  ) WITHOUT ROWID;
  CREATE INDEX metrics_study ON metrics (study);
  INSERT INTO metrics (trial, study, step, value, seq)
    SELECT trial, (SELECT t.study FROM trials t WHERE t.id = m.trial), step, value, seq
    FROM temp.metrics_v3 m;
  DROP TABLE temp.metrics_v3;
  DROP TABLE temp.trials_v3;

  CREATE TABLE attempt_studies (
    attempt INTEGER NOT NULL REFERENCES attempts (id),
    study   INTEGER NOT NULL REFERENCES studies (id),
    weight  REAL NOT NULL CHECK (weight >= 0 AND weight <= 1),
    PRIMARY KEY (attempt, study)
  ) WITHOUT ROWID;
  CREATE INDEX attempt_studies_study ON attempt_studies (study, attempt);
  INSERT INTO attempt_studies (attempt, study, weight)
    SELECT a.id, s.id, 1 FROM attempts a, studies s;

  ALTER TABLE stages ADD COLUMN study INTEGER REFERENCES studies (id);
  UPDATE stages SET study = (SELECT min(id) FROM studies) WHERE runs > 0;
  `,
];

/**
 * Brings the file to the newest schema. Runs inside `BEGIN IMMEDIATE`, re-reading the
 * version there, so two processes opening a new file at once do not both migrate it.
 */
export function migrate(db: Database.Database, file: string): void {
  const step = db.transaction(() => {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new StagetreeError(
        ErrorCode.unsupported,
        `${file}: study store schema version ${version} is newer than this stagetree knows ` +
          `(${MIGRATIONS.length}); use the stagetree version that wrote it, or a newer one`,
      );
    }
    if (version === 0) {
      const tables = db
        .prepare(`SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'`)
        .get() as { n: number };
      if (tables.n > 0) {
        throw new NotAStoreError(
          file,
          `an SQLite database with ${tables.n} ${tables.n === 1 ? 'table' : 'tables'} and no stagetree schema`,
        );
      }
    } else {
      const app = db.pragma('application_id', { simple: true }) as number;
      if (app !== APPLICATION_ID) {
        throw new NotAStoreError(file, `an SQLite database with application id ${app}`);
      }
    }
    for (let v = version; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    }
  });
  step.immediate();
}
