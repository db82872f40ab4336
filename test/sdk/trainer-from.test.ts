import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { toStudy, trainerFrom } from '../../src/sdk/index.js';
import { study } from './fixtures/own-trainer.js';

const ROOT = resolve(import.meta.dirname, '../..');
const FIXTURE = join(import.meta.dirname, 'fixtures', 'own-trainer.ts');

/** `worker.js --check` on the study's trainer, as the executor runs it before a study starts. */
function check(
  nodeOptions: string,
  module?: string,
): { ok: boolean; file?: string; error?: string } {
  const worker = join(ROOT, 'dist', 'cli', 'worker.js');
  if (!existsSync(worker))
    throw new Error('dist/cli/worker.js is missing: run `npm run build` first');
  const trainer = toStudy(study).trainer;
  if (trainer.kind !== 'node') throw new Error('the fixture names a node trainer');
  const r = spawnSync(process.execPath, [worker, '--check'], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
    env: {
      ...process.env,
      NODE_OPTIONS: nodeOptions,
      STAGETREE_TRAINER_MODULE: module ?? trainer.module,
      STAGETREE_TRAINER_EXPORT: trainer.export,
    },
  });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as { ok: boolean; file?: string; error?: string };
}

describe('trainerFrom', () => {
  it("names the calling module's file and an export", () => {
    const here = fileURLToPath(import.meta.url);
    expect(trainerFrom(import.meta.url, 'Mine')).toStrictEqual({
      kind: 'node',
      module: here,
      export: 'Mine',
    });
    expect(JSON.stringify(trainerFrom(new URL(import.meta.url), 'Mine', { version: 'v1' }))).toBe(
      JSON.stringify({ kind: 'node', module: here, export: 'Mine', version: 'v1' }),
    );
    expect(trainerFrom(new URL('./fixtures/own-trainer.ts', import.meta.url)).module).toBe(FIXTURE);
    expect(toStudy(study).trainer).toEqual({
      kind: 'node',
      module: FIXTURE,
      export: 'OwnTrainer',
      version: null,
    });
  });

  it('a .ts trainer loads in a worker: tsx from its own project, or the loader the user gave', () => {
    expect(check('')).toMatchObject({ ok: true, file: FIXTURE });
    expect(check('--import tsx')).toMatchObject({ ok: true, file: FIXTURE });
    // A project without tsx: a clear error saying what to do.
    const elsewhere = join(mkdtempSync(join(tmpdir(), 'stagetree-no-tsx-')), 'own-trainer.ts');
    copyFileSync(FIXTURE, elsewhere);
    const plain = check('', elsewhere);
    expect(plain.ok).toBe(false);
    expect(plain.error).toContain(`${elsewhere} is a TypeScript file and Node needs a loader`);
    expect(plain.error).toContain('npm install --save-dev tsx');
  });
});
