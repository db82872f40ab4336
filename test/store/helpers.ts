import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { LogEntry } from '../../src/engine/index.js';

/** Entries per batch the crash-test writer (`writer.ts`) appends. */
export const BATCH = 40;

/** A fresh folder under the OS temp dir, removed after the current test. */
export function useTempDirs(): () => string {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  return () => {
    const d = mkdtempSync(join(tmpdir(), 'stagetree-store-'));
    dirs.push(d);
    return d;
  };
}

/** A propose entry with a minimal spec (the store reads only `trial` and `spec.until`). */
export function propose(t: number, trial: string, until: number): LogEntry {
  return { t, kind: 'propose', trial, spec: { params: { seed: 0 }, schedules: {}, until } };
}

export function metric(t: number, trial: string, step: number, value: number): LogEntry {
  return { t, kind: 'metric', trial, step, value };
}

/**
 * A task entry training `runs` (`[stage, start, end]`), on worker `w0` unless given, with
 * its GPU share and, in a log of several studies, the studies that demanded it.
 */
export function task(
  t: number,
  id: number,
  runs: readonly (readonly [string, number, number])[],
  options: { share?: number; studies?: readonly string[]; worker?: string } = {},
): LogEntry {
  const last = runs[runs.length - 1]?.[0] ?? 'x';
  return {
    t,
    kind: 'task',
    task: {
      id,
      worker: options.worker ?? 'w0',
      gpu: 0,
      startProcess: false,
      saveFirst: null,
      restore: { from: 'init' },
      runs: runs.map(([stage, start, end]) => ({ stage, start, end, params: {}, schedules: {} })),
      saveAfter: `K${last}`,
      endKey: `K${last}`,
      share: options.share ?? 1,
    },
    ...(options.studies === undefined ? {} : { studies: options.studies }),
  };
}
