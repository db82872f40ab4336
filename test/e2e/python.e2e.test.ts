import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadStudy } from '../../src/cli/main.js';
import { runStudy } from '../../src/cli/run.js';
import { parseStudy } from '../../src/study/index.js';
import {
  fromStore,
  quiet,
  runBothModes,
  setup,
  storedLog,
  storedMetrics,
  studyJson,
} from '../support/real-run.js';

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

describe.skipIf(!hasPython && !required)('Python workers under faults', () => {
  const misbehaving = {
    kind: 'python',
    module: 'misbehaving_trainer:MisbehavingTrainer',
    path: [join(ROOT, 'test', 'fixtures'), join(ROOT, 'python', 'examples')],
  };
  afterEach(() => {
    for (const k of ['MISBEHAVE', 'MISBEHAVE_ABOVE_LR']) Reflect.deleteProperty(process.env, k);
  });

  it("stores a failing trainer's traceback and every attempt's phase seconds", async () => {
    process.env.MISBEHAVE = 'raise';
    process.env.MISBEHAVE_ABOVE_LR = '0.03';
    const { file, study, dir } = setup(studyJson({ trainer: misbehaving, retries: 0, workers: 2 }));
    const out = await runStudy(file, study, { db: join(dir, 'py.db') }, { log: quiet });
    expect(out.status.trials.failed).toBe(2);
    const attempts = fromStore(out.paths.db, (s) => s.attempts());
    const failed = attempts.filter((a) => a.outcome === 'failed');
    expect(failed.length).toBe(1);
    for (const a of failed) {
      expect(a.error).toBe('ValueError: lr 0.05 is too high for this test');
      expect(a.detail).toMatch(
        /^Traceback \(most recent call last\):[\s\S]*misbehaving_trainer\.py/,
      );
    }
    const done = attempts.filter((a) => a.outcome === 'done');
    expect(done.length).toBeGreaterThan(0);
    for (const a of done) expect(a.seconds.train).toBeGreaterThan(0);
  });

  it('end within seconds of their engine being SIGKILLed, even while the trainer blocks', async () => {
    const { file, dir } = setup(studyJson({ trainer: misbehaving }));
    const db = join(dir, 'kill.db');
    const engine = spawn(
      process.execPath,
      [join(ROOT, 'bin', 'stagetree.js'), 'run', file, '--db', db],
      {
        stdio: 'ignore',
        env: { ...process.env, MISBEHAVE: 'block' },
      },
    );
    const children = (): number[] =>
      spawnSync('pgrep', ['-P', String(engine.pid)], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter((l) => l.trim() !== '')
        .map(Number);
    const until = async (cond: () => boolean, seconds: number): Promise<boolean> => {
      const end = Date.now() + seconds * 1000;
      while (!cond()) {
        if (Date.now() > end) return false;
        await new Promise((r) => setTimeout(r, 50));
      }
      return true;
    };
    expect(
      await until(() => existsSync(db) && storedLog(db).some((e) => e.kind === 'task'), 30),
    ).toBe(true);
    expect(await until(() => children().length >= 2, 30)).toBe(true);
    await new Promise((r) => setTimeout(r, 2000)); // the trainers are asleep in train()
    const workers = children();
    engine.kill('SIGKILL');
    await new Promise((r) => engine.once('exit', r));
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    expect(await until(() => workers.every((p) => !alive(p)), 5)).toBe(true);
  });
});
