/**
 * Errors shared by every layer. Each error has a stable `code` that callers (the CLI,
 * the RPC boundary) can switch on; the message is written for the user and says what to
 * do. Only `src/rpc/` maps these to gRPC status codes.
 */
export const ErrorCode = {
  validation: 'STAGETREE_VALIDATION',
  notFound: 'STAGETREE_NOT_FOUND',
  conflict: 'STAGETREE_CONFLICT',
  unsupported: 'STAGETREE_UNSUPPORTED',
  /** A checkpoint file exists but its magic, length or SHA-256 checksum is wrong. */
  corruptCheckpoint: 'STAGETREE_CORRUPT_CHECKPOINT',
  /** Another live process owns the study store (one engine per store). */
  busy: 'STAGETREE_BUSY',
  /** A file or folder the user named cannot be used (not writable, not a folder, ...). */
  io: 'STAGETREE_IO',
  /** The machine, not the study, failed: the trainer cannot load, the disk is full. Resumable. */
  environment: 'STAGETREE_ENVIRONMENT',
  /** A stored study cannot be resumed as it is (its log does not replay, its trainer changed). */
  resume: 'STAGETREE_RESUME',
  /** A bug in stagetree itself. */
  internal: 'STAGETREE_INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class StagetreeError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Renders a received value for an error message: short, typed, never `[object Object]`. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (typeof value === 'number' || typeof value === 'boolean') return `${value} (${typeof value})`;
  if (typeof value === 'string') return `${JSON.stringify(value)} (string)`;
  if (Array.isArray(value)) {
    const json = JSON.stringify(value);
    return `${json.length > 60 ? json.slice(0, 57) + '...' : json} (array)`;
  }
  if (typeof value === 'object') {
    const json = JSON.stringify(value);
    return `${json.length > 60 ? json.slice(0, 57) + '...' : json} (object)`;
  }
  return typeof value;
}

/** Formats a field path such as `space.lr.milestones[1]`. */
export function formatPath(path: readonly (string | number)[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? part : `.${part}`;
  }
  return out === '' ? '(root)' : out;
}

/**
 * Bad input: names the field path, what was expected and what was received.
 * `message` reads e.g. "space.lr.period: expected a number > 0, got 0 (number)".
 */
export class ValidationError extends StagetreeError {
  readonly path: string;
  readonly expected: string;
  readonly received: string;

  constructor(path: readonly (string | number)[] | string, expected: string, received: unknown) {
    const p = typeof path === 'string' ? path : formatPath(path);
    const r = describeValue(received);
    super(ErrorCode.validation, `${p}: expected ${expected}, got ${r}`);
    this.path = p;
    this.expected = expected;
    this.received = r;
  }
}

/** A named thing (trial, stage, file) does not exist. */
export class NotFoundError extends StagetreeError {
  readonly what: string;
  readonly id: string;

  constructor(what: string, id: string, hint = '') {
    super(
      ErrorCode.notFound,
      `${what} ${JSON.stringify(id)} does not exist${hint ? `: ${hint}` : ''}`,
    );
    this.what = what;
    this.id = id;
  }
}

/** An operation that contradicts the current state (a trial id used twice, ...). */
export class ConflictError extends StagetreeError {
  constructor(message: string) {
    super(ErrorCode.conflict, message);
  }
}

/** Another live process owns the study store: one engine per store at a time. */
export class StoreBusyError extends StagetreeError {
  readonly pid: number;
  readonly since: number;

  constructor(study: string, pid: number, since: number) {
    super(
      ErrorCode.busy,
      `study ${study} is being run by pid ${pid} since ${new Date(since * 1000).toISOString()}`,
    );
    this.pid = pid;
    this.since = since;
  }
}

/** A path the user gave cannot be used; `path` names it, the message says why and what to do. */
export class IoError extends StagetreeError {
  readonly path: string;

  constructor(path: string, problem: string, options?: ErrorOptions) {
    super(ErrorCode.io, `${path}: ${problem}`, options);
    this.path = path;
  }
}

/**
 * The machine failed, not the study: the trainer cannot load, the checkpoint folder is
 * not writable, the disk is full. The study is left resumable: fix the cause, run again.
 */
export class EnvironmentError extends StagetreeError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.environment, message, options);
  }
}

/** A stored study cannot be resumed as it is; the message says what differs and how to go on. */
export class ResumeError extends StagetreeError {
  constructor(message: string) {
    super(ErrorCode.resume, message);
  }
}

/** A readable one-line description of anything thrown (never `[object Object]`). */
export function describeError(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === 'string') return e;
  try {
    // undefined for undefined, functions and symbols
    const json = JSON.stringify(e) as string | undefined;
    if (json !== undefined) return `${typeof e} thrown: ${json}`;
  } catch {
    // not serialisable: fall through
  }
  return `${typeof e} thrown: ${String(e)}`;
}
