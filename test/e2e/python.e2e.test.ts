import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadStudy } from '../../src/cli/main.js';
import { parseStudy } from '../../src/study/index.js';
import { runBothModes, storedLog, storedMetrics } from '../support/real-run.js';

/**
 * The Python runtime end to end: `stagetree run` with Python worker processes
 * (`python -m stagetree.worker`, Debian's /usr/bin/python3 with python3-grpcio) on the
 * pure-Python quadratic trainer. Every trial's metrics under stage-tree execution must be
 * bit-identical to its trial-based run (each trial alone from step 0, its own process).
 * Skipped where the Python packages are missing, unless STAGETREE_REQUIRE_PYTHON=1 (CI).
 */
const ROOT = resolve(import.meta.dirname, '../..');
const FILE = join(ROOT, 'examples', 'quadratic-python.json');
const hasPython =
  spawnSync('/usr/bin/python3', ['-c', 'import grpc, google.protobuf'], { stdio: 'ignore' })
    .status === 0;
const required = process.env.STAGETREE_REQUIRE_PYTHON === '1';

describe.skipIf(!hasPython && !required)('stagetree run with Python workers', () => {
  it('gives every trial the metrics of its run alone (equivalence, Python)', async () => {
    const { stageTree, trialBased } = await runBothModes(FILE, await loadStudy(FILE));
    expect(stageTree.status.finished).toBe(true);
    expect(stageTree.status.trials.failed).toBe(0);
    const a = storedMetrics(stageTree.paths.db);
    expect(a.size).toBe(16);
    expect(a).toEqual(storedMetrics(trialBased.paths.db));
  });

  it.each([
    ['SHA promotions', { kind: 'sha', trials: 4, eta: 2, minSteps: 5 }, 'extend'],
    ['PBT forks', { kind: 'pbt', population: 4, interval: 5, seed: 1 }, 'fork'],
  ] as const)(
    'with %s: the same metrics as each trial alone (Python)',
    async (_name, tuner, kind) => {
      const study = parseStudy({
        ...(JSON.parse(readFileSync(FILE, 'utf8')) as object),
        space: { lr: { loguniform: [0.005, 0.1] }, momentum: 0.9 },
        tuner,
      });
      const { stageTree, trialBased } = await runBothModes(FILE, study);
      expect(storedLog(stageTree.paths.db).some((e) => e.kind === kind)).toBe(true);
      expect(storedMetrics(stageTree.paths.db)).toEqual(storedMetrics(trialBased.paths.db));
    },
  );
});
