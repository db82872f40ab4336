import { credentials, Metadata, status } from '@grpc/grpc-js';
import type {
  CallOptions,
  ClientReadableStream,
  ClientUnaryCall,
  ServiceError,
} from '@grpc/grpc-js';
import {
  EngineAuthError,
  EngineCallError,
  EngineConflictError,
  EngineUnavailableError,
  InvalidRequestError,
  MalformedAnswerError,
  NotFoundError,
  PlaintextTokenError,
  ValidationError,
} from '../errors.js';
import { MAX_ERROR_MESSAGE_CHARS, MAX_MESSAGE_BYTES, truncateText } from '../engine/protocol.js';
import { EngineServiceClient } from '../gen/stagetree/v1/engine.js';
import type { Study as WireStudy, WatchResponse } from '../gen/stagetree/v1/engine.js';
import type { StudyEvent, StudyInfo, SubmitRequest } from './engine-api.js';
import {
  checkId,
  checkSubmit,
  eventFromWire,
  isLoopback,
  parseAddress,
  studyFromWire,
  submitToWire,
} from './engine-wire.js';

export interface EngineClientOptions {
  /** Sent with every call as `authorization: Bearer <token>`. */
  readonly token?: string | null;
  /**
   * Speak TLS; `ca` is the PEM certificate (chain) to trust, absent: the system's roots.
   * A token goes to a non-loopback address only over TLS.
   */
  readonly tls?: { readonly ca?: Buffer } | null;
  /** Seconds a call (all but watch) may take before it fails as unavailable. Default 30. */
  readonly deadlineSeconds?: number;
}

/** The engine service, as a client sees it: the calls of `EngineApi`, over gRPC. */
export interface EngineClient {
  /** The `host:port` it dials. */
  readonly address: string;
  submit(request: SubmitRequest): Promise<StudyInfo>;
  get(id: string): Promise<StudyInfo>;
  list(): Promise<StudyInfo[]>;
  cancel(id: string): Promise<StudyInfo>;
  pause(id: string): Promise<StudyInfo>;
  resume(id: string): Promise<StudyInfo>;
  /**
   * Every event of the study from the moment the server subscribes. The stream starts on
   * the first `next()`; leaving the loop (break, return, throw) cancels it and the server
   * unsubscribes. It fails like the calls (`EngineUnavailableError` when the engine shuts
   * down, `EngineCallError` RESOURCE_EXHAUSTED when this reader fell too far behind) and
   * ends quietly after `close()`.
   */
  watch(id: string): AsyncIterable<StudyEvent>;
  /** Cancels open watches and closes the connection; later calls fail. */
  close(): void;
}

const TOKEN_RE = /^[\x21-\x7e]+$/;

const STATUS_NAME: ReadonlyMap<number, string> = new Map(
  Object.entries(status).flatMap(([k, v]) => (typeof v === 'number' ? [[v, k] as const] : [])),
);

interface Failure {
  readonly address: string;
  readonly details: string;
  readonly id: string | null;
  readonly deadlineSeconds: number;
}

/** The typed errors of the statuses that have one; any other is an `EngineCallError`. */
const TYPED: ReadonlyMap<status, (f: Failure) => Error> = new Map<status, (f: Failure) => Error>([
  [
    status.NOT_FOUND,
    (f) => {
      // `what` and `id` name what the client asked for; the message is the server's.
      const error = new NotFoundError('study', f.id ?? '');
      error.message = f.details;
      return error;
    },
  ],
  [status.INVALID_ARGUMENT, (f) => new InvalidRequestError(f.address, f.details)],
  [
    status.FAILED_PRECONDITION,
    // A conflict with a study's state, or (led by its code) a failure of the engine's
    // machine or store the caller can act on: the trainer does not load, too many GPUs.
    (f) =>
      /^STAGETREE_[A-Z_]+: /.test(f.details)
        ? new EngineCallError(f.address, 'FAILED_PRECONDITION', f.details)
        : new EngineConflictError(f.address, f.details),
  ],
  [status.UNAUTHENTICATED, (f) => new EngineAuthError(f.address, f.details)],
  [status.UNAVAILABLE, (f) => new EngineUnavailableError(f.address, f.details)],
  [
    status.DEADLINE_EXCEEDED,
    (f) => new EngineUnavailableError(f.address, `no answer within ${f.deadlineSeconds} s`),
  ],
]);

function isServiceError(e: unknown): e is ServiceError {
  return (
    e instanceof Error &&
    typeof (e as Partial<ServiceError>).code === 'number' &&
    typeof (e as Partial<ServiceError>).details === 'string'
  );
}

/**
 * A client of the engine service at `address` (`host:port`). Checks its options and every
 * request before sending (`ValidationError`), refuses to send a token in clear text to a
 * non-loopback address (`PlaintextTokenError`), and checks every answer (a malformed one is
 * a `MalformedAnswerError`, never a crash). gRPC failures become typed errors with the
 * server's message: NOT_FOUND `NotFoundError`, INVALID_ARGUMENT `InvalidRequestError`,
 * FAILED_PRECONDITION `EngineConflictError`, UNAUTHENTICATED `EngineAuthError`,
 * UNAVAILABLE and DEADLINE_EXCEEDED `EngineUnavailableError`, anything else
 * `EngineCallError`. Connects lazily: an engine that is not there fails the first call.
 */
export function connectEngine(address: string, options: EngineClientOptions = {}): EngineClient {
  const { host } = parseAddress(address, 'address', 1);
  const token = options.token ?? null;
  const tls = options.tls ?? null;
  if (token !== null) {
    if (typeof token !== 'string' || !TOKEN_RE.test(token))
      throw new ValidationError(
        'token',
        'visible ASCII characters, or none',
        typeof token === 'string' ? `a token of ${token.length} characters` : token,
      );
    if (tls === null && !isLoopback(host)) throw new PlaintextTokenError(address);
  }
  const deadlineSeconds = options.deadlineSeconds ?? 30;
  if (!(Number.isFinite(deadlineSeconds) && deadlineSeconds > 0))
    throw new ValidationError('deadlineSeconds', 'a finite number > 0', deadlineSeconds);

  const client = new EngineServiceClient(
    address,
    tls === null ? credentials.createInsecure() : credentials.createSsl(tls.ca ?? null),
    {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    },
  );
  const watches = new Set<{ cancel(): void }>();
  let closed = false;
  const isClosed = (): boolean => closed;

  const metadata = (): Metadata => {
    const m = new Metadata();
    if (token !== null) m.set('authorization', `Bearer ${token}`);
    return m;
  };

  /** The typed error for a failed call; `id`: the study it named, if any. */
  const failure = (e: unknown, id: string | null): Error => {
    if (!isServiceError(e)) return e instanceof Error ? e : new Error(String(e));
    const details = truncateText(e.details, MAX_ERROR_MESSAGE_CHARS);
    const make = TYPED.get(e.code);
    return make
      ? make({ address, details, id, deadlineSeconds })
      : new EngineCallError(address, STATUS_NAME.get(e.code) ?? String(e.code), details);
  };

  /** Runs `convert` on an answer; a ValidationError there is the server's fault. */
  const checked = <T>(convert: () => T): T => {
    try {
      return convert();
    } catch (e) {
      if (e instanceof ValidationError) throw new MalformedAnswerError(address, e);
      throw e;
    }
  };

  function unary<Req, Res>(
    invoke: (
      request: Req,
      metadata: Metadata,
      options: Partial<CallOptions>,
      callback: (error: ServiceError | null, response: Res) => void,
    ) => ClientUnaryCall,
    request: Req,
    id: string | null,
  ): Promise<Res> {
    if (closed) return Promise.reject(new EngineUnavailableError(address, 'the client is closed'));
    return new Promise<Res>((resolve, reject) => {
      try {
        invoke(
          request,
          metadata(),
          { deadline: Date.now() + deadlineSeconds * 1000 },
          (error, response) => {
            if (error) reject(failure(error, id));
            else resolve(response);
          },
        );
      } catch (e) {
        reject(failure(e, id));
      }
    });
  }

  const one = (wire: WireStudy | undefined, id: string | null): StudyInfo =>
    checked(() => {
      const study = studyFromWire(wire, ['study']);
      if (id !== null && study.id !== id)
        throw new ValidationError(['study', 'id'], JSON.stringify(id), study.id);
      return study;
    });

  const byId =
    (
      invoke: (
        request: { id: string },
        metadata: Metadata,
        options: Partial<CallOptions>,
        callback: (error: ServiceError | null, response: { study: WireStudy | undefined }) => void,
      ) => ClientUnaryCall,
    ) =>
    async (id: string): Promise<StudyInfo> => {
      const checkedId = checkId(id, ['id']);
      const response = await unary(invoke, { id: checkedId }, checkedId);
      return one(response.study, checkedId);
    };

  return {
    address,
    async submit(request) {
      const wire = submitToWire(checkSubmit(request));
      const response = await unary(client.submit.bind(client), wire, null);
      return one(response.study, null);
    },
    get: byId(client.get.bind(client)),
    async list() {
      const response = await unary(client.list.bind(client), {}, null);
      return checked(() => response.studies.map((s, i) => studyFromWire(s, ['studies', i])));
    },
    cancel: byId(client.cancel.bind(client)),
    pause: byId(client.pause.bind(client)),
    resume: byId(client.resume.bind(client)),
    watch(id) {
      const checkedId = checkId(id, ['id']);
      return {
        [Symbol.asyncIterator]: () =>
          watchEvents({
            open: () => {
              if (closed) throw new EngineUnavailableError(address, 'the client is closed');
              const stream = client.watch({ id: checkedId }, metadata());
              watches.add(stream);
              return stream;
            },
            release: (stream) => watches.delete(stream),
            convert: (wire) =>
              checked(() => {
                const event = eventFromWire(wire.event, ['event']);
                if (event.study !== checkedId)
                  throw new ValidationError(
                    ['event', 'study'],
                    JSON.stringify(checkedId),
                    event.study,
                  );
                return event;
              }),
            failure: (e) =>
              isClosed() && isServiceError(e) && e.code === status.CANCELLED
                ? null
                : failure(e, checkedId),
          }),
      };
    },
    close() {
      if (closed) return;
      closed = true;
      for (const w of [...watches]) w.cancel();
      client.close();
    },
  };
}

/** Events read ahead of the consumer before the stream is paused (HTTP/2 flow control does the rest). */
const READ_AHEAD = 16;

/**
 * An iterator over a watch stream. Unlike an async generator, `return()` ends it at once
 * even while a `next()` waits (that `next()` then resolves done), and cancels the call so
 * the server unsubscribes. Reads at most `READ_AHEAD` events ahead of the consumer, so a
 * slow consumer slows the stream instead of filling memory.
 */
function watchEvents(source: {
  open(): ClientReadableStream<WatchResponse>;
  /** The stream is over (the client stops tracking it). */
  release(stream: ClientReadableStream<WatchResponse>): void;
  convert(wire: WatchResponse): StudyEvent;
  /** The error a stream failure becomes; null: end quietly. */
  failure(e: unknown): Error | null;
}): AsyncIterator<StudyEvent, undefined> {
  let stream: ClientReadableStream<WatchResponse> | null = null;
  const buffer: StudyEvent[] = [];
  let waiting: {
    resolve(r: IteratorResult<StudyEvent, undefined>): void;
    reject(e: Error): void;
  } | null = null;
  /** Set once the stream is over: null, ended cleanly; an Error, failed. */
  let outcome: { error: Error | null } | null = null;
  const done: IteratorResult<StudyEvent, undefined> = { done: true, value: undefined };

  const finish = (error: Error | null): void => {
    if (outcome !== null) return;
    outcome = { error };
    if (stream !== null) {
      stream.cancel();
      source.release(stream);
    }
    const w = waiting;
    waiting = null;
    if (w === null) return;
    if (error === null) w.resolve(done);
    else {
      outcome = { error: null };
      w.reject(error);
    }
  };

  const start = (): ClientReadableStream<WatchResponse> => {
    const s = source.open();
    s.on('data', (wire: WatchResponse) => {
      if (outcome !== null) return;
      let event: StudyEvent;
      try {
        event = source.convert(wire);
      } catch (e) {
        finish(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      const w = waiting;
      if (w !== null) {
        waiting = null;
        w.resolve({ done: false, value: event });
        return;
      }
      buffer.push(event);
      if (buffer.length >= READ_AHEAD) s.pause();
    });
    // Every failure, a late one after a cancel included, lands here (never unhandled).
    s.on('error', (e: unknown) => {
      finish(outcome === null ? source.failure(e) : null);
    });
    s.on('end', () => {
      finish(null);
    });
    return s;
  };

  return {
    next() {
      const event = buffer.shift();
      if (event !== undefined) {
        if (buffer.length < READ_AHEAD && stream?.isPaused() === true && outcome === null)
          stream.resume();
        return Promise.resolve({ done: false, value: event });
      }
      if (outcome !== null) {
        const error = outcome.error;
        // A failure is thrown once; later calls are done.
        outcome = { error: null };
        return error === null ? Promise.resolve(done) : Promise.reject(error);
      }
      if (waiting !== null) return Promise.reject(new Error('next() called while another waits'));
      return new Promise((resolve, reject) => {
        waiting = { resolve, reject };
        if (stream === null) {
          try {
            stream = start();
          } catch (e) {
            finish(e instanceof Error ? e : new Error(String(e)));
          }
        }
      });
    },
    return() {
      buffer.length = 0;
      finish(null);
      outcome = { error: null };
      return Promise.resolve(done);
    },
  };
}
