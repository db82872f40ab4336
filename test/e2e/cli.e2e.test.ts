import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

// The installed command, as a user runs it (dist/ is built by `npm install` / `npm test`).
describe('the stagetree command', () => {
  it('plans an example study', () => {
    const out = execFileSync(
      process.execPath,
      ['bin/stagetree.js', 'plan', 'examples/warmup-cosine-grid.json', '--json'],
      {
        encoding: 'utf8',
      },
    );
    expect(JSON.parse(out)).toMatchObject({ trials: 24, treeSteps: 2378 });
  });

  it('exits non-zero with a one-line error for a user mistake', () => {
    let status = 0;
    let stderr = '';
    try {
      execFileSync(process.execPath, ['bin/stagetree.js', 'plan', 'does-not-exist.json'], {
        encoding: 'utf8',
        stdio: 'pipe',
      });
    } catch (e) {
      status = (e as { status: number }).status;
      stderr = (e as { stderr: string }).stderr;
    }
    expect(status).toBe(1);
    expect(stderr.trim()).toBe(
      'error STAGETREE_VALIDATION: does-not-exist.json: cannot read the study file (ENOENT)',
    );
  });

  it("runs the README's example study for real and reports it", () => {
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-readme-'));
    const db = join(dir, 'study.db');
    const out = execFileSync(
      process.execPath,
      [
        'bin/stagetree.js',
        'run',
        'examples/quadratic-node.json',
        '--db',
        db,
        '--checkpoints',
        join(dir, 'ck'),
        '--json',
      ],
      { encoding: 'utf8' },
    );
    const status = JSON.parse(out) as {
      finished: boolean;
      trials: { total: number; failed: number };
      best: unknown;
    };
    expect(status.finished).toBe(true);
    expect(status.trials).toMatchObject({ total: 4, failed: 0 });
    expect(status.best).not.toBeNull();
    const shown = execFileSync(
      process.execPath,
      ['bin/stagetree.js', 'status', 'examples/quadratic-node.json', '--db', db],
      {
        encoding: 'utf8',
      },
    );
    expect(shown).toMatch(/study quadratic-node-lr-grid: finished, 4 trials/);
  });
});
