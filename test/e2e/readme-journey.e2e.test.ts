import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { LogEntry } from '../../src/engine/index.js';
import { valueAt } from '../../src/schedule/index.js';
import type { Canonical } from '../../src/schedule/index.js';
import type { TrialSpec } from '../../src/tuner/index.js';
import { RegressionTrainer } from '../../examples/sdk/trainer.js';
import { fromStore, ROOT, studyMetrics } from '../support/real-run.js';

/**
 * The README's journey, as written: `npx stagetree serve` in one terminal, `npx tsx
 * examples/sdk/tune.ts` in another (the study defined with the SDK, its trainer a class
 * of the same TypeScript project), then `npx stagetree list` / `get`. The only change:
 * the server listens on a free port, named to the others by STAGETREE_SERVER.
 */

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const STORE = mkdtempSync(join(tmpdir(), 'stagetree-journey-'));
const serve = spawn(
  process.execPath,
  [join(ROOT, 'bin', 'stagetree.js'), 'serve', '--listen', '127.0.0.1:0', '--store', STORE],
  { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
);
afterAll(() => {
  if (serve.exitCode === null) serve.kill('SIGKILL');
});

const address = new Promise<string>((resolve, reject) => {
  let out = '';
  serve.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    const m = /stagetree engine on (\S+)/.exec(out);
    if (m) resolve(m[1] as string);
  });
  serve.on('exit', (code) => reject(new Error(`serve exited with ${code}`)));
});

/** Runs a README command line (npx ...) from the repository root against the server. */
async function sh(line: string): Promise<{ code: number | null; out: string; err: string }> {
  const env = { ...process.env, STAGETREE_SERVER: await address };
  const r = spawnSync('bash', ['-c', line], { cwd: ROOT, env, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The RegressionTrainer's loss for one trial trained alone from scratch to `step`. */
function alone(spec: TrialSpec, step: number): number {
  const t = new RegressionTrainer();
  const params = Object.fromEntries(
    Object.entries(spec.params).filter(([k]) => !k.startsWith('__')),
  );
  t.init(params, typeof params.seed === 'number' ? params.seed : 0);
  const hps = Object.keys(spec.schedules).sort();
  t.train(0, step, (s) =>
    Object.fromEntries(hps.map((h) => [h, valueAt(spec.schedules[h] as Canonical, s)])),
  );
  return t.evaluate().loss as number;
}

describe('the README journey: serve, submit from TypeScript, watch, get the result', () => {
  it('runs as written, and every trial equals training it alone', async () => {
    for (const line of [
      'npx stagetree serve ',
      'npx tsx examples/sdk/tune.ts ',
      'npx stagetree list ',
    ])
      expect(README).toContain(line);

    const tune = await sh('npx tsx examples/sdk/tune.ts');
    expect(tune.err).toBe('');
    expect(tune.code).toBe(0);
    const lines = tune.out.trim().split('\n');
    expect(lines[0]).toBe('submitted sdk-quickstart');
    expect(lines.filter((l) => /^ {2}t\d step \d+: loss \d/.test(l))).toHaveLength(4 * 6);
    expect(lines.at(-1)).toMatch(
      /^sdk-quickstart: finished; best t\d loss \d\.\d{4} at step \d+; 200 epochs trained for 4 trials of 60$/,
    );
    // The README quotes the last line.
    expect(README).toContain((lines.at(-1) as string).split(' loss ')[0] as string);

    const list = await sh('npx stagetree list');
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/^sdk-quickstart: finished, 4 trials/);
    const get = await sh('npx stagetree get sdk-quickstart --json');
    expect(JSON.parse(get.out)).toMatchObject({
      id: 'sdk-quickstart',
      state: 'finished',
      stepsTrained: 200,
    });

    // Run again: the server has it; the script follows it to the same result.
    const again = await sh('npx tsx examples/sdk/tune.ts');
    expect(again.code).toBe(0);
    expect(again.out).toContain('sdk-quickstart is on the server already; following it');
    expect(again.out.trim().split('\n').at(-1)).toBe(lines.at(-1));

    // Every reported loss is bit-identical to training that trial alone.
    const db = join(STORE, 'engine.db');
    const specs = new Map<string, TrialSpec>();
    for (const e of fromStore(db, (s): LogEntry[] => s.events()))
      if (e.kind === 'propose') specs.set(e.trial, e.spec);
    let checked = 0;
    for (const [key, value] of studyMetrics(db, 'sdk-quickstart')) {
      const [trial, step] = key.split('@') as [string, string];
      expect(value, key).toBe(alone(specs.get(trial) as TrialSpec, Number(step)));
      checked++;
    }
    expect(checked).toBe(4 * 6);
  });
});
