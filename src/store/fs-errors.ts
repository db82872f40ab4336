import { IoError, StagetreeError } from '../errors.js';

/**
 * File-system errors as the stores report them: an `IoError` naming the path, what could
 * not be done, the errno code and what to do about it; never a raw `EACCES` stack.
 */

/** What each errno code means for the user, and what to do. */
const PROBLEMS: Readonly<Record<string, string>> = {
  EACCES: 'permission denied; make the folder writable',
  EPERM: 'operation not permitted; make the folder writable',
  EROFS: 'read-only file system; use a folder on a writable file system',
  ENOSPC: 'no space left on the device; free some space',
  EDQUOT: 'disk quota exceeded; free some space',
  ENOTDIR: 'a file is in the way: a part of the path is a file, not a folder',
  EEXIST: 'a file is in the way where a folder should be',
  EISDIR: 'a folder is in the way where a file should be',
  ENAMETOOLONG: 'a name in the path is too long (at most 255 bytes)',
  ELOOP: 'too many symbolic links in the path',
  EMFILE: 'too many open files; raise the limit (ulimit -n)',
  ENFILE: 'too many open files on the system',
  EIO: 'input/output error: the device failed',
};

/** The errno code of a Node file-system error (`EACCES`, ...), or null for anything else. */
export function errnoOf(e: unknown): string | null {
  if (!(e instanceof Error)) return null;
  const code = (e as NodeJS.ErrnoException).code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : null;
}

/** Whether `e` is a file-system error with this errno code. */
export function isErrno(e: unknown, code: string): boolean {
  return errnoOf(e) === code;
}

/** "EACCES: permission denied; make the folder writable" for an errno error. */
export function fsProblem(e: unknown): string {
  const code = errnoOf(e);
  const text = code === null ? undefined : PROBLEMS[code];
  if (code !== null && text !== undefined) return `${code}: ${text}`;
  const message = e instanceof Error ? e.message : String(e);
  return code === null ? message : `${code}: ${message}`;
}

/**
 * `e` as an `IoError` on `path` ("<path>: <action>: <code>: <problem>") when it is a
 * file-system error; anything else (a stagetree error, a bug) is returned as it is.
 */
export function toIoError(e: unknown, path: string, action: string): unknown {
  if (e instanceof StagetreeError || errnoOf(e) === null) return e;
  return new IoError(path, `${action}: ${fsProblem(e)}`, { cause: e });
}
