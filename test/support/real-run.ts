import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runStudy } from '../../src/cli/run.js';
import type { RunOutcome } from '../../src/cli/run.js';
import { ExecutionMode } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { StudyStore } from '../../src/store/index.js';
import type { Study } from '../../src/study/index.js';

export const quiet = (): void => undefined;

/** Reads something from a study store and closes it. */
export function fromStore<T>(db: string, read: (store: StudyStore) => T): T {
  const store = StudyStore.open(db);
  try {
    return read(store);
  } finally {
    store.close();
  }
}

/** Every stored metric, by `trial@step`. */
export const storedMetrics = (db: string): Map<string, number> =>
  fromStore(db, (s) => new Map(s.metrics().map((m) => [`${m.trial}@${m.step}`, m.value])));

export const storedLog = (db: string): LogEntry[] => fromStore(db, (s) => s.events());

/** Runs a study for real twice, as a stage tree and trial by trial, in a fresh directory. */
export async function runBothModes(
  file: string,
  study: Study,
): Promise<{ stageTree: RunOutcome; trialBased: RunOutcome }> {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-modes-'));
  const stageTree = await runStudy(
    file,
    study,
    { db: join(dir, 'st.db'), checkpoints: join(dir, 'st') },
    { log: quiet },
  );
  const trialBased = await runStudy(
    file,
    study,
    { db: join(dir, 'tb.db'), checkpoints: join(dir, 'tb') },
    {
      log: quiet,
      mode: ExecutionMode.trialBased,
    },
  );
  return { stageTree, trialBased };
}
