import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadStudy } from '../../src/cli/main.js';
import { runStudy } from '../../src/cli/run.js';
import { ExecutionMode } from '../../src/engine/index.js';
import { StudyStore } from '../../src/store/index.js';
import { parseStudy } from '../../src/study/index.js';

/**
 * The Python runtime end to end: `stagetree run` with Python worker processes
 * (`python -m stagetree.worker`, Debian's /usr/bin/python3 with python3-grpcio) on the
 * pure-Python quadratic trainer. Every trial's metrics under stage-tree execution must be
 * bit-identical to its trial-based run (each trial alone from step 0, its own process).
 * Skipped where the Python packages are missing, unless STAGETREE_REQUIRE_PYTHON=1 (CI).
 */
const ROOT = resolve(import.meta.dirname, '../..');
const hasPython =
  spawnSync('/usr/bin/python3', ['-c', 'import grpc, google.protobuf'], { stdio: 'ignore' })
    .status === 0;
const required = process.env.STAGETREE_REQUIRE_PYTHON === '1';

function metrics(db: string): Map<string, number> {
  const store = StudyStore.open(db);
  try {
    return new Map(store.metrics().map((m) => [`${m.trial}@${m.step}`, m.value]));
  } finally {
    store.close();
  }
}

describe.skipIf(!hasPython && !required)('stagetree run with Python workers', () => {
  it('gives every trial the metrics of its run alone (equivalence, Python)', async () => {
    const file = join(ROOT, 'examples', 'quadratic-python.json');
    const study = await loadStudy(file);
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-py-'));
    const quiet = (): void => undefined;
    const st = await runStudy(
      file,
      study,
      { db: join(dir, 'st.db'), checkpoints: join(dir, 'st') },
      { log: quiet },
    );
    const tb = await runStudy(
      file,
      study,
      { db: join(dir, 'tb.db'), checkpoints: join(dir, 'tb') },
      {
        log: quiet,
        mode: ExecutionMode.trialBased,
      },
    );
    expect(st.status.finished).toBe(true);
    expect(st.status.trials.failed).toBe(0);
    const a = metrics(st.paths.db);
    expect(a.size).toBe(16);
    expect(a).toEqual(metrics(tb.paths.db));
  });

  it.each([
    ['SHA promotions', { kind: 'sha', trials: 4, eta: 2, minSteps: 5 }, 'extend'],
    ['PBT forks', { kind: 'pbt', population: 4, interval: 5, seed: 1 }, 'fork'],
  ] as const)(
    'with %s: the same metrics as each trial alone (Python)',
    async (_name, tuner, kind) => {
      const file = join(ROOT, 'examples', 'quadratic-python.json');
      const base = await loadStudy(file);
      const study = parseStudy({
        ...(JSON.parse(readFileSync(file, 'utf8')) as object),
        space: { lr: { loguniform: [0.005, 0.1] }, momentum: 0.9 },
        tuner,
      });
      expect(base.name).toBe(study.name);
      const dir = mkdtempSync(join(tmpdir(), 'stagetree-py-'));
      const quiet = (): void => undefined;
      const st = await runStudy(
        file,
        study,
        { db: join(dir, 'st.db'), checkpoints: join(dir, 'st') },
        { log: quiet },
      );
      const tb = await runStudy(
        file,
        study,
        { db: join(dir, 'tb.db'), checkpoints: join(dir, 'tb') },
        {
          log: quiet,
          mode: ExecutionMode.trialBased,
        },
      );
      const store = StudyStore.open(st.paths.db);
      try {
        expect(store.events().some((e) => e.kind === kind)).toBe(true);
      } finally {
        store.close();
      }
      expect(metrics(st.paths.db)).toEqual(metrics(tb.paths.db));
    },
  );
});
