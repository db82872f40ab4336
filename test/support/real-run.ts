import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runStudy } from '../../src/cli/run.js';
import type { RunOutcome } from '../../src/cli/run.js';
import { ExecutionMode } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { StudyStore } from '../../src/store/index.js';
import type { Study } from '../../src/study/index.js';
import { valueAt } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { QuadraticTrainer } from '../../src/trainer/index.js';

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

/** Training steps the tasks of a log ran, re-computations included. */
export const stepsTrained = (entries: readonly LogEntry[]): number =>
  entries.reduce(
    (n, e) => (e.kind === 'task' ? n + e.task.runs.reduce((m, r) => m + r.end - r.start, 0) : n),
    0,
  );

/**
 * The QuadraticTrainer's loss for a trial trained alone from scratch to `step`, in this
 * process (the test knobs `stepDelayMs` and `failAboveLr` switched off).
 */
export async function quadraticAlone(
  spec: {
    readonly params: Readonly<Record<string, unknown>>;
    readonly schedules: Readonly<Record<string, Canonical>>;
  },
  step: number,
): Promise<number> {
  const t = new QuadraticTrainer();
  const params = { ...spec.params, stepDelayMs: 0, failAboveLr: Number.POSITIVE_INFINITY };
  t.init(params, typeof spec.params.seed === 'number' ? spec.params.seed : 0);
  const hps = Object.keys(spec.schedules).sort();
  await t.train(
    0,
    step,
    (s) => Object.fromEntries(hps.map((h) => [h, valueAt(spec.schedules[h] as Canonical, s)])),
    { cancelled: false },
  );
  return t.evaluate().loss as number;
}
