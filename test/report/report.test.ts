import { describe, expect, it } from 'vitest';
import type { LogEntry, Task } from '../../src/engine/index.js';
import {
  buildReport,
  renderMarkdown,
  savingsLines,
  shortSchedule,
} from '../../src/report/index.js';
import { canonicalize, parseSchedule } from '../../src/schedule/index.js';
import type { AttemptRow, TrialRow } from '../../src/store/index.js';
import { parseStudy } from '../../src/study/index.js';

const sched = (x: unknown): ReturnType<typeof canonicalize> => canonicalize(parseSchedule(x));

describe('shortSchedule', () => {
  it('writes each schedule kind in short', () => {
    expect(shortSchedule(sched(0.9))).toBe(0.9);
    expect(shortSchedule(sched('adam'))).toBe('adam');
    expect(
      shortSchedule(sched({ kind: 'multistep', init: 0.1, factor: 0.1, milestones: [30, 60] })),
    ).toBe('0.1, 0.01@30, 0.001@60');
    expect(shortSchedule(sched({ kind: 'cosine', max: 0.1, min: 0, period: 50 }))).toBe(
      'cos(0.1→0/50), 0@50',
    );
    expect(shortSchedule(sched({ kind: 'warmup', steps: 5, from: 0.01, then: 0.1 }))).toMatch(
      /^lin\(0\.01→0\.1\/5\), 0\.1@5$/,
    );
  });
});

/**
 * A hand-made store of two trials sharing [0, 10): trial t1 to 20, t2 to 30 (diverging
 * at 10). Task 1 trains [0, 10), task 2 [10, 20) for t1, task 3 [10, 30) for t2 but is cut
 * at 25 (a pause), task 4 trains [25, 30). Every task takes 1 s a step on a half GPU,
 * one second of start-up on a new process, nothing else.
 */
function handMade(): Parameters<typeof buildReport>[0] {
  const study = parseStudy({
    name: 'hand',
    space: { lr: { choice: [0.1, 0.2] } },
    steps: 30,
    evalEvery: 10,
    tuner: { kind: 'grid' },
    metric: { name: 'loss', mode: 'min' },
    trainer: { kind: 'sim', stepSeconds: 1 },
    resources: { gpus: 0.5, cluster: 1 },
  });
  const lr1 = sched(0.1);
  const lr2 = sched({ kind: 'piecewise', values: [0.1, 0.2], boundaries: [10] });
  const run = (stage: string, start: number, end: number, lr = lr1): Task['runs'][number] => ({
    stage,
    start,
    end,
    params: {},
    schedules: { lr },
  });
  const task = (id: number, runs: Task['runs'], startProcess: boolean): Task => ({
    id,
    worker: 'w1',
    gpu: 0,
    startProcess,
    saveFirst: null,
    restore: { from: 'init' },
    runs,
    saveAfter: null,
    endKey: `K${id}`,
    share: 0.5,
  });
  const log: LogEntry[] = [
    { t: 0, kind: 'propose', trial: 't1', spec: { params: {}, schedules: { lr: lr1 }, until: 20 } },
    { t: 0, kind: 'propose', trial: 't2', spec: { params: {}, schedules: { lr: lr2 }, until: 30 } },
    { t: 0, kind: 'task', task: task(1, [run('A', 0, 10)], true) },
    { t: 11, kind: 'done', task: 1, metric: 1 },
    { t: 11, kind: 'task', task: task(2, [run('B', 10, 20)], false) },
    { t: 11, kind: 'task', task: task(3, [run('C', 10, 30, lr2)], true) },
    { t: 21, kind: 'done', task: 2, metric: 0.5 },
    { t: 26, kind: 'cut', task: 3, step: 25, stage: 'C1', key: 'Kc' },
    { t: 27, kind: 'done', task: 3, metric: 0.45 },
    { t: 27, kind: 'task', task: task(4, [run('C2', 25, 30, lr2)], false) },
    { t: 32, kind: 'done', task: 4, metric: 0.4 },
  ];
  const attempt = (
    id: number,
    task: number,
    from: number,
    to: number,
    steps: number,
    start: number,
  ): AttemptRow => ({
    id,
    task,
    worker: 'w1',
    stage: 'x',
    startedAt: from,
    endedAt: to,
    outcome: 'done',
    seconds: { start, init: 0, load: 0, save: 0, train: steps, evaluate: 0 },
    error: null,
    detail: null,
  });
  const trial = (id: string, until: number, best: number): TrialRow => ({
    id,
    seq: 0,
    status: 'stopped',
    until,
    forkOf: null,
    best: { step: until, value: best },
    lastStep: until,
    error: null,
  });
  return {
    study,
    log,
    primary: 'hand',
    finished: true,
    trials: [trial('t1', 20, 0.5), trial('t2', 30, 0.4)],
    metrics: [
      { trial: 't1', step: 10, value: 1 },
      { trial: 't1', step: 20, value: 0.5 },
      { trial: 't2', step: 10, value: 1 },
      { trial: 't2', step: 20, value: 0.45 },
      { trial: 't2', step: 30, value: 0.4 },
    ],
    attempts: [
      attempt(1, 1, 0, 11, 10, 1),
      attempt(2, 2, 11, 21, 10, 0),
      attempt(3, 3, 11, 27, 15, 1),
      attempt(4, 4, 27, 32, 5, 0),
    ],
    baseline: null,
  };
}

describe('buildReport', () => {
  it('counts steps (a cut task up to its cut), GPU time and the baselines of a hand-made run', () => {
    const r = buildReport(handMade());
    // Trials alone: 20 + 30 steps; the tree: [0, 10) once, then 10 + 20.
    expect(r.trialSteps).toBe(50);
    expect(r.stageTree.treeSteps).toBe(40);
    expect(r.stageTree.stepsTrained).toBe(10 + 10 + 15 + 5);
    expect(r.stageTree.stepsReused).toBe(0);
    expect(r.idealSavings).toBe(50 / 40);
    // GPU time: (11 + 10 + 16 + 5) s x 0.5.
    expect(r.stageTree.gpuHours).toBe((42 * 0.5) / 3600);
    expect(r.stageTree.processStarts).toBe(2);
    // Measured costs: 1 s a step, 1 s a start, no dispatch overhead: the model is exact.
    expect(r.costs).toMatchObject({ trainPerStep: 1, start: 1, overheadPerTask: 0, share: 0.5 });
    expect(r.costs.calibration).toBeCloseTo(1, 12);
    // One GPU per trial: 2 starts + 50 steps, on whole GPUs; 5 report tasks (t1: 2, t2: 3).
    expect(r.baselines.trialBased).toMatchObject({ estimated: true, wallSeconds: null });
    expect(r.baselines.trialBased.gpuHours * 3600).toBeCloseTo(2 + 50, 9);
    // The strongest: the same 2 starts and packing, 50 steps.
    expect(r.baselines.strongest.gpuHours * 3600).toBeCloseTo((2 + 50) * 0.5, 9);
    expect(r.savings).toBeCloseTo(52 / 21, 9);
    expect(r.savingsVsStrongest).toBeCloseTo(26 / 21, 9);
    // Where it came from: 10 steps not trained twice, half a GPU each; packing half of 52.
    expect(r.sources.sharedPrefixes * 3600).toBeCloseTo(10 * 0.5, 9);
    expect(r.sources.packing * 3600).toBeCloseTo(26, 9);
    expect(r.sources.processReuse).toBe(0);
    expect(r.sources.other * 3600).toBeCloseTo(52 - 21 - 5 - 26, 9);
    // Trials: the short schedules, the last and best metrics.
    expect(r.trials.map((t) => [t.id, t.params.lr, t.step, t.metric, t.steps])).toEqual([
      ['t1', 0.1, 20, 0.5, 20],
      ['t2', '0.1, 0.2@10', 30, 0.4, 30],
    ]);
    expect(r.best).toEqual({ trial: 't2', step: 30, value: 0.4 });
    const [a, b] = savingsLines(r);
    expect(a).toMatch(
      /^savings: 2\.48x fewer GPU-hours than one GPU per trial .*estimated\); 1\.24x/,
    );
    expect(b).toBe(
      'trained 40 unique steps for 2 trials that train 50 alone (ideal 1.25x); best t2 loss 0.4 at step 30',
    );
    const md = renderMarkdown(r);
    expect(
      md
        .split('\n')
        .filter((l) => /^\| t\d/.test(l))
        .map((l) => l.split(' | ')[0]),
    ).toEqual(['| t2', '| t1']);
  });

  it('takes a measured baseline as it is, with the model beside it', () => {
    const input = handMade();
    const baselineLog: LogEntry[] = [
      { t: 0, kind: 'task', task: { ...(input.log[2] as { task: Task }).task, share: 1 } },
      { t: 60, kind: 'done', task: 1, metric: 1 },
    ];
    const r = buildReport({ ...input, baseline: { log: baselineLog, finished: true } });
    expect(r.baselines.trialBased).toMatchObject({
      gpuHours: 60 / 3600,
      wallSeconds: 60,
      estimated: false,
    });
    expect((r.baselines.trialBased.modelGpuHours ?? 0) * 3600).toBeCloseTo(52, 9);
    expect(r.savings).toBeCloseTo(60 / 21, 9);
  });
});
