import { execFileSync } from 'node:child_process';
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
});
