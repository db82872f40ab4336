import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';

/**
 * Who owns a study store: a process, named so that another process can tell whether it
 * still runs. A pid alone is not enough (pids are reused), so on Linux the process's start
 * time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot) goes with it: a live
 * process with the owner's pid but another start time is not the owner.
 */

/** A process as the `owner` table records it. */
export interface ProcessIdentity {
  readonly pid: number;
  /** Its start time from `/proc/<pid>/stat`, or null where that cannot be read. */
  readonly start: string | null;
  readonly host: string;
}

/** This process. */
export function currentProcess(): ProcessIdentity {
  return { pid: process.pid, start: procStat(process.pid)?.start ?? null, host: hostname() };
}

/**
 * Whether the recorded process still runs: on this host (another host's process cannot
 * be checked, so its lock counts as stale), its pid answers signal 0 (EPERM: it exists
 * but is another user's), it is not a zombie, and, when both are known, its start time is
 * the recorded one. Where `/proc` cannot be read, the pid's liveness alone decides.
 */
export function isRunning(p: ProcessIdentity): boolean {
  if (p.host !== hostname()) return false;
  // 0 and negative pids name process groups: never signal those.
  if (!Number.isSafeInteger(p.pid) || p.pid <= 0) return false;
  if (!pidAnswers(p.pid)) return false;
  const stat = procStat(p.pid);
  if (stat === null) return true;
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return p.start === null || stat.start === p.start;
}

function pidAnswers(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The state (field 3) and start time (field 22) of a process from `/proc/<pid>/stat`, or
 * null where that cannot be read (no `/proc`, the process is gone). The second field, the
 * command name, is in parentheses and may itself hold spaces and parentheses: fields are
 * counted from the last `)`.
 */
export function procStat(pid: number): { state: string; start: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const state = fields[0];
  const start = fields[22 - 3];
  if (state === undefined || start === undefined || !/^\d+$/.test(start)) return null;
  return { state, start };
}
