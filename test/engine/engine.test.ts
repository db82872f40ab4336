import { describe, expect, it } from 'vitest';
import { Engine, ExecutionMode, accountLog, replay } from '../../src/engine/index.js';
import { ConflictError, NotRunningError, ResourceFitError } from '../../src/errors.js';
import type { LogEntry } from '../../src/engine/index.js';
import { treeStats } from '../../src/tree/index.js';
import { createTuner } from '../../src/tuner/index.js';
import { engineOptions, simulate } from '../../src/workers/sim/index.js';
import { gridTuner, scriptedTuner, smallStudy, spec } from '../support/sim-study.js';

const metrics = (log: readonly LogEntry[]): string[] =>
  log
    .filter((e): e is Extract<LogEntry, { kind: 'metric' }> => e.kind === 'metric')
    .map((e) => `${e.trial}@${e.step}=${e.value}`)
    .sort();

describe('engine on simulated workers', () => {
  it('trains every unique step once and reports every metric', () => {
    const study = smallStudy();
    const r = simulate(study, ExecutionMode.stageTree, gridTuner(study));
    const stats = treeStats(r.tree);
    expect(r.stats.stepsTrained).toBe(stats.treeSteps);
    expect(r.stats.stagesRecomputed).toBe(0);
    expect(r.stats.tasksCancelled).toBe(0);
    // 6 trials x 4 report points.
    expect(metrics(r.log)).toHaveLength(24);
    // GPU time = training + 2 process starts + checkpoint saves and loads.
    const expected =
      stats.treeSteps * 2 +
      r.stats.processStarts * 5 +
      r.stats.checkpointsSaved * 0.5 +
      r.stats.checkpointsLoaded * 0.25;
    expect(r.gpuSeconds).toBeCloseTo(expected, 9);
  });

  it('gives every trial the same metrics as running it alone (equivalence)', () => {
    const study = smallStudy();
    const st = simulate(study, ExecutionMode.stageTree, gridTuner(study));
    const tb = simulate(study, ExecutionMode.trialBased, gridTuner(study));
    expect(metrics(st.log)).toEqual(metrics(tb.log));
    expect(tb.stats.stepsTrained).toBe(6 * 40);
    expect(tb.gpuSeconds / st.gpuSeconds).toBeGreaterThan(1.3);
  });

  it('replays a study from its event log, decision for decision', () => {
    const study = smallStudy({ workers: 3 });
    const r = simulate(study, ExecutionMode.stageTree, gridTuner(study));
    const again = replay(
      study,
      r.log,
      gridTuner(study),
      engineOptions(study, ExecutionMode.stageTree),
    );
    expect(again.firstDifference).toBeNull();
    expect(again.engine.stats).toEqual(r.stats);
    expect(accountLog(r.log).gpuSeconds).toBeCloseTo(r.gpuSeconds, 9);
    expect(accountLog(r.log).makespanSeconds).toBe(r.makespanSeconds);
  });

  it('replays an adaptive study (ASHA), its tuner deciding the same from the same events', () => {
    const study = smallStudy({
      workers: 3,
      space: { lr: { loguniform: [0.01, 0.3] }, batchSize: { choice: [128, 256] } },
      tuner: { kind: 'asha', trials: 30, eta: 3, minSteps: 4, seed: 9 },
    });
    const r = simulate(study, ExecutionMode.stageTree, createTuner(study));
    expect(r.log.filter((e) => e.kind === 'extend').length).toBeGreaterThan(3);
    const again = replay(
      study,
      r.log,
      createTuner(study),
      engineOptions(study, ExecutionMode.stageTree),
    );
    expect(again.firstDifference).toBeNull();
    expect(accountLog(r.log).gpuSeconds).toBeCloseTo(r.gpuSeconds, 9);
  });

  it('checkpoints a fork point once: one child continues in place, the other restores', () => {
    const study = smallStudy({ workers: 2 });
    const tuner = scriptedTuner({
      start(ctx) {
        ctx.propose(spec({ kind: 'piecewise', values: [0.1, 0.01], boundaries: [10] }, 20));
        ctx.propose(spec({ kind: 'piecewise', values: [0.1, 0.05], boundaries: [10] }, 20));
      },
    });
    const r = simulate(study, ExecutionMode.stageTree, tuner);
    expect(r.stats.checkpointsSaved).toBe(1);
    expect(r.stats.checkpointsLoaded).toBe(1);
    expect(r.stats.stepsTrained).toBe(30);
  });

  it('saves a paused trial when its worker moves on, and restores it when extended', () => {
    const study = smallStudy({ workers: 1 });
    let extended = false;
    let first: string | null = null;
    const tuner = scriptedTuner({
      start(ctx) {
        ctx.propose(spec(0.1, 10));
        ctx.propose(spec(0.2, 10));
      },
      onMetric(_ctx, e) {
        first ??= e.trial;
      },
      onIdle(ctx) {
        if (!extended && first !== null) {
          extended = true;
          ctx.extend(first, 20);
        }
      },
    });
    const r = simulate(study, ExecutionMode.stageTree, tuner);
    // The first trial paused at 10 and its worker moved on to the other one: saved, and
    // loaded for the extension; the other paused trial is saved when the worker leaves
    // it for that extension (it may be extended too). All in one process.
    expect(r.stats.checkpointsSaved).toBe(2);
    expect(r.stats.checkpointsLoaded).toBe(1);
    expect(r.stats.processStarts).toBe(1);
    expect(metrics(r.log).filter((m) => m.startsWith(`${first ?? ''}@`))).toHaveLength(2);
  });

  it('cancels a running stage when its last trial is stopped', () => {
    const study = smallStudy({ workers: 2 });
    const tuner = scriptedTuner({
      start(ctx) {
        ctx.propose(spec(0.1, 10));
        ctx.propose(spec(0.2, 40));
      },
      onMetric(ctx, e) {
        if (e.trial === 't1') ctx.stop('t2');
      },
    });
    const r = simulate(study, ExecutionMode.stageTree, tuner);
    expect(r.stats.tasksCancelled).toBe(1);
    // t2's stage [0, 40) ran 10 steps' worth of time (20 s) before the cancel.
    expect(r.makespanSeconds).toBe(5 + 20);
    expect(r.gpuSeconds).toBeCloseTo(2 * (5 + 20), 9);
    expect(metrics(r.log)).toEqual(['t1@10=' + String(r.best?.metric)]);
  });

  it('re-computes a lost ancestor instead of failing', () => {
    // t1 trains [0, 20) alone and finishes; t2 then diverges at 10, inside the done
    // stage: the state at 10 was never kept, so [0, 10) is trained again.
    const study = smallStudy({ workers: 1 });
    let added = false;
    const tuner = scriptedTuner({
      start(ctx) {
        ctx.propose(spec(0.1, 20));
      },
      onIdle(ctx) {
        if (!added) {
          added = true;
          ctx.propose(spec({ kind: 'piecewise', values: [0.1, 0.3], boundaries: [10] }, 20));
        }
      },
    });
    const r = simulate(study, ExecutionMode.stageTree, tuner);
    expect(r.stats.stepsTrained).toBe(20 + 10 + 10);
    expect(metrics(r.log).filter((m) => m.startsWith('t2@'))).toHaveLength(1);
  });

  it('reports at once, at no cost, to a trial whose steps another trial already trained', () => {
    const study = smallStudy({ workers: 1 });
    let again = false;
    const tuner = scriptedTuner({
      start(ctx) {
        ctx.propose(spec(0.1, 20, [10]));
      },
      onIdle(ctx) {
        if (!again) {
          again = true;
          ctx.propose(spec(0.1, 10));
        }
      },
    });
    const r = simulate(study, ExecutionMode.stageTree, tuner);
    expect(r.stats.stagesRun).toBe(2);
    const got = metrics(r.log);
    expect(got.filter((m) => m.startsWith('t2@10='))).toEqual(
      got.filter((m) => m.startsWith('t1@10=')).map((m) => m.replace('t1', 't2')),
    );
  });

  it('packs stages onto GPUs by a share that depends on the batch size', () => {
    const study = smallStudy({
      workers: 4,
      resources: { gpus: { by: 'batchSize', values: { '128': 0.5 }, default: 1 }, cluster: 1 },
    });
    const tuner = scriptedTuner({
      start(ctx) {
        ctx.propose(spec(0.1, 10));
        ctx.propose(spec(0.2, 10));
      },
    });
    const r = simulate(study, ExecutionMode.stageTree, tuner);
    const tasks = r.log.filter((e): e is Extract<LogEntry, { kind: 'task' }> => e.kind === 'task');
    // Both half-GPU stages run at once on the one GPU, each slowed by the sharing curve.
    expect(tasks.map((e) => [e.t, e.task.gpu, e.task.share])).toEqual([
      [0, 0, 0.5],
      [0, 0, 0.5],
    ]);
    expect(r.makespanSeconds).toBeCloseTo(5 + (10 * 2 * 2) / 1.95, 9);
  });

  it('saves a safety checkpoint where a stage crosses the study interval', () => {
    const study = smallStudy({ workers: 1, checkpointEvery: 15 });
    const r = simulate(
      study,
      ExecutionMode.stageTree,
      scriptedTuner({ start: (ctx) => void ctx.propose(spec(0.1, 40, [10, 20, 30])) }),
    );
    // Stages [0,10) [10,20) [20,30) [30,40): the ones crossing 15 and 30 save.
    expect(r.stats.checkpointsSaved).toBe(2);
  });

  it('forgets a checkpoint once nothing below it needs it', () => {
    const study = smallStudy({ workers: 1 });
    const tuner = () =>
      scriptedTuner({
        start(ctx) {
          ctx.propose(spec({ kind: 'piecewise', values: [0.1, 0.01], boundaries: [10] }, 20));
          ctx.propose(spec({ kind: 'piecewise', values: [0.1, 0.05], boundaries: [10] }, 20));
        },
      });
    const r = simulate(study, ExecutionMode.stageTree, tuner());
    const options = engineOptions(study, ExecutionMode.stageTree);
    // Midway (the fork point saved, one child done): the other child still needs it.
    const firstDone = r.log.findIndex(
      (e, i) =>
        e.kind === 'done' &&
        i > r.log.findIndex((x) => x.kind === 'task' && x.task.saveFirst !== null),
    );
    const mid = replay(study, r.log.slice(0, firstDone + 1), tuner(), options);
    expect(mid.engine.collectCheckpoints()).toEqual([]);
    // At the end nothing does.
    const end = replay(study, r.log, tuner(), options);
    // When the study has finished nothing needs any checkpoint: the fork point's, and
    // the paused trial's saved when the worker moved on, all go.
    const saved = r.log.flatMap((e) =>
      e.kind === 'task' && e.task.saveFirst !== null ? [e.task.saveFirst] : [],
    );
    expect(saved).toHaveLength(2);
    expect(end.engine.collectCheckpoints()).toEqual([...saved].sort());
    expect(end.engine.collectCheckpoints()).toEqual([]);
  });
});

describe('engine errors', () => {
  it('a ready stage whose GPU share fits on no GPU is a ResourceFitError', () => {
    const study = smallStudy();
    // parseStudy refuses a share above 1; engine options built by hand can hold one.
    const options = { ...engineOptions(study, ExecutionMode.stageTree), share: () => 1.5 };
    const engine = new Engine(study, gridTuner(study), options);
    const e = caught(() => engine.start(0));
    expect(e).toBeInstanceOf(ResourceFitError);
    expect(e).toMatchObject({
      code: 'STAGETREE_RESOURCE_FIT',
      share: 1.5,
      capacity: 1,
      gpus: options.gpus,
    });
    expect((e as Error).message).toMatch(/fits on no GPU: it needs a GPU share of 1\.5/);
  });

  it('a result for a task that is not running is a NotRunningError naming the task', () => {
    const study = smallStudy();
    const engine = new Engine(
      study,
      gridTuner(study),
      engineOptions(study, ExecutionMode.stageTree),
    );
    const [task] = engine.start(0).start;
    if (!task) throw new Error('expected a task');
    engine.complete(10, task.id, { metric: 0.5 });
    const e = caught(() => engine.complete(11, task.id, { metric: 0.5 }));
    expect(e).toBeInstanceOf(NotRunningError);
    expect(e).toBeInstanceOf(ConflictError);
    expect(e).toMatchObject({ code: 'STAGETREE_CONFLICT', task: task.id });
  });
});

/** What `fn` throws (it must throw). */
function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}
