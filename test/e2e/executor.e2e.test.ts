import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Executor } from '../../src/executor/index.js';
import type { StudyOutcome } from '../../src/executor/index.js';
import { parseStudy } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import {
  alone,
  fromStore,
  quiet,
  ROOT,
  storedLog,
  studyJson,
  studyMetrics,
  trainedStages,
} from '../support/real-run.js';

/**
 * One executor, several studies, real worker processes: studies of the same trainer
 * code share stages (the later one trains only what the earlier has not), a study of
 * other code shares nothing, and killing the executor loses no completed stage.
 */

/** Writes study files into one folder; returns their paths and parsed studies. */
function studies(jsons: readonly Record<string, unknown>[]): {
  dir: string;
  files: string[];
  parsed: Study[];
} {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-exec-'));
  const files = jsons.map((j, i) => {
    const f = join(dir, `s${i}.json`);
    writeFileSync(f, JSON.stringify(j));
    return f;
  });
  return { dir, files, parsed: jsons.map((j) => parseStudy(j)) };
}

/** A weekly re-tune: the same grid, with `milestones` as the milestone options. */
function week(name: string, milestones: number[], extra: Record<string, unknown> = {}) {
  const base = studyJson({ name, ...extra }, { stepDelayMs: 15 });
  const space = base.space as Record<string, Record<string, unknown>>;
  return {
    ...base,
    space: { ...space, lr: { ...space.lr, milestones: [{ choice: milestones }] } },
  };
}

describe('one executor, several studies (real worker processes)', () => {
  it('a study submitted when another is under way trains only what that one has not; other code shares nothing', async () => {
    const { dir, files, parsed } = studies([
      week('weekA', [10, 15]),
      week('weekB', [10, 15, 18]),
      week('other', [10, 15], { trainer: { ...(studyJson().trainer as object), version: 'v2' } }),
    ]);
    const [a, b, c] = parsed as [Study, Study, Study];
    const db = join(dir, 'exec.db');
    let doneSeen = 0;
    let submitted = false;
    const executor = await Executor.open(
      {
        db,
        checkpoints: join(dir, 'ck'),
        workers: 3,
        log: quiet,
        onEvent: (e) => {
          if (e.kind !== 'done' || submitted || ++doneSeen < 2) return;
          // About a third of weekA is trained: the next week's study and other code arrive.
          submitted = true;
          setImmediate(() => {
            void executor.submit({ study: b, file: files[1] as string });
            void executor.submit({ study: c, file: files[2] as string });
          });
        },
      },
      [{ study: a, file: files[0] as string }],
    );
    const out = await executor.finish();
    expect(submitted).toBe(true);
    expect(out.stopped).toBeNull();
    const by = new Map(out.studies.map((s) => [s.name, s] as [string, StudyOutcome]));
    expect([...by.keys()]).toEqual(['weekA', 'weekB', 'other']);
    for (const s of by.values()) expect([s.name, s.end]).toEqual([s.name, 'finished']);

    // Bit-identical to training each trial alone, for every study.
    let compared = 0;
    for (const st of [a, b, c]) {
      const expected = await alone(st);
      expect(studyMetrics(db, st.name)).toEqual(expected);
      compared += expected.size;
    }
    expect(compared).toBe(4 * 4 + 6 * 4 + 4 * 4);

    // weekB's new trials (milestone 18) need [15, 20) per initial LR beyond what weekA
    // trains; at most [10, 15) more when weekA's stage was mid-task at the split.
    const weekB = by.get('weekB') as StudyOutcome;
    expect(weekB.stepsTrained).toBeGreaterThanOrEqual(10);
    expect(weekB.stepsTrained).toBeLessThanOrEqual(20);
    expect(weekB.stepsTrained + weekB.stepsReused).toBeGreaterThanOrEqual(70);
    // Other code: every one of its 60 unique steps trained by its own tasks.
    const other = by.get('other') as StudyOutcome;
    expect([other.stepsTrained, other.stepsReused]).toEqual([60, 0]);
    // The accounting credits each study with its own GPU time: weekB's is a fraction of
    // other's, which trained a whole tree.
    expect(weekB.status.gpuSeconds).toBeGreaterThan(0);
    expect(weekB.status.gpuSeconds).toBeLessThan(other.status.gpuSeconds);
    // No demanded stage was trained twice.
    const trained = trainedStages(storedLog(db));
    expect(new Set(trained).size).toBe(trained.length);
  });

  it('cancels one study through its handle: the other goes on and finishes exactly', async () => {
    const { dir, files, parsed } = studies([week('keep', [10, 15]), week('drop', [10, 15, 18])]);
    const [keep, drop] = parsed as [Study, Study];
    const db = join(dir, 'exec.db');
    let cancelled = false;
    const executor: Executor = await Executor.open(
      {
        db,
        checkpoints: join(dir, 'ck'),
        workers: 2,
        log: quiet,
        onEvent: (e) => {
          if (cancelled || e.kind !== 'done') return;
          cancelled = true;
          setImmediate(() => executor.handle('drop').cancel());
        },
      },
      [
        { study: keep, file: files[0] as string },
        { study: drop, file: files[1] as string },
      ],
    );
    const dropped = await executor.handle('drop').result();
    expect(dropped.end).toBe('cancelled');
    const out = await executor.finish();
    expect(out.stopped).toBeNull();
    expect(out.studies.map((s) => [s.name, s.end])).toEqual([
      ['keep', 'finished'],
      ['drop', 'cancelled'],
    ]);
    const log = storedLog(db);
    expect(log.filter((e) => e.kind === 'finish')).toContainEqual(
      expect.objectContaining({ study: 'drop', cancelled: true }),
    );
    expect(fromStore(db, (s) => s.unfinished())).toEqual([]);
    expect(studyMetrics(db, 'keep')).toEqual(await alone(keep));

    // Opened again, both are reported as they ended, and the log gains nothing.
    const count = log.length;
    const again = await Executor.open({ db, checkpoints: join(dir, 'ck'), log: quiet }, [
      { study: keep, file: files[0] as string },
      { study: drop, file: files[1] as string },
    ]);
    const reported = await again.finish();
    expect(reported.studies.map((s) => [s.name, s.end, s.resumed])).toEqual([
      ['keep', 'finished', true],
      ['drop', 'cancelled', true],
    ]);
    expect(storedLog(db)).toHaveLength(count);
  });

  it('kill the executor while two studies run: reopened, both finish and no completed stage trains again', async () => {
    const { dir, files, parsed } = studies([week('alpha', [10, 15]), week('beta', [12, 15, 18])]);
    const db = join(dir, 'exec.db');
    const args = [
      join(ROOT, 'bin', 'stagetree.js'),
      'run',
      ...files,
      '--db',
      db,
      '--checkpoints',
      join(dir, 'ck'),
      '--workers',
      '3',
    ];
    // First run: SIGKILL the executor (its workers follow it) once some stages are done.
    const child = spawn(process.execPath, args, { stdio: 'ignore' });
    let killedAfter = 0;
    for (let i = 0; i < 600 && child.exitCode === null; i++) {
      await new Promise((r) => setTimeout(r, 50));
      killedAfter = fromStore(db, (s) => s.events().filter((e) => e.kind === 'done').length);
      if (killedAfter >= 4) {
        child.kill('SIGKILL');
        break;
      }
    }
    await new Promise<void>((r) => (child.exitCode !== null ? r() : child.on('exit', () => r())));
    expect(killedAfter).toBeGreaterThanOrEqual(4);
    const before = trainedStages(storedLog(db));
    expect(fromStore(db, (s) => s.unfinished())).toEqual(['alpha', 'beta']);

    // Second run: resumes both from the store and finishes them.
    const second = spawn(process.execPath, [...args, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    second.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    second.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((r) => second.on('exit', (c) => r(c)));
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const json = JSON.parse(stdout) as {
      studies: { name: string; status: string; resumed: boolean }[];
    };
    expect(json.studies.map((s) => [s.name, s.status, s.resumed])).toEqual([
      ['alpha', 'finished', true],
      ['beta', 'finished', true],
    ]);
    const log = storedLog(db);
    const after = trainedStages(log).slice(before.length);
    expect(after.length).toBeGreaterThan(0);
    // Nothing trained before the kill is trained again, not even as a re-computation.
    const done = new Set(before);
    let checked = 0;
    let restarted = false;
    for (const e of log) {
      if (e.kind === 'lost' && e.reason === 'the engine restarted') restarted = true;
      if (!restarted || e.kind !== 'task') continue;
      for (const r of e.task.runs) {
        expect(done.has(r.stage)).toBe(false);
        checked++;
      }
    }
    expect(restarted).toBe(true);
    expect(checked).toBeGreaterThan(0);
    for (const st of parsed) expect(studyMetrics(db, st.name)).toEqual(await alone(st));
  });
});
