import { describe, expect, it } from 'vitest';
import { ExecutionMode, replay } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { planStudy } from '../../src/report/index.js';
import type { Study } from '../../src/study/index.js';
import { allStages } from '../../src/tree/index.js';
import { createTuner } from '../../src/tuner/index.js';
import type { TrialSpec } from '../../src/tuner/index.js';
import {
  engineOptions,
  simulate,
  simulateStudies,
  trainerIdentity,
} from '../../src/workers/sim/index.js';
import type { SimulationResult } from '../../src/workers/sim/index.js';
import { simAlone, smallStudy } from '../support/sim-study.js';

/**
 * Several studies on one engine (sessions sharing one stage forest and one cluster), in
 * simulation: a study submitted while another runs trains only what that one has not,
 * every trial's metrics equal training it alone, different trainer code shares nothing,
 * and equal studies share the GPUs equally.
 */

/** The ResNet-20 learning-rate grid as re-tuned one week: these milestone options. */
function week(name: string, milestones: number[], extra: Record<string, unknown> = {}): Study {
  return smallStudy({
    name,
    space: {
      lr: {
        kind: 'multistep',
        init: { choice: [0.05, 0.1, 0.2] },
        factor: 0.1,
        milestones: [{ choice: milestones }],
      },
      batchSize: 128,
    },
    ...extra,
  });
}

/** Steps of the stages the run trained (each unique stage once). */
function uniqueSteps(r: SimulationResult): number {
  let n = 0;
  for (const s of allStages(r.tree)) if (s.done) n += s.end - s.start;
  return n;
}

/** Checks every metric of a log against training its trial alone; returns how many. */
function checkAlone(log: readonly LogEntry[], mode: 'min' | 'max'): number {
  const specs = new Map<string, TrialSpec>();
  let checked = 0;
  for (const e of log) {
    if (e.kind === 'propose') specs.set(e.trial, e.spec);
    if (e.kind !== 'metric') continue;
    const spec = specs.get(e.trial) as TrialSpec;
    expect(e.value).toBe(simAlone(spec, e.step, mode));
    checked++;
  }
  return checked;
}

describe('several studies on one engine (simulation)', () => {
  const a = week('week1', [20, 30]);
  const b = week('week2', [20, 30, 35]);

  it('a study submitted while another runs trains only what that one has not', () => {
    const aloneA = simulate(a, ExecutionMode.stageTree);
    const aloneB = simulate(b, ExecutionMode.stageTree);
    const joint = simulateStudies([
      { study: a, at: 0 },
      { study: b, at: 0.3 * aloneA.makespanSeconds },
    ]);
    // week2's grid contains week1's: together they need exactly week2's tree.
    expect(uniqueSteps(joint)).toBe(planStudy(b).summary.treeSteps);
    expect(joint.stats.stepsTrained).toBeLessThan(
      aloneA.stats.stepsTrained + aloneB.stats.stepsTrained,
    );
    expect(joint.gpuSeconds).toBeLessThan(aloneA.gpuSeconds + aloneB.gpuSeconds);
    // Both studies finished, each on its own; week2's trials are week2/t1, ...
    const finishes = joint.log.filter((e) => e.kind === 'finish');
    expect(finishes).toEqual([
      expect.objectContaining({ kind: 'finish' }),
      expect.objectContaining({ kind: 'finish', study: 'week2' }),
    ]);
    const trials = new Set(joint.log.flatMap((e) => (e.kind === 'propose' ? [e.trial] : [])));
    expect([...trials].filter((t) => t.startsWith('week2/')).length).toBe(9);
    expect([...trials].filter((t) => !t.includes('/')).length).toBe(6);
    // The accounting credits the reuse: week2 got trained stages from week1, and what
    // the two trained adds up to what the engine trained.
    const w1 = joint.studies.get('') as { trained: number; reused: number };
    const w2 = joint.studies.get('week2') as { trained: number; demanded: number; reused: number };
    expect(w2.reused).toBeGreaterThan(0);
    expect(w2.trained).toBeLessThan(w2.demanded);
    expect(w1.trained + w2.trained).toBeCloseTo(joint.stats.stepsTrained, 9);
    // Every trial of both studies sees what it sees alone.
    expect(checkAlone(joint.log, 'max')).toBe(6 * 4 + 9 * 4);
  });

  it('replays a multi-study log decision for decision', () => {
    const joint = simulateStudies([
      { study: a, at: 0 },
      { study: b, at: 100 },
    ]);
    const again = replay(
      a,
      joint.log,
      createTuner(a),
      { ...engineOptions(a, ExecutionMode.stageTree), identity: trainerIdentity, studyCaps: true },
      (name) => {
        expect(name).toBe('week2');
        return { study: b, tuner: createTuner(b) };
      },
    );
    expect(again.firstDifference).toBeNull();
  });

  it('cancelling a study withdraws only its own demand, and replays', () => {
    const uncancelled = simulateStudies([
      { study: a, at: 0 },
      { study: b, at: 0 },
    ]);
    // Late enough that a stage only week2 demands (milestone 35's) is running.
    const at = 0.8 * uncancelled.makespanSeconds;
    // week2 (cancelled) demands everything week1 does plus milestone 35's branches.
    const joint = simulateStudies([
      { study: a, at: 0 },
      { study: b, at: 0, cancelAt: at },
    ]);
    const end = joint.log.findIndex((e) => e.kind === 'finish' && e.study === 'week2');
    expect(joint.log[end]).toEqual({ t: at, kind: 'finish', study: 'week2', cancelled: true });
    // Its active trials stopped at the cancel; week1's are untouched and finish normally.
    const stoppedThen = joint.log.filter((e) => e.kind === 'stop' && e.t === at);
    expect(stoppedThen.length).toBeGreaterThan(0);
    for (const e of stoppedThen)
      expect(e.kind === 'stop' && e.trial.startsWith('week2/')).toBe(true);
    // Tasks only week2 demanded were cancelled; none week1 needs.
    const studiesOf = new Map<number, readonly string[]>();
    for (const e of joint.log) if (e.kind === 'task') studiesOf.set(e.task.id, e.studies ?? []);
    const cancelled = joint.log.filter(
      (e): e is Extract<LogEntry, { kind: 'cancel' }> => e.kind === 'cancel',
    );
    expect(cancelled.length).toBeGreaterThan(0);
    for (const e of cancelled) expect(studiesOf.get(e.task)).not.toContain('week1');
    // week1 trains on to its end, every trial as it would alone: 6 trials x 4 reports.
    expect(joint.log.some((e) => e.kind === 'finish' && e.study === undefined)).toBe(true);
    const metricsOfA = joint.log.filter((e) => e.kind === 'metric' && !e.trial.includes('/'));
    expect(metricsOfA.length).toBe(6 * 4);
    expect(checkAlone(joint.log, 'max')).toBeGreaterThanOrEqual(6 * 4);
    // No metric of week2 after its cancel.
    expect(
      joint.log.slice(end).filter((e) => e.kind === 'metric' && e.trial.startsWith('week2/')),
    ).toEqual([]);
    // The cancel is an input replay gives again: the same log, decision for decision.
    const again = replay(
      a,
      joint.log,
      createTuner(a),
      { ...engineOptions(a, ExecutionMode.stageTree), identity: trainerIdentity, studyCaps: true },
      () => ({ study: b, tuner: createTuner(b) }),
    );
    expect(again.firstDifference).toBeNull();
  });

  it('a paused study starts nothing until resumed, loses nothing, and replays', () => {
    const m = simulateStudies([
      { study: a, at: 0 },
      { study: b, at: 0 },
    ]).makespanSeconds;
    const pauseAt = 0.3 * m;
    const resumeAt = 0.7 * m;
    const joint = simulateStudies([
      { study: a, at: 0 },
      { study: b, at: 0, pauseAt, resumeAt },
    ]);
    expect(joint.log.filter((e) => e.kind === 'pause' || e.kind === 'resume')).toEqual([
      { t: pauseAt, kind: 'pause', study: 'week2' },
      { t: resumeAt, kind: 'resume', study: 'week2' },
    ]);
    // While paused, every task started is one week1 demands.
    let during = 0;
    for (const e of joint.log) {
      if (e.kind !== 'task' || e.t < pauseAt || e.t >= resumeAt) continue;
      expect(e.studies ?? ['week1']).toContain('week1');
      during++;
    }
    expect(during).toBeGreaterThan(0);
    // week2-only stages start again after the resume; both finish, every trial exact.
    const week2Only = joint.log.filter(
      (e) => e.kind === 'task' && e.t >= resumeAt && (e.studies ?? []).every((x) => x === 'week2'),
    );
    expect(week2Only.length).toBeGreaterThan(0);
    expect(joint.log.filter((e) => e.kind === 'finish')).toHaveLength(2);
    expect(
      joint.log.some((e) => e.kind === 'finish' && e.t < resumeAt && e.study === 'week2'),
    ).toBe(false);
    expect(checkAlone(joint.log, 'max')).toBe(6 * 4 + 9 * 4);
    const again = replay(
      a,
      joint.log,
      createTuner(a),
      { ...engineOptions(a, ExecutionMode.stageTree), identity: trainerIdentity, studyCaps: true },
      () => ({ study: b, tuner: createTuner(b) }),
    );
    expect(again.firstDifference).toBeNull();
  });

  it('one study paused alone: the engine waits, then goes on where it stopped', () => {
    const alone = simulate(a, ExecutionMode.stageTree);
    const pauseAt = 0.4 * alone.makespanSeconds;
    const r = simulateStudies([{ study: a, at: 0, pauseAt, resumeAt: pauseAt + 1000 }]);
    expect(r.log.filter((e) => e.kind === 'task' && e.t > pauseAt && e.t < pauseAt + 1000)).toEqual(
      [],
    );
    expect(checkAlone(r.log, 'max')).toBe(6 * 4);
    // The tasks running at the pause were cut short at a step boundary and saved there...
    const cuts = r.log.filter((e) => e.kind === 'cut');
    expect(cuts.length).toBeGreaterThan(0);
    for (const c of cuts) expect(c.t).toBe(pauseAt);
    // ...so no task held a GPU while the study waited (each ended within a step and a save).
    const open = new Set<number>();
    for (const e of r.log) {
      if (e.t > pauseAt + 10) break;
      if (e.kind === 'task') open.add(e.task.id);
      else if (e.kind === 'done' || e.kind === 'cancel' || e.kind === 'fail') open.delete(e.task);
    }
    expect(open.size).toBe(0);
    // The same work as without the pause: nothing was lost or trained twice.
    expect(r.stats.stepsTrained).toBe(alone.stats.stepsTrained);
    const again = replay(a, r.log, createTuner(a), engineOptions(a, ExecutionMode.stageTree));
    expect(again.firstDifference).toBeNull();
  });

  it('pausing both studies at any moment cuts their tasks and loses nothing (12 moments)', () => {
    const alone = simulate(a, ExecutionMode.stageTree);
    const m = alone.makespanSeconds;
    let cut = 0;
    for (let i = 1; i <= 12; i++) {
      const pauseAt = (i / 13) * m;
      const joint = simulateStudies([
        { study: a, at: 0, pauseAt, resumeAt: pauseAt + 7 },
        { study: b, at: 0, pauseAt, resumeAt: pauseAt + 500 },
      ]);
      cut += joint.log.filter((e) => e.kind === 'cut').length;
      expect(checkAlone(joint.log, 'max')).toBe(6 * 4 + 9 * 4);
      const again = replay(
        a,
        joint.log,
        createTuner(a),
        {
          ...engineOptions(a, ExecutionMode.stageTree),
          identity: trainerIdentity,
          studyCaps: true,
        },
        () => ({ study: b, tuner: createTuner(b) }),
      );
      expect(again.firstDifference).toBeNull();
    }
    expect(cut).toBeGreaterThan(12);
  });

  it('shares nothing between studies whose trainers differ', () => {
    const other = week('other-code', [20, 30], {
      trainer: {
        kind: 'sim',
        stepSeconds: 3,
        startSeconds: 5,
        saveSeconds: 0.5,
        loadSeconds: 0.25,
      },
    });
    const joint = simulateStudies([
      { study: a, at: 0 },
      { study: other, at: 50 },
    ]);
    expect(uniqueSteps(joint)).toBe(
      planStudy(a).summary.treeSteps + planStudy(other).summary.treeSteps,
    );
    expect(checkAlone(joint.log, 'max')).toBe(2 * 6 * 4);
    expect(joint.studies.get('other-code')?.reused).toBe(0);
  });

  it("caps each study's concurrent tasks at its workers", () => {
    const capped = (name: string, model: string, workers: number): Study =>
      smallStudy({ name, params: { model, seed: 0 }, workers });
    const joint = simulateStudies(
      [
        { study: capped('narrow', 'resnet20', 1), at: 0 },
        { study: capped('wide', 'wrn16', 3), at: 0 },
      ],
      { gpus: 4, workers: 4 },
    );
    // The most tasks of each study running at once, from the log.
    const most = new Map<string, number>();
    const now = new Map<string, number>();
    const modelOf = new Map<number, string>();
    for (const e of joint.log) {
      if (e.kind === 'task') {
        const m = String(e.task.runs[0]?.params.model);
        modelOf.set(e.task.id, m);
        now.set(m, (now.get(m) ?? 0) + 1);
        most.set(m, Math.max(most.get(m) ?? 0, now.get(m) ?? 0));
      } else if (e.kind === 'done' || e.kind === 'cancel') {
        const m = modelOf.get(e.task) as string;
        now.set(m, (now.get(m) ?? 0) - 1);
      }
    }
    expect(most.get('resnet20')).toBe(1);
    expect(most.get('wrn16')).toBe(3);
    expect(checkAlone(joint.log, 'max')).toBe(2 * 6 * 4);
  });

  it('gives two studies of equal priority on a saturated cluster equal GPU time (fair share)', () => {
    // The first study's trials are twice as long: by critical path alone its stages would
    // always go first and the second study would wait.
    const big = (name: string, model: string, steps: number): Study =>
      smallStudy({
        name,
        params: { model, seed: 0 },
        space: {
          lr: {
            kind: 'multistep',
            init: { choice: [0.02, 0.05, 0.1, 0.2, 0.3, 0.4] },
            factor: 0.1,
            milestones: [{ choice: [steps / 2, (3 * steps) / 4] }],
          },
          batchSize: 128,
        },
        steps,
        workers: 2,
      });
    const joint = simulateStudies([
      { study: big('first', 'resnet20', 80), at: 0 },
      { study: big('second', 'wrn16', 40), at: 0 },
    ]);
    // GPU time each study's tasks got until the first study finished.
    const end = (joint.log.find((e) => e.kind === 'finish') as LogEntry).t;
    const used = new Map<string, number>();
    const open = new Map<number, { t: number; model: string; share: number }>();
    for (const e of joint.log) {
      if (e.kind === 'task') {
        const model = String(e.task.runs[0]?.params.model);
        open.set(e.task.id, { t: e.t, model, share: e.task.share });
      } else if (e.kind === 'done' || e.kind === 'cancel') {
        const o = open.get(e.task);
        if (!o || o.t >= end) continue;
        used.set(o.model, (used.get(o.model) ?? 0) + (Math.min(e.t, end) - o.t) * o.share);
      }
    }
    const first = used.get('resnet20') ?? 0;
    const second = used.get('wrn16') ?? 0;
    expect(first).toBeGreaterThan(0);
    // Within 20% of an even split (stages are indivisible, so not exactly even).
    expect(first / (first + second)).toBeGreaterThan(0.4);
    expect(first / (first + second)).toBeLessThan(0.6);
  });
});
