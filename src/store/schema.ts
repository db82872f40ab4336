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
