import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ExecutionMode } from '../../src/engine/index.js';
import type { LogEntry } from '../../src/engine/index.js';
import { ExecutorClosedError } from '../../src/errors.js';
import { Executor } from '../../src/executor/index.js';
import type { PoolFactory } from '../../src/executor/index.js';
import { StudyStore } from '../../src/store/index.js';
import type { Study } from '../../src/study/index.js';
import type { TrialSpec } from '../../src/tuner/index.js';
import {
  engineOptions,
  simCosts,
  simInventory,
  SimWorkerPool,
} from '../../src/workers/sim/index.js';
import { simAlone, smallStudy } from '../support/sim-study.js';

/**
 * The in-process executor API on the simulated pool (SimWorkerPool, 1 ms per simulated
 * second): the executor is a store, a pool from a factory and one engine; studies join
 * while others run, share stages and end on their own.
 */

const SCALE = 0.001;

function simPool(study: Study): PoolFactory {
  return () =>
    Promise.resolve({
      pool: new SimWorkerPool({
        costs: simCosts(study),
        metric: study.metric,
        timeScale: SCALE,
        heartbeatSeconds: 1,
        inventory: simInventory(engineOptions(study, ExecutionMode.stageTree).gpus),
      }),
      close: () => Promise.resolve(),
    });
}

function week(name: string, milestones: number[]): Study {
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
  });
}

/** Checks every metric of a log against training its trial alone; returns how many. */
function checkAlone(log: readonly LogEntry[], mode: 'min' | 'max'): number {
  const specs = new Map<string, TrialSpec>();
  let checked = 0;
  for (const e of log) {
    if (e.kind === 'propose') specs.set(e.trial, e.spec);
    if (e.kind !== 'metric') continue;
    expect(e.value).toBe(simAlone(specs.get(e.trial) as TrialSpec, e.step, mode));
    checked++;
  }
  return checked;
}

describe('the executor, in process, on the simulated pool', () => {
  it('takes a study while another runs: shared stages train once, each study ends on its own', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-simexec-'));
    const a = week('week1', [20, 30]);
    const b = week('week2', [20, 30, 35]);
    const db = join(dir, 'x.db');
    let done = 0;
    let submitted = false;
    const executor: Executor = await Executor.open(
      {
        db,
        checkpoints: join(dir, 'ck'),
        pool: simPool(a),
        onEvent: (e) => {
          if (e.kind !== 'done' || submitted || ++done < 3) return;
          submitted = true;
          setImmediate(() => void executor.submit({ study: b, file: join(dir, 'b.json') }));
        },
      },
      [{ study: a, file: join(dir, 'a.json') }],
    );
    const out = await executor.finish();
    expect(submitted).toBe(true);
    expect(out.stopped).toBeNull();
    expect(out.studies.map((s) => [s.name, s.end])).toEqual([
      ['week1', 'finished'],
      ['week2', 'finished'],
    ]);
    const [sa, sb] = out.studies as [(typeof out.studies)[0], (typeof out.studies)[0]];
    // week2 needed week1's whole grid again: it trained only its milestone-35 branches.
    expect(sb.stepsReused).toBeGreaterThan(0);
    expect(sb.stepsTrained).toBeLessThan(sa.stepsTrained);
    expect(sb.status.gpuSeconds).toBeLessThan(sa.status.gpuSeconds);
    const store = StudyStore.open(db);
    try {
      const log = store.events();
      expect(checkAlone(log, a.metric.mode)).toBe(6 * 4 + 9 * 4);
      expect(store.unfinished()).toEqual([]);
      // Credit adds up: every attempt is credited to exactly one study.
      expect(store.attempts('week1').length + store.attempts('week2').length).toBe(
        store.attempts().length,
      );
    } finally {
      store.close();
    }
    // A closed executor takes no study.
    await expect(executor.submit({ study: week('late', [20]), file: 'late.json' })).rejects.toThrow(
      ExecutorClosedError,
    );
  });
});
