import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, StoreBusyError } from '../../src/errors.js';
import { StudyStore } from '../../src/store/index.js';
import { useTempDirs } from './helpers.js';

const tempDir = useTempDirs();
const storeFile = () => join(tempDir(), 'study.db');
const SINCE = 1_700_000_000; // 2023-11-14T22:13:20.000Z
const STUDY = { name: 's', metric: { name: 'loss', mode: 'min' } };

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

function busy(fn: () => unknown): StoreBusyError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(StoreBusyError);
    return e as StoreBusyError;
  }
  throw new Error('expected a StoreBusyError');
}

/** A child process that acquires `file` and waits; resolves once it holds it. */
async function holder(file: string): Promise<ChildProcess & { pid: number }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', fileURLToPath(new URL('./owner-child.ts', import.meta.url)), file, '50'],
    { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(child);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('acquired')) resolve();
    });
    child.on('exit', (code) => {
      reject(new Error(`holder exited with ${code}: ${stderr}`));
    });
  });
  return child as ChildProcess & { pid: number };
}

/** Kills a child with SIGKILL and waits until it is reaped (no zombie left). */
async function killHard(child: ChildProcess): Promise<void> {
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

/** A pid that no process has now: one of a process that ran and was reaped. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await new Promise((resolve) => child.once('exit', resolve));
  if (child.pid === undefined) throw new Error('no pid');
  return child.pid;
}

/** Writes an owner row as another process would have. */
function writeOwner(file: string, row: { pid: number; start: string | null; host: string }): void {
  const db = new Database(file);
  db.prepare(
    `INSERT OR REPLACE INTO owner (id, pid, start, host, since, token)
     VALUES (1, @pid, @start, @host, 10, 'another')`,
  ).run(row);
  db.close();
}

describe('StudyStore: one engine per store', () => {
  it('a second store object on the file is refused until the first releases', () => {
    const file = storeFile();
    const a = StudyStore.open(file);
    a.initStudy('cifar', STUDY, 0);
    const b = StudyStore.open(file);
    expect(a.owner()).toBeNull();
    a.acquire(SINCE);
    a.acquire(SINCE + 5); // again: harmless
    expect(a.owner()).toEqual({ pid: process.pid, host: hostname(), since: SINCE });

    const e = busy(() => b.acquire(SINCE + 10));
    expect(e.code).toBe(ErrorCode.busy);
    expect(e.message).toBe(
      `study cifar is being run by pid ${process.pid} since 2023-11-14T22:13:20.000Z`,
    );
    expect(e.pid).toBe(process.pid);
    expect(e.since).toBe(SINCE);
    expect(b.status().owner).toEqual({ pid: process.pid, since: SINCE });

    b.release(); // not its lock: changes nothing
    expect(() => b.acquire(SINCE + 10)).toThrow(StoreBusyError);
    a.release();
    expect(a.owner()).toBeNull();
    expect(b.status().owner).toBeNull();
    b.acquire(SINCE + 20);
    expect(b.owner()?.since).toBe(SINCE + 20);
    expect(() => a.acquire(SINCE + 30)).toThrow(StoreBusyError);
    b.close(); // releases
    a.acquire(SINCE + 40);
    a.close();
    const c = StudyStore.open(file);
    expect(c.owner()).toBeNull();
    c.close();
  });

  it('before initStudy the error names the file', () => {
    const file = storeFile();
    const a = StudyStore.open(file);
    const b = StudyStore.open(file);
    a.acquire(SINCE);
    expect(busy(() => b.acquire(SINCE)).message).toBe(
      `study ${file} is being run by pid ${process.pid} since 2023-11-14T22:13:20.000Z`,
    );
    a.close();
    b.close();
  });

  it('a live process holding it makes acquire throw with its pid; once it is killed, the lock is taken over', async () => {
    const file = storeFile();
    const store = StudyStore.open(file);
    store.initStudy('cifar', STUDY, 0);
    const child = await holder(file);

    const e = busy(() => store.acquire(SINCE));
    expect(e.pid).toBe(child.pid);
    expect(e.message).toBe(
      `study cifar is being run by pid ${child.pid} since 1970-01-01T00:00:50.000Z`,
    );
    expect(store.owner()).toEqual({ pid: child.pid, host: hostname(), since: 50 });

    await killHard(child); // no clean close: the row stays, its process is gone
    expect(store.owner()).toBeNull();
    expect(store.status().owner).toBeNull();
    store.acquire(SINCE);
    expect(store.owner()).toEqual({ pid: process.pid, host: hostname(), since: SINCE });
    store.close();
  });

  it('takes over a lock of a dead pid, of a reused pid, and of another host', async () => {
    const file = storeFile();
    StudyStore.open(file).close();
    const take = () => {
      const s = StudyStore.open(file);
      s.acquire(SINCE);
      expect(s.owner()?.pid).toBe(process.pid);
      s.close();
    };
    writeOwner(file, { pid: await deadPid(), start: null, host: hostname() });
    take();
    // This process's pid, but another start time: a new process under an old pid.
    writeOwner(file, { pid: process.pid, start: '1', host: hostname() });
    take();
    writeOwner(file, { pid: process.pid, start: null, host: `not-${hostname()}` });
    take();
    // Never signals pid 0 or a negative pid (process groups).
    writeOwner(file, { pid: 0, start: null, host: hostname() });
    take();
    writeOwner(file, { pid: -1, start: null, host: hostname() });
    take();
    // This process, start time unknown (no /proc when it was written): alive.
    writeOwner(file, { pid: process.pid, start: null, host: hostname() });
    const s = StudyStore.open(file);
    expect(() => s.acquire(SINCE)).toThrow(StoreBusyError);
    s.close();
  });
});
