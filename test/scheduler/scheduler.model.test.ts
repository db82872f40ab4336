import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Engine, ExecutionMode } from '../../src/engine/index.js';
import type { Commands, Task, TaskId } from '../../src/engine/index.js';
import { getStage, getTrial, readyStages } from '../../src/tree/index.js';
import type { TrialSpec } from '../../src/tuner/types.js';
import { SimPool, simCosts } from '../../src/workers/sim/index.js';
import { EventHeap } from '../../src/workers/sim/heap.js';
import { c, scriptedTuner, simAlone, smallStudy } from '../support/sim-study.js';

/**
 * Model-based test of scheduling (fast-check `fc.commands`). The real system is the
 * engine with simulated workers, stepped event by event; the model is the simplest
 * possible reference: each trial trained alone from scratch. Commands propose, stop and
 * extend trials and let time advance; after each, the scheduler's invariants are checked,
 * and when the study drains every active trial must have seen exactly its report steps,
 * with the metrics it gets when trained alone.
 */

const STUDY = smallStudy({ workers: 3 });
const LRS = [
  0.1,
  { kind: 'piecewise', values: [0.1, 0.01], boundaries: [10] },
  { kind: 'piecewise', values: [0.1, 0.01], boundaries: [20] },
  { kind: 'piecewise', values: [0.1, 0.05], boundaries: [10] },
  0.2,
];

interface ModelTrial {
  spec: TrialSpec;
  until: number;
  reports: number[];
  stopped: boolean;
}

class Real {
  readonly engine: Engine;
  readonly pool = new SimPool(simCosts(STUDY), 'max');
  readonly heap = new EventHeap<TaskId>();
  readonly live = new Map<TaskId, number>();
  now = 0;

  /** The first trial is proposed at the start (a study with nothing to do ends at once). */
  constructor(first: TrialSpec) {
    this.engine = new Engine(STUDY, scriptedTuner({ start: (ctx) => void ctx.propose(first) }), {
      mode: ExecutionMode.stageTree,
      gpus: 3,
      maxWorkers: 3,
      share: () => 1,
      cost: { stepSeconds: () => 2 },
      checkpointEvery: null,
    });
  }

  apply(cmds: Commands): void {
    for (const id of cmds.cancel) {
      if (this.live.delete(id)) this.pool.cancel(id);
    }
    for (const task of cmds.start) {
      const out = this.pool.execute(task);
      this.live.set(task.id, out.result.metric);
      this.heap.push(this.now + out.duration, task.id);
    }
  }

  advance(): boolean {
    for (let ev = this.heap.pop(); ev; ev = this.heap.pop()) {
      const metric = this.live.get(ev.value);
      if (metric === undefined) continue;
      this.live.delete(ev.value);
      this.now = ev.t;
      this.pool.finish(ev.value);
      this.apply(this.engine.complete(this.now, ev.value, { metric }));
      return true;
    }
    return false;
  }

  checkInvariants(): void {
    const view = this.engine.inspect();
    const tree = this.engine.stageTree;
    for (const used of view.gpuUsed) expect(used).toBeLessThanOrEqual(1 + 1e-9);
    const stages = view.running.map((r) => r.stage);
    expect(new Set(stages).size).toBe(stages.length);
    for (const r of view.running) {
      expect(getStage(tree, r.stage).refs).toBeGreaterThan(0);
    }
    // Work-conserving: a ready stage waits only when every worker is busy. (A stage that
    // a new trial split off a running task's stage is covered by that task.)
    const covered = new Set<string>();
    for (const r of view.running) {
      const run = r.task.runs[r.task.runs.length - 1] as { start: number };
      for (let id: string | null = r.stage; id !== null;) {
        const st = getStage(tree, id);
        if (st.start < run.start) break;
        covered.add(id);
        id = st.parent;
      }
    }
    const waiting = readyStages(tree).filter((s) => !covered.has(s.id));
    if (waiting.length > 0 && !this.engine.done) {
      expect(view.running.length).toBe(3);
    }
  }
}

type System = { real: Real; model: ModelTrial[] };

class Propose implements fc.Command<{ trials: number }, System> {
  constructor(
    readonly lr: number,
    readonly until: number,
    readonly report: number,
  ) {}
  check = (): boolean => true;
  run(m: { trials: number }, s: System): void {
    if (s.real.engine.done) return;
    const reports = this.report < this.until ? [this.report] : [];
    const spec: TrialSpec = {
      params: { model: 'resnet20', seed: 0 },
      schedules: { lr: c(LRS[this.lr]), batchSize: c(128) },
      until: this.until,
      reports,
    };
    s.real.engine.context.propose(spec);
    s.model.push({ spec, until: this.until, reports: [...reports, this.until], stopped: false });
    m.trials++;
    s.real.apply(s.real.engine.poke(s.real.now));
    s.real.checkInvariants();
  }
  toString = (): string => `propose(lr${this.lr}, ${this.until}, report ${this.report})`;
}

class Stop implements fc.Command<{ trials: number }, System> {
  constructor(readonly k: number) {}
  check = (m: Readonly<{ trials: number }>): boolean => m.trials > 0;
  run(m: { trials: number }, s: System): void {
    if (s.real.engine.done) return;
    const i = this.k % m.trials;
    const t = s.model[i] as ModelTrial;
    s.real.engine.context.stop(`t${i + 1}`);
    t.stopped = true;
    s.real.apply(s.real.engine.poke(s.real.now));
    s.real.checkInvariants();
  }
  toString = (): string => `stop(${this.k})`;
}

class Extend implements fc.Command<{ trials: number }, System> {
  constructor(
    readonly k: number,
    readonly more: number,
  ) {}
  check = (m: Readonly<{ trials: number }>): boolean => m.trials > 0;
  run(m: { trials: number }, s: System): void {
    if (s.real.engine.done) return;
    const i = this.k % m.trials;
    const t = s.model[i] as ModelTrial;
    if (t.stopped || t.until + this.more > 40) return;
    s.real.engine.context.extend(`t${i + 1}`, t.until + this.more);
    t.until += this.more;
    t.reports.push(t.until);
    s.real.apply(s.real.engine.poke(s.real.now));
    s.real.checkInvariants();
  }
  toString = (): string => `extend(${this.k}, +${this.more})`;
}

class Advance implements fc.Command<{ trials: number }, System> {
  check = (): boolean => true;
  run(_m: { trials: number }, s: System): void {
    s.real.advance();
    s.real.checkInvariants();
  }
  toString = (): string => 'advance';
}

describe('scheduler (model-based)', () => {
  it('keeps its invariants and gives every trial what it would get alone', () => {
    let checkedMetrics = 0;
    let runsWithWork = 0;
    const commands = [
      fc
        .tuple(
          fc.integer({ min: 0, max: LRS.length - 1 }),
          fc.integer({ min: 5, max: 40 }),
          fc.integer({ min: 1, max: 39 }),
        )
        .map(([lr, until, report]) => new Propose(lr, until, report)),
      fc.nat().map((k) => new Stop(k)),
      fc.tuple(fc.nat(), fc.integer({ min: 1, max: 15 })).map(([k, more]) => new Extend(k, more)),
      fc.constant(new Advance()),
      fc.constant(new Advance()),
    ];
    fc.assert(
      fc.property(fc.commands(commands, { maxCommands: 40 }), (cmds) => {
        const first: TrialSpec = {
          params: { model: 'resnet20', seed: 0 },
          schedules: { lr: c(LRS[0]), batchSize: c(128) },
          until: 40,
          reports: [20],
        };
        const real = new Real(first);
        const system: System = {
          real,
          model: [{ spec: first, until: 40, reports: [20, 40], stopped: false }],
        };
        real.apply(real.engine.start(0));
        fc.modelRun(() => ({ model: { trials: 1 }, real: system }), cmds);
        while (real.advance()) real.checkInvariants();
        const got = new Map<string, number[]>();
        for (const e of real.engine.log) {
          if (e.kind !== 'metric') continue;
          got.set(e.trial, [...(got.get(e.trial) ?? []), e.step]);
          const i = Number(e.trial.slice(1)) - 1;
          const t = system.model[i] as ModelTrial;
          expect(e.value).toBe(simAlone(t.spec, e.step, 'max'));
          checkedMetrics++;
        }
        if (real.engine.stats.stagesRun > 3) runsWithWork++;
        system.model.forEach((t, i) => {
          if (t.stopped || real.engine.done) return;
          const id = `t${i + 1}`;
          expect(getTrial(real.engine.stageTree, id).until).toBe(t.until);
          expect(got.get(id)).toEqual([...new Set(t.reports)].sort((a, b) => a - b));
        });
      }),
      { numRuns: 150 },
    );
    // The property exercised real schedules, not empty studies.
    expect(checkedMetrics).toBeGreaterThan(100);
    expect(runsWithWork).toBeGreaterThan(10);
  });
});

export type { Task };
