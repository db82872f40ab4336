import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n') });
  return { code, out, err };
}

const dir = mkdtempSync(join(tmpdir(), 'stagetree-cli-'));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('stagetree plan', () => {
  it('prints the summary as one JSON object', async () => {
    const r = await run('plan', 'examples/resnet20-multistep-grid.json', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({
      trials: 27,
      trialSteps: 4860,
      treeSteps: 2100,
      stages: 105,
      idealSavings: 2.3143,
    });
  });

  it('prints a readable summary and the tree', async () => {
    const r = await run('plan', 'examples/batchsize-switch-step-decay.json', '--depth', '1');
    expect(r.code).toBe(0);
    expect(r.out).toContain('36 trials (grid)');
    expect(r.out).toContain('[0, 30) batchSize=128 lr=0.1');
  });

  it('names the file and the field of a bad study, without a stack trace', async () => {
    const p = file(
      'bad.json',
      JSON.stringify({
        name: 'x',
        space: { lr: { kind: 'cosine', max: 0.1, min: 0, period: 0 } },
        steps: 10,
        tuner: { kind: 'grid' },
        metric: { name: 'loss', mode: 'min' },
        trainer: { kind: 'sim', stepSeconds: 1 },
      }),
    );
    const r = await run('plan', p);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      `error STAGETREE_VALIDATION: ${p}: space.lr.period: expected an integer >= 1, got 0 (number)\n`,
    );
  });

  it('reports unreadable and malformed files', async () => {
    expect((await run('plan', join(dir, 'missing.json'))).err).toMatch(
      /missing\.json: cannot read the study file \(ENOENT\)/,
    );
    expect((await run('plan', file('broken.json', '{ "name": '))).err).toMatch(
      /broken\.json: not valid JSON/,
    );
  });

  it('rejects a bad command line with exit code 2', async () => {
    expect((await run('plan')).code).toBe(2);
    expect((await run('plan', 'x.json', '--depth', 'zero')).code).toBe(2);
    expect((await run('frobnicate')).code).toBe(2);
  });

  it('points adaptive tuners to simulate', async () => {
    const r = await run('plan', 'benchmarks/sim/studies/wrn16-4-sha-lr-20gpu.json');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /wrn16-4-sha-lr-20gpu\.json: tuner\.kind: expected "grid" or "random" .*`stagetree simulate` runs adaptive tuners/,
    );
  });
});

describe('stagetree simulate', () => {
  it('prints the comparison as one JSON object', async () => {
    const r = await run('simulate', 'examples/resnet20-multistep-grid.json', '--json');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.out) as Record<string, unknown>;
    expect(Object.keys(s)).toEqual(
      expect.arrayContaining([
        'stageTree',
        'trialBased',
        'savings',
        'idealSavings',
        'makespanLowerBoundHours',
        'best',
      ]),
    );
    const st = s.stageTree as Record<string, unknown>;
    expect(typeof st.gpuHours).toBe('number');
    expect(typeof st.makespanHours).toBe('number');
    expect(st).toMatchObject({ stagesRun: 105, processStarts: 4 });
    expect(s.idealSavings).toBeCloseTo(2.3143, 4);
  });

  it('prints a readable summary', async () => {
    const r = await run('simulate', 'examples/warmup-cosine-grid.json');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/savings \d\.\d\dx GPU-hours \(ideal 2\.02x\)/);
    expect(r.out).toContain('best: t');
  });
});

describe('every user-facing failure: `error CODE: message`, a non-zero exit, no stack', () => {
  const example = 'examples/quadratic-node.json';

  it('reads a study file that starts with a UTF-8 byte order mark', async () => {
    const text = readFileSync(example, 'utf8');
    const p = file('bom.json', '\uFEFF' + text);
    const r = await run('plan', p, '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ trials: 4 });
  });

  it('names --checkpoints when it is a file, and --db when it is not a study store file', async () => {
    const notDir = file('not-a-folder', 'x');
    const a = await run('run', example, '--db', join(dir, 'a.db'), '--checkpoints', notDir);
    expect(a.code).toBe(1);
    expect(a.err).toMatch(new RegExp(`^error STAGETREE_IO: ${notDir}: .+\\n$`));
    const b = await run('run', example, '--db', '/dev/null', '--checkpoints', join(dir, 'ck'));
    expect(b.code).toBe(1);
    expect(b.err).toMatch(/^error STAGETREE_IO: \/dev\/null: .*not a regular file.*\n$/);
    const c = await run('run', example, '--db', dir, '--checkpoints', join(dir, 'ck'));
    expect(c.code).toBe(1);
    expect(c.err).toMatch(new RegExp(`^error STAGETREE_IO: ${dir}: is a directory`));
    for (const r of [a, b, c]) expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('rejects a 300-character study name at its field', async () => {
    const text = readFileSync(example, 'utf8');
    const study = JSON.parse(text) as Record<string, unknown>;
    const p = file('long-name.json', JSON.stringify({ ...study, name: 'n'.repeat(300) }));
    const r = await run('plan', p);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(new RegExp(`^error STAGETREE_VALIDATION: ${p}: name: expected .+\\n$`));
  });

  it('shows the stack only with --debug', async () => {
    const r = await run('--debug', 'plan', 'does-not-exist.json');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^StudyFileError: does-not-exist.json: cannot read the study file \(ENOENT\)\n\s+at /,
    );
    expect(r.err).toMatch(/\nerror STAGETREE_VALIDATION: does-not-exist.json: cannot read/);
  });
});
