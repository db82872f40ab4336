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
