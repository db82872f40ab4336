import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { baselinePaths, runStudy } from '../../src/cli/run.js';
import { accountLog, ExecutionMode } from '../../src/engine/index.js';
import { reportFromStore } from '../../src/report/index.js';
import type { StudyReport } from '../../src/report/index.js';
import {
  fromStore,
  quiet,
  ROOT,
  setup,
  storedLog,
  storedMetrics,
  studyJson,
} from '../support/real-run.js';

/**
 * The savings report of a real run: its numbers agree with the runs they describe (the
 * stage-tree run's, and a trial-based run of the same study stored beside it), and the
 * CLI ends `run` with the savings in two lines.
 */

const cli = (...args: string[]): { code: number | null; out: string; err: string } => {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'stagetree.js'), ...args], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

describe('stagetree report (real runs)', () => {
  it('agrees with the stage-tree run and with a measured trial-based run of the same study', async () => {
    const { file, study, dir } = setup(studyJson());
    const db = join(dir, 'st.db');
    const st = await runStudy(file, study, { db }, { log: quiet });
    expect(st.status.finished).toBe(true);

    const estimated: StudyReport = reportFromStore(db, study, baselinePaths(st.paths).db);
    expect(estimated.baselines.trialBased.estimated).toBe(true);
    expect(estimated.baselines.trialBased.how).toMatch(/^one GPU per trial, .*estimated/);

    // The trial-based baseline, stored beside (what `run --baseline trial-based` does).
    const base = await runStudy(file, study, baselinePaths(st.paths), {
      log: quiet,
      mode: ExecutionMode.trialBased,
      wholeSlots: true,
    });
    expect(base.status.finished).toBe(true);
    const r = reportFromStore(db, study, baselinePaths(st.paths).db);

    // The stage-tree numbers are the run's own.
    const account = accountLog(storedLog(db));
    expect(r.stageTree.gpuHours).toBe(account.gpuSeconds / 3600);
    expect(r.stageTree.wallSeconds).toBe(account.makespanSeconds);
    expect(r.stageTree.tasks).toBe(account.tasks);
    // 4 trials x 20 steps alone; the tree shares [0, 10) per initial LR: 60 unique steps.
    expect(r.trialSteps).toBe(80);
    expect(r.stageTree.treeSteps).toBe(60);
    expect(r.stageTree.stepsTrained).toBe(60);
    expect(r.stageTree.stepsReused).toBe(0);
    expect(r.idealSavings).toBe(80 / 60);
    // The baseline is the measured run's, and the cost model's estimate stands beside it.
    const b = accountLog(storedLog(base.paths.db));
    expect(r.baselines.trialBased).toMatchObject({
      gpuHours: b.gpuSeconds / 3600,
      wallSeconds: b.makespanSeconds,
      estimated: false,
    });
    expect(r.baselines.trialBased.modelGpuHours).toBe(estimated.baselines.trialBased.gpuHours);
    expect(r.baselines.strongest.estimated).toBe(true);
    expect(r.savings).toBe(r.baselines.trialBased.gpuHours / r.stageTree.gpuHours);
    expect(r.savingsVsStrongest).toBe(r.baselines.strongest.gpuHours / r.stageTree.gpuHours);
    // The model, calibrated on the run, gives the run's own GPU time back.
    expect(r.costs.calibration).toBeGreaterThan(0);
    expect(r.costs.tasks).toBe(account.tasks);

    // The trials: their schedules in short, their metrics as stored.
    const metrics = storedMetrics(db);
    expect(r.trials.map((t) => [t.id, t.params.lr, t.status, t.steps])).toEqual([
      ['t1', '0.02, 0.002@10', 'stopped', 20],
      ['t2', '0.02, 0.002@15', 'stopped', 20],
      ['t3', '0.05, 0.005@10', 'stopped', 20],
      ['t4', '0.05, 0.005@15', 'stopped', 20],
    ]);
    let checked = 0;
    for (const t of r.trials) {
      expect(t.step).toBe(20);
      expect(t.metric).toBe(metrics.get(`${t.id}@20`));
      expect(t.params.momentum).toBe(0.9);
      checked++;
    }
    expect(checked).toBe(4);
    const best = fromStore(db, (s) => s.status(study.name).best);
    expect(r.best).toEqual(best);
  });

  it('`run` ends with the savings in two lines; `report` prints markdown and JSON; `status` the trials', () => {
    const { file, dir } = setup(studyJson());
    const run = cli('run', file);
    expect(run.code, run.err).toBe(0);
    const lines = run.out.trim().split('\n');
    expect(lines.at(-3)).toMatch(
      /^savings: \d+\.\d\dx fewer GPU-hours than one GPU per trial \(.* estimated\); \d+\.\d\dx against the strongest trial-based execution \(estimated\)$/,
    );
    expect(lines.at(-2)).toMatch(
      /^trained 60 unique steps for 4 trials that train 80 alone \(ideal 1\.33x\); best t\d loss /,
    );
    expect(lines.at(-1)).toBe(`full report: stagetree report ${file}`);

    const baseline = cli('run', file, '--baseline', 'trial-based');
    expect(baseline.code, baseline.err).toBe(0);
    expect(baseline.out).toContain(join(dir, '.stagetree', 'quadratic.trial-based.db'));

    const md = cli('report', file);
    expect(md.code, md.err).toBe(0);
    expect(md.out).toMatch(/^# quadratic: finished\n/);
    expect(md.out).toContain('| one GPU per trial |');
    expect(md.out).toMatch(/measured: a trial-based run of the same study/);
    expect(md.out).toContain('| trial | lr | momentum | status | steps | loss | best loss | at |');
    const json = JSON.parse(cli('report', file, '--json').out) as StudyReport;
    expect(json.baselines.trialBased.estimated).toBe(false);
    expect(json.trials).toHaveLength(4);
    expect(Object.keys(json)).toEqual(
      expect.arrayContaining(['trials', 'stageTree', 'baselines', 'idealSavings', 'savings']),
    );

    const status = cli('status', file);
    expect(status.code, status.err).toBe(0);
    expect(status.out).toContain('| trial | lr | momentum | status |');
    const statusJson = JSON.parse(cli('status', file, '--json').out) as { table: unknown[] };
    expect(statusJson.table).toHaveLength(4);

    const wrong = cli('run', file, '--baseline', 'nope');
    expect(wrong.code).not.toBe(0);
    expect(wrong.err).toContain(
      "option '--baseline <mode>' argument 'nope' is invalid. expected \"trial-based\", got nope",
    );
  });
});
