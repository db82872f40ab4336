import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '../../src/sdk/client.js';
import type { Client } from '../../src/sdk/client.js';
import { EngineUnavailableError } from '../../src/errors.js';
import { parseStudy } from '../../src/study/index.js';
import {
  alone,
  fromStore,
  ROOT,
  studyJson,
  stepsTrained,
  studyMetrics,
  trainedStages,
} from '../support/real-run.js';
import { hasOpenssl, selfSignedCertificate } from '../support/tls.js';

/**
 * The engine server for real: `stagetree serve` as a child process on 127.0.0.1 (port 0),
 * studies submitted through the SDK, worker processes, the SQLite store. Every trial's
 * metrics equal training it alone, whatever is paused or killed on the way.
 */

const servers: ChildProcess[] = [];
const clients: Client[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) if (s.exitCode === null) s.kill('SIGKILL');
});

/** Starts `stagetree serve`; resolves with its address once it listens. */
async function serve(
  store: string,
  extra: string[] = [],
): Promise<{ child: ChildProcess; address: string; stderr: () => string }> {
  const child = spawn(
    process.execPath,
    [
      join(ROOT, 'bin', 'stagetree.js'),
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--store',
      store,
      '--workers',
      '2',
      ...extra,
    ],
    // Workers train in chunks of 0.3 s (not 10): a pause then cuts this test's short stages.
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, STAGETREE_CHUNK_SECONDS: '0.3' } },
  );
  servers.push(child);
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const address = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /stagetree engine on (\S+)/.exec(out);
      if (m) resolve(m[1] as string);
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${err}`)));
  });
  return { child, address, stderr: () => err };
}

/** A study of the QuadraticTrainer whose grid is `milestones` (two initial LRs), 10 ms a step. */
function study(name: string, milestones: number[]): Record<string, unknown> {
  const base = studyJson({ name }, { stepDelayMs: 10 });
  const space = base.space as Record<string, Record<string, unknown>>;
  return {
    ...base,
    space: { ...space, lr: { ...space.lr, milestones: [{ choice: milestones }] } },
  };
}

const waitFor = async (
  what: string,
  ok: () => boolean | Promise<boolean>,
  seconds = 60,
): Promise<void> => {
  for (let i = 0; i < seconds * 20; i++) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
};

describe('stagetree serve and the SDK (real worker processes)', () => {
  it('two studies submitted through the SDK share their prefix; the second says what it reused', async () => {
    const store = mkdtempSync(join(tmpdir(), 'stagetree-serve-'));
    const { address } = await serve(store);
    const client = connect(address);
    clients.push(client);
    const a = study('alpha', [10, 15]);
    const b = study('beta', [10, 15, 18]);
    const first = await client.submit(a);
    expect(first.id).toBe('alpha');
    // Submit the second once the first has reported a metric.
    for await (const e of first.events()) if (e.kind === 'metric') break;
    const second = await client.submit(b);
    const [ra, rb] = await Promise.all([first.result(), second.result()]);
    expect([ra.state, rb.state]).toEqual(['finished', 'finished']);
    expect(rb.stepsReused).toBeGreaterThan(0);
    expect(rb.stepsTrained).toBeLessThan(ra.stepsTrained);
    expect(rb.stepsTrained + rb.stepsReused).toBeGreaterThanOrEqual(70);
    expect((await client.list()).map((s) => s.id)).toEqual(['alpha', 'beta']);
    const db = join(store, 'engine.db');
    expect(studyMetrics(db, 'alpha')).toEqual(await alone(parseStudy(a)));
    expect(studyMetrics(db, 'beta')).toEqual(await alone(parseStudy(b)));
    // A study submitted twice under one name is refused, naming it.
    await expect(client.submit(a)).rejects.toThrow(/alpha.*on this engine already/);
  });

  it('SIGKILL serve mid-study: started again, the study finishes and no completed stage trains again', async () => {
    const store = mkdtempSync(join(tmpdir(), 'stagetree-serve-'));
    const db = join(store, 'engine.db');
    const s = study('gamma', [10, 15]);
    const one = await serve(store);
    const c1 = connect(one.address);
    clients.push(c1);
    await c1.submit(s);
    await waitFor('three completed stages', () =>
      fromStore(db, (st) => st.events().filter((e) => e.kind === 'done').length >= 3),
    );
    one.child.kill('SIGKILL');
    await new Promise((r) => one.child.once('exit', r));
    const before = trainedStages(fromStore(db, (st) => st.events()));

    const two = await serve(store);
    const c2 = connect(two.address);
    clients.push(c2);
    const info = await c2.study('gamma').result();
    expect(info.state).toBe('finished');
    const log = fromStore(db, (st) => st.events());
    const done = new Set(before);
    let restarted = false;
    let checked = 0;
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
    expect(studyMetrics(db, 'gamma')).toEqual(await alone(parseStudy(s)));
  });

  it('pause mid-stage: the running stage stops at a checkpoint, no slot stays busy, nothing is lost; resume finishes exactly', async () => {
    const store = mkdtempSync(join(tmpdir(), 'stagetree-serve-'));
    const db = join(store, 'engine.db');
    // Long stages (60 steps of 20 ms before the first branch): a pause lands mid-stage.
    const base = study('delta', [60, 90]);
    const s = { ...base, steps: 120, evalEvery: 30, params: { seed: 1, stepDelayMs: 20 } };
    const first = await serve(store);
    const c1 = connect(first.address);
    clients.push(c1);
    const submitted = await c1.submit(s);
    await waitFor('a running task', () =>
      fromStore(db, (st) => st.attempts().some((x) => x.outcome === null)),
    );
    const paused = await submitted.pause();
    expect(paused.state).toBe('paused');
    // The running stage stops at its next chunk boundary (about a second), saved there:
    // then nothing runs and nothing starts.
    await waitFor('no open attempt', () =>
      fromStore(db, (st) => st.attempts().every((x) => x.outcome !== null)),
    );
    const cuts = fromStore(db, (st) => st.events().filter((e) => e.kind === 'cut'));
    expect(cuts.length).toBeGreaterThan(0);
    for (const c of cuts)
      expect(existsSync(join(store, 'checkpoints', `${c.key}.ckpt`))).toBe(true);
    const tasks = (): number =>
      fromStore(db, (st) => st.events().filter((e) => e.kind === 'task').length);
    const count = tasks();
    await new Promise((r) => setTimeout(r, 500));
    expect(tasks()).toBe(count);
    expect(fromStore(db, (st) => st.attempts().filter((x) => x.outcome === 'cancelled'))).toEqual(
      [],
    );
    // A pause holds across a restart of the server (even a SIGKILL): still paused, then resumed.
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    const second = await serve(store);
    const client = connect(second.address);
    clients.push(client);
    const handle = client.study('delta');
    expect((await handle.info()).state).toBe('paused');
    await new Promise((r) => setTimeout(r, 300));
    expect(tasks()).toBe(count);
    const resumed = await handle.resume();
    expect(resumed.state).toBe('running');
    const info = await handle.result();
    expect(info.state).toBe('finished');
    expect(studyMetrics(db, 'delta')).toEqual(await alone(parseStudy(s)));
    const log = fromStore(db, (st) => st.events());
    expect(log.filter((e) => e.kind === 'pause' || e.kind === 'resume').map((e) => e.kind)).toEqual(
      ['pause', 'resume'],
    );
    // No stage trained twice, and no step: the tree's steps, each trained once.
    const trained = trainedStages(log);
    expect(new Set(trained).size).toBe(trained.length);
    expect(stepsTrained(log)).toBe(2 * (60 + 2 * 60)); // per initial LR: [0, 60), then two branches
  });

  it('refuses to serve off loopback without a token, and calls without the token', async () => {
    const store = mkdtempSync(join(tmpdir(), 'stagetree-serve-'));
    const refused = spawn(
      process.execPath,
      [join(ROOT, 'bin', 'stagetree.js'), 'serve', '--listen', '0.0.0.0:0', '--store', store],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    refused.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => refused.on('exit', (c) => r(c)));
    expect(code).toBe(1);
    expect(err).toMatch(/^error STAGETREE_\w+: .*token/m);

    const tokenFile = join(store, 'token');
    writeFileSync(tokenFile, 's3cret-token-0123456789\n');
    const { address } = await serve(store, ['--token-file', tokenFile]);
    const anonymous = connect(address, { token: '' });
    clients.push(anonymous);
    await expect(anonymous.list()).rejects.toThrow(/token|unauthenticated/i);
    const wrong = connect(address, { token: 'wrong' });
    clients.push(wrong);
    await expect(wrong.list()).rejects.toThrow(/token|unauthenticated/i);
    const right = connect(address, { token: 's3cret-token-0123456789' });
    clients.push(right);
    expect(await right.list()).toEqual([]);
  });

  it.skipIf(!hasOpenssl)(
    'serves TLS with a self-signed certificate: the SDK and the CLI trusting it run a study; others cannot connect',
    async () => {
      const store = mkdtempSync(join(tmpdir(), 'stagetree-serve-'));
      const { cert, key } = selfSignedCertificate(store);
      const tokenFile = join(store, 'token');
      writeFileSync(tokenFile, 'tls-token-0123456789abcdef\n');
      const { address } = await serve(store, [
        '--token-file',
        tokenFile,
        '--tls-cert',
        cert,
        '--tls-key',
        key,
      ]);
      const token = 'tls-token-0123456789abcdef';
      const client = connect(address, { token, ca: readFileSync(cert) });
      clients.push(client);
      const s = study('epsilon', [10, 15]);
      const info = await (await client.submit(s)).result();
      expect(info.state).toBe('finished');
      expect(studyMetrics(join(store, 'engine.db'), 'epsilon')).toEqual(await alone(parseStudy(s)));
      // The CLI, given the CA and the token.
      const listed = spawnSync(
        process.execPath,
        [
          join(ROOT, 'bin', 'stagetree.js'),
          'list',
          '--json',
          '--server',
          address,
          '--tls-ca',
          cert,
          '--token-file',
          tokenFile,
        ],
        { encoding: 'utf8' },
      );
      expect(listed.status, listed.stderr).toBe(0);
      expect((JSON.parse(listed.stdout) as { id: string }[]).map((x) => x.id)).toEqual(['epsilon']);
      // A client that does not trust the certificate, or speaks plaintext, cannot connect.
      const untrusted = connect(address, { token, tls: true });
      clients.push(untrusted);
      await expect(untrusted.list()).rejects.toThrow(EngineUnavailableError);
    },
  );
});
