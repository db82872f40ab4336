import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runStudy } from '../../src/cli/run.js';
import type { RunOutcome } from '../../src/cli/run.js';
import { ExecutionMode } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { StudyStore } from '../../src/store/index.js';
import { gridConfigs, parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { reportSteps } from '../../src/tuner/index.js';
import { valueAt } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import { QuadraticTrainer } from '../../src/trainer/index.js';

export const quiet = (): void => undefined;

export const ROOT = resolve(import.meta.dirname, '../..');
export const TRAINER = join(ROOT, 'dist', 'trainer', 'quadratic.js');

/** A 4-trial grid on the QuadraticTrainer: two initial LRs x two milestones, 20 steps. */
export function studyJson(
  overrides: Record<string, unknown> = {},
  params: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    name: 'quadratic',
    params: { seed: 1, ...params },
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.02, 0.05] },
        factor: 0.1,
        milestones: [{ choice: [10, 15] }],
      },
      momentum: 0.9,
    },
    steps: 20,
    evalEvery: 5,
    tuner: { kind: 'grid' },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'node', module: TRAINER, export: 'QuadraticTrainer' },
    workers: 2,
    ...overrides,
  };
}

/** Writes a study file into a fresh folder. */
export function setup(json: Record<string, unknown>): { file: string; study: Study; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-run-'));
  const file = join(dir, 'study.json');
  writeFileSync(file, JSON.stringify(json));
  return { file, study: parseStudy(json), dir };
}

/** Every trial's metric at every report step when it trains alone from scratch, in-process. */
export async function alone(study: Study): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const cfg of gridConfigs(study)) {
    for (const r of reportSteps(study)) {
      out.set(
        `t${cfg.index + 1}@${r}`,
        await quadraticAlone({ params: cfg.params, schedules: cfg.canonical }, r),
      );
    }
  }
  return out;
}

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

/** One study's stored metrics, by `trial@step` with the study's trial prefix (`NAME/`) removed. */
export function studyMetrics(db: string, name: string): Map<string, number> {
  return fromStore(
    db,
    (s) =>
      new Map(
        s.metrics({ study: name }).map((m) => {
          const i = m.trial.indexOf('/');
          return [`${i < 0 ? m.trial : m.trial.slice(i + 1)}@${m.step}`, m.value] as [
            string,
            number,
          ];
        }),
      ),
  );
}

/** The demanded stage each done task trained (its last run; its upper piece if cut), in log order. */
export function trainedStages(log: readonly LogEntry[]): string[] {
  const last = new Map<number, string>();
  const out: string[] = [];
  for (const e of log) {
    if (e.kind === 'task') last.set(e.task.id, e.task.runs[e.task.runs.length - 1]?.stage ?? '');
    if (e.kind === 'cut') last.set(e.task, e.stage);
    if (e.kind === 'done') out.push(last.get(e.task) ?? '');
  }
  return out;
}

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

/** Training steps the tasks of a log ran, re-computations included (a cut task's up to its cut). */
export function stepsTrained(entries: readonly LogEntry[]): number {
  const ends = new Map<number, number>();
  let n = 0;
  for (const e of entries) {
    if (e.kind === 'task') {
      n += e.task.runs.reduce((m, r) => m + r.end - r.start, 0);
      ends.set(e.task.id, e.task.runs[e.task.runs.length - 1]?.end ?? 0);
    } else if (e.kind === 'cut') n -= (ends.get(e.task) ?? e.step) - e.step;
  }
  return n;
}

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
