import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runStudy } from '../../src/cli/run.js';
import { ExecutionMode } from '../../src/engine/index.js';
import { QuadraticTrainer } from '../../src/trainer/index.js';
import {
  alone,
  fromStore,
  quiet,
  setup,
  stepsTrained,
  storedLog,
  storedMetrics,
  studyJson,
  TRAINER,
} from '../support/real-run.js';

/**
 * Real execution end to end: the engine's gRPC hub (an owner-only Unix socket), worker processes
 * (dist/cli/worker.js) running the deterministic QuadraticTrainer, a SQLite store and
 * checkpoint files. Every trial's metrics must be bit-identical to training it alone
 * from scratch, whatever is killed or corrupted on the way.
 */

const ROOT = resolve(import.meta.dirname, '../..');

const log = storedLog;

describe('stagetree run (real worker processes)', () => {
  it('gives every trial the metrics it gets alone, training shared prefixes once', async () => {
    expect(existsSync(TRAINER)).toBe(true);
    const { file, study, dir } = setup(studyJson());
    const out = await runStudy(file, study, { db: join(dir, 'st.db') }, { log: quiet });
    expect(out.status.finished).toBe(true);
    const expected = await alone(study);
    expect(storedMetrics(out.paths.db)).toEqual(expected);
    const base = await runStudy(
      file,
      study,
      { db: join(dir, 'tb.db'), checkpoints: join(dir, 'tb') },
      {
        log: quiet,
        mode: ExecutionMode.trialBased,
      },
    );
    expect(storedMetrics(base.paths.db)).toEqual(expected);
    // 4 trials x 20 steps alone; the tree shares [0, 10) per initial LR and [10, 15) for milestone 15.
    expect(stepsTrained(log(base.paths.db))).toBe(80);
    expect(stepsTrained(log(out.paths.db))).toBe(20 + 20 + 10 + 10);
    // The store's stage table: every stage trained once, and done.
    const stages = fromStore(out.paths.db, (st) => st.stages());
    expect(stages.length).toBeGreaterThan(0);
    for (const st of stages) expect([st.runs, st.doneAt !== null]).toEqual([1, true]);
  });

  it('survives a worker killed with SIGKILL mid-stage', async () => {
    const { file, study, dir } = setup(studyJson({}, { stepDelayMs: 15 }));
    let killed = false;
    const out = await runStudy(
      file,
      study,
      { db: join(dir, 'k.db') },
      {
        log: quiet,
        onEvent: (e, pool) => {
          if (!killed && e.kind === 'task' && (e.task.runs[0]?.start ?? 0) >= 5) {
            killed = true;
            const pid = pool.pid(e.task.worker);
            setTimeout(() => {
              if (pid !== undefined) process.kill(pid, 'SIGKILL');
            }, 40);
          }
        },
      },
    );
    expect(killed).toBe(true);
    expect(log(out.paths.db).some((e) => e.kind === 'lost')).toBe(true);
    expect(storedMetrics(out.paths.db)).toEqual(await alone(study));
  });

  it('fails the trials of a trainer that keeps throwing and finishes the others', async () => {
    const { file, study, dir } = setup(studyJson({ retries: 1 }, { failAboveLr: 0.03 }));
    const out = await runStudy(file, study, { db: join(dir, 'f.db') }, { log: quiet });
    expect(out.status.trials.failed).toBe(2);
    expect(out.status.failed.map((f) => f.message)).toEqual([
      'learning rate 0.05 diverges (failAboveLr 0.03)',
      'learning rate 0.05 diverges (failAboveLr 0.03)',
    ]);
    const expected = await alone(study);
    const got = storedMetrics(out.paths.db);
    for (const [k, v] of got) expect(v).toBe(expected.get(k));
    expect([...got.keys()].filter((k) => k.startsWith('t1@') || k.startsWith('t2@'))).toHaveLength(
      8,
    );
  });

  it('detects a corrupted checkpoint by its checksum and re-computes the state', async () => {
    const { file, study, dir } = setup(
      studyJson(
        {
          workers: 1,
          space: {
            lr: { kind: 'piecewise', values: [0.05, { choice: [0.01, 0.02] }], boundaries: [10] },
          },
        },
        { stepDelayMs: 10 },
      ),
    );
    let corrupted = false;
    const out = await runStudy(
      file,
      study,
      { db: join(dir, 'c.db') },
      {
        log: quiet,
        onEvent: (e) => {
          // Corrupt the checkpoint a task is about to restore (the hook runs before the
          // task's message leaves this process).
          if (e.kind === 'task' && e.task.restore.from === 'checkpoint' && !corrupted) {
            const path = join(
              dir,
              '.stagetree',
              'quadratic-checkpoints',
              `${e.task.restore.key}.ckpt`,
            );
            const bytes = readFileSync(path);
            bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff;
            writeFileSync(path, bytes);
            corrupted = true;
          }
        },
      },
    );
    expect(corrupted).toBe(true);
    const entries = log(out.paths.db);
    expect(entries.some((e) => e.kind === 'fail' && e.reason === 'checkpoint')).toBe(true);
    expect(storedMetrics(out.paths.db)).toEqual(await alone(study));
  });

  it('resumes after the engine is killed, running no completed stage again', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 1 }, { stepDelayMs: 20 }));
    const db = join(dir, 'r.db');
    const child = spawn(
      process.execPath,
      [join(ROOT, 'bin', 'stagetree.js'), 'run', file, '--db', db],
      {
        stdio: 'ignore',
      },
    );
    // Wait until some stages are done, then kill the engine.
    await new Promise<void>((done) => {
      const timer = setInterval(() => {
        if (!existsSync(db)) return;
        const n = log(db).filter((e) => e.kind === 'done').length;
        if (n >= 2) {
          clearInterval(timer);
          child.kill('SIGKILL');
          done();
        }
      }, 20);
    });
    await new Promise((r) => child.once('exit', r));
    const before = log(db);
    const doneStages = new Set<string>();
    const taskStage = new Map<number, string>();
    for (const e of before) {
      if (e.kind === 'task')
        taskStage.set(e.task.id, e.task.runs[e.task.runs.length - 1]?.stage ?? '');
      if (e.kind === 'done') doneStages.add(taskStage.get(e.task) ?? '');
    }
    expect(doneStages.size).toBeGreaterThanOrEqual(2);
    const out = await runStudy(file, study, { db }, { log: quiet });
    expect(out.resumed).toBe(true);
    expect(out.status.finished).toBe(true);
    const after = log(db).slice(before.length);
    for (const e of after) {
      if (e.kind === 'task')
        for (const r of e.task.runs) expect(doneStages.has(r.stage)).toBe(false);
    }
    expect(storedMetrics(db)).toEqual(await alone(study));
  });

  it("keeps only the best trial's final state, which loads back to its metric", async () => {
    const { file, study, dir } = setup(studyJson());
    const out = await runStudy(file, study, { db: join(dir, 'b.db') }, { log: quiet });
    expect(out.bestCheckpoint).not.toBeNull();
    const files = readdirSync(out.paths.checkpoints);
    expect(files).toEqual([basename(out.bestCheckpoint as string)]);
    const trainer = new QuadraticTrainer();
    const bytes = readFileSync(out.bestCheckpoint as string).subarray(40);
    trainer.load(new Uint8Array(bytes));
    expect(trainer.evaluate().loss).toBe(out.status.best?.value);
  });

  it('declares a worker that stops heart-beating dead and reschedules its stage', async () => {
    const { file, study, dir } = setup(studyJson({ workers: 2 }, { stepDelayMs: 30 }));
    let stopped: number | undefined;
    const out = await runStudy(
      file,
      study,
      { db: join(dir, 'h.db') },
      {
        log: quiet,
        heartbeatTimeout: 1.5,
        onEvent: (e, pool) => {
          if (stopped === undefined && e.kind === 'task' && (e.task.runs[0]?.start ?? 0) >= 5) {
            stopped = pool.pid(e.task.worker);
            if (stopped !== undefined) process.kill(stopped, 'SIGSTOP');
          }
        },
      },
    );
    expect(stopped).toBeDefined();
    expect(
      log(out.paths.db).some((e) => e.kind === 'lost' && e.reason.includes('no heartbeat')),
    ).toBe(true);
    expect(storedMetrics(out.paths.db)).toEqual(await alone(study));
  });

  it('lets SHA go on to its last rung when one of its trials fails for good', async () => {
    const { file, study, dir } = setup(
      studyJson(
        {
          retries: 0,
          space: { lr: { choice: [0.02, 0.05] }, momentum: 0.9 },
          tuner: { kind: 'sha', trials: 4, eta: 2, minSteps: 5, seed: 4 },
        },
        { failAboveLr: 0.03 },
      ),
    );
    const out = await runStudy(file, study, { db: join(dir, 's.db') }, { log: quiet });
    expect(out.status.trials.failed).toBeGreaterThan(0);
    expect(out.status.finished).toBe(true);
    expect([...storedMetrics(out.paths.db).keys()].some((k) => k.endsWith('@20'))).toBe(true);
  });
});
