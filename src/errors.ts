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
  /** A bug in stagetree itself (`InternalError`): a state its own code should never reach. */
  internal: 'STAGETREE_INTERNAL',
  /**
   * A ready stage fits on no GPU of the cluster (`ResourceFitError`): its GPU share is more
   * than a GPU holds, or there are no GPUs. Engine options that `parseStudy` would refuse.
   */
  resourceFit: 'STAGETREE_RESOURCE_FIT',
  /** A setup that would expose the engine or its token (no token off loopback, a token in clear). */
  insecure: 'STAGETREE_INSECURE',
  /** The engine service refused the call's credentials (`EngineAuthError`). */
  unauthenticated: 'STAGETREE_UNAUTHENTICATED',
  /** The engine service cannot be reached (`EngineUnavailableError`). */
  unavailable: 'STAGETREE_UNAVAILABLE',
  /** The engine service failed a call or answered something malformed. */
  remote: 'STAGETREE_REMOTE',
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

/**
 * An operation that contradicts the current state. The base of the conflicts below, which
 * all carry the code `STAGETREE_CONFLICT`; throw one of them (one class per condition),
 * and catch this to handle any conflict.
 */
export class ConflictError extends StagetreeError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.conflict, message, options);
  }
}

/** A trial id that the stage tree holds already: trial ids must be unique. */
export class TrialExistsError extends ConflictError {
  readonly trial: string;

  constructor(trial: string) {
    super(`trial ${JSON.stringify(trial)} already exists; trial ids must be unique`);
    this.trial = trial;
  }
}

/** An extension of a trial that was stopped: a stopped trial never trains again. */
export class TrialStoppedError extends ConflictError {
  readonly trial: string;

  constructor(trial: string) {
    super(`trial ${JSON.stringify(trial)} is stopped; fork a new trial from it instead`);
    this.trial = trial;
  }
}

/** Why a stage cannot be marked done: a root (always done), done already, or its parent is not. */
export type MarkDoneProblem = 'root' | 'done' | 'parentNotDone';

/** `markDone` of a stage that cannot be marked done now; `problem` says why. */
export class MarkDoneError extends ConflictError {
  readonly stage: string;
  readonly problem: MarkDoneProblem;
  /** The stage's parent (null for a root). */
  readonly parent: string | null;

  constructor(stage: string, problem: MarkDoneProblem, parent: string | null) {
    super(
      problem === 'root'
        ? `stage ${stage} is a root; roots are always done`
        : problem === 'done'
          ? `stage ${stage} is already done`
          : `stage ${stage} cannot be done before its parent ${String(parent)}`,
    );
    this.stage = stage;
    this.problem = problem;
    this.parent = parent;
  }
}

/** A study submitted to an executor that has stopped or is closed. */
export class ExecutorClosedError extends ConflictError {
  readonly study: string;

  constructor(study: string, why: string) {
    super(`cannot run study ${study}: ${why}`);
    this.study = study;
  }
}

/** A result for a task the engine does not run (it finished or was cancelled already). */
export class NotRunningError extends ConflictError {
  readonly task: number;

  constructor(task: number) {
    super(`task ${task} is not running (finished or cancelled already)`);
    this.task = task;
  }
}

/**
 * A study store holds another study than the one given (another name, or other settings).
 * `path` is the first field that differs (`name` for another name), `stored` and `given`
 * its two values as `describeValue` renders them; all three are null when no field could
 * be singled out.
 */
export class StudyMismatchError extends ConflictError {
  readonly file: string;
  /** The name of the study the store holds. */
  readonly storedName: string;
  readonly path: string | null;
  readonly stored: string | null;
  readonly given: string | null;

  constructor(
    file: string,
    storedName: string,
    difference: { readonly path: string; readonly stored: string; readonly given: string } | null,
  ) {
    const where = difference
      ? ` (first difference at ${difference.path}: stored ${difference.stored}, given ${difference.given})`
      : '';
    super(
      `${file} holds study ${JSON.stringify(storedName)} with different settings${where}; ` +
        `resume it with the same study file, or give a new store file to start a new study`,
    );
    this.file = file;
    this.storedName = storedName;
    this.path = difference?.path ?? null;
    this.stored = difference?.stored ?? null;
    this.given = difference?.given ?? null;
  }
}

/** A file that is not a stagetree study store: another SQLite database, or not SQLite at all. */
export class NotAStoreError extends ConflictError {
  readonly file: string;
  /** What was found instead, e.g. "an SQLite database with other tables". */
  readonly found: string;

  constructor(file: string, found: string, options?: ErrorOptions) {
    super(
      `${file} is not a stagetree study store (${found}); ` +
        `name a new file or one a stagetree run wrote`,
      options,
    );
    this.file = file;
    this.found = found;
  }
}

/**
 * A log entry appended to a study store contradicts the log it holds: it adds a trial the
 * log has (`problem` "duplicate"), or names one the log never proposed ("unknown").
 */
export class LogConflictError extends ConflictError {
  readonly file: string;
  /** Where in the appended batch, e.g. `entries[3].trial`. */
  readonly entry: string;
  readonly trial: string;
  readonly problem: 'duplicate' | 'unknown';

  constructor(file: string, entry: string, trial: string, problem: 'duplicate' | 'unknown') {
    super(
      problem === 'duplicate'
        ? `${file}: ${entry} adds trial ${JSON.stringify(trial)}, which the log already has`
        : `${file}: ${entry} names trial ${JSON.stringify(trial)}, which the log never proposed`,
    );
    this.file = file;
    this.entry = entry;
    this.trial = trial;
    this.problem = problem;
  }
}

/** An attempt whose end a study store recorded already. */
export class AttemptEndedError extends ConflictError {
  readonly file: string;
  readonly attempt: number;
  readonly task: number;
  /** How it ended. */
  readonly outcome: string;

  constructor(file: string, attempt: number, task: number, outcome: string) {
    super(`${file}: attempt ${attempt} (task ${task}) ended already (${outcome})`);
    this.file = file;
    this.attempt = attempt;
    this.task = task;
    this.outcome = outcome;
  }
}

/**
 * A ready stage fits on no GPU while nothing runs: it needs `share` of a GPU, a GPU holds
 * `capacity` (1), and the cluster has `gpus`. `parseStudy` refuses such shares; engine
 * options built by hand can still hold one.
 */
export class ResourceFitError extends StagetreeError {
  readonly stage: string;
  readonly share: number;
  readonly capacity: number;
  readonly gpus: number;

  constructor(stage: string, share: number, capacity: number, gpus: number) {
    super(
      ErrorCode.resourceFit,
      `stage ${stage} fits on no GPU: it needs a GPU share of ${share}, a GPU holds ${capacity} ` +
        `and the cluster has ${gpus}; check resources.gpus (each share in (0, 1]) and resources.cluster`,
    );
    this.stage = stage;
    this.share = share;
    this.capacity = capacity;
    this.gpus = gpus;
  }
}

/**
 * A state stagetree's own code should never reach (a stage created twice, a kept state
 * that lost its stage): a bug in stagetree, not a user mistake. The message says what was
 * found; the CLI asks for a report.
 */
export class InternalError extends StagetreeError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.internal, `internal: ${message}`, options);
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

// ------------------------------------------------------------------ the engine service

/**
 * `stagetree serve` asked to listen on an address other hosts can reach without a token:
 * anything but loopback (127.0.0.0/8, ::1, localhost) needs one.
 */
export class TokenRequiredError extends StagetreeError {
  readonly address: string;

  constructor(address: string) {
    super(
      ErrorCode.insecure,
      `refusing to serve on ${address} without a token: an address other than loopback ` +
        `(127.0.0.0/8, ::1, localhost) needs one; set a token, or listen on 127.0.0.1`,
    );
    this.address = address;
  }
}

/** A client asked to send its token in clear text to an engine on another host. */
export class PlaintextTokenError extends StagetreeError {
  readonly address: string;

  constructor(address: string) {
    super(
      ErrorCode.insecure,
      `refusing to send the token to ${address} without TLS: give the engine's CA ` +
        `certificate, or dial a loopback address`,
    );
    this.address = address;
  }
}

/** The engine at `address` refused the call's credentials (no token, or the wrong one). */
export class EngineAuthError extends StagetreeError {
  readonly address: string;

  constructor(address: string, detail: string) {
    super(
      ErrorCode.unauthenticated,
      `the engine at ${address} refused the call: ${detail}; give the token it was started with`,
    );
    this.address = address;
  }
}

/** The engine at `address` cannot be reached: not running, another address, TLS mismatch, no answer. */
export class EngineUnavailableError extends StagetreeError {
  readonly address: string;

  constructor(address: string, detail: string) {
    super(ErrorCode.unavailable, `cannot reach the engine at ${address}: ${detail}`);
    this.address = address;
  }
}

/**
 * The engine refused a request as malformed (INVALID_ARGUMENT). The message is the
 * engine's and names the field (`studyJson: expected ..., got ...`).
 */
export class InvalidRequestError extends StagetreeError {
  readonly address: string;

  constructor(address: string, message: string) {
    super(ErrorCode.validation, message);
    this.address = address;
  }
}

/** The engine refused an operation the study's state forbids (FAILED_PRECONDITION); its message. */
export class EngineConflictError extends ConflictError {
  readonly address: string;

  constructor(address: string, message: string) {
    super(message);
    this.address = address;
  }
}

/**
 * A call to the engine failed for another reason; `status` is the gRPC status name
 * (INTERNAL, RESOURCE_EXHAUSTED for a watcher that read too slowly, ...).
 */
export class EngineCallError extends StagetreeError {
  readonly address: string;
  readonly status: string;

  constructor(address: string, status: string, detail: string) {
    super(ErrorCode.remote, `the engine at ${address} failed the call (${status}): ${detail}`);
    this.address = address;
    this.status = status;
  }
}

/** The engine answered something malformed; `cause` is the ValidationError naming the field. */
export class MalformedAnswerError extends StagetreeError {
  readonly address: string;

  constructor(address: string, problem: ValidationError) {
    super(
      ErrorCode.remote,
      `the engine at ${address} sent a malformed answer: ${problem.message}`,
      {
        cause: problem,
      },
    );
    this.address = address;
  }
}
