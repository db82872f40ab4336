import { createHash, timingSafeEqual } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { Server, ServerCredentials, ServerInterceptingCall, status } from '@grpc/grpc-js';
import type {
  handleUnaryCall,
  Metadata,
  ServerInterceptor,
  ServerWritableStream,
  StatusObject,
} from '@grpc/grpc-js';
import {
  describeError,
  ErrorCode,
  IoError,
  StagetreeError,
  TokenRequiredError,
  ValidationError,
} from '../errors.js';
import { MAX_ERROR_MESSAGE_CHARS, MAX_MESSAGE_BYTES, truncateText } from '../engine/protocol.js';
import { EngineServiceService } from '../gen/stagetree/v1/engine.js';
import type {
  EngineServiceServer,
  Study as WireStudy,
  WatchRequest,
  WatchResponse,
} from '../gen/stagetree/v1/engine.js';
import type { EngineApi, StudyEvent, StudyInfo } from './engine-api.js';
import {
  checkedAnswer,
  checkId,
  eventFromWire,
  eventToWire,
  formatAddress,
  isLoopback,
  parseAddress,
  studyFromWire,
  studyToWire,
  submitFromWire,
} from './engine-wire.js';

export interface EngineServerOptions {
  /** `host:port` to listen on (port 0: any free port); only loopback without a token. */
  readonly address: string;
  readonly api: EngineApi;
  /**
   * The token every call must carry as `authorization: Bearer <token>`: at least 16
   * visible ASCII characters. Null: no token, allowed on loopback only.
   */
  readonly token: string | null;
  /** PEM certificate chain and private key: the server speaks TLS. Null: plain text. */
  readonly tls: { readonly cert: Buffer; readonly key: Buffer } | null;
  /**
   * Events a watcher may fall behind by (beyond grpc-js's own small buffer) before its
   * stream is ended with RESOURCE_EXHAUSTED. Default 4096.
   */
  readonly maxWatchBacklog?: number;
  /** Watch streams open at once; one more is refused with RESOURCE_EXHAUSTED. Default 1024. */
  readonly maxWatchers?: number;
  /**
   * Hears what a call failed with where the client is only told "internal error" (an
   * executor bug, an invalid answer). Default: one line on stderr.
   */
  readonly onError?: (method: string, error: unknown) => void;
}

export interface EngineServer {
  /** The bound `host:port` (the real port when 0 was asked for). */
  readonly address: string;
  readonly port: number;
  /** Watch streams open now. */
  readonly watchers: number;
  /** Ends every watch stream (UNAVAILABLE), lets running calls finish, stops listening. */
  close(): Promise<void>;
}

/** The shortest token the server accepts. */
export const MIN_TOKEN_CHARS = 16;
const TOKEN_RE = /^[\x21-\x7e]+$/;

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

function checkOptions(o: EngineServerOptions): { host: string; port: number } {
  const { host, port } = parseAddress(o.address, 'address', 0);
  if (o.token !== null) {
    if (typeof o.token !== 'string' || o.token.length < MIN_TOKEN_CHARS || !TOKEN_RE.test(o.token))
      throw new ValidationError(
        'token',
        `at least ${MIN_TOKEN_CHARS} visible ASCII characters, or null`,
        typeof o.token === 'string' ? `a token of ${o.token.length} characters` : o.token,
      );
  } else if (!isLoopback(host)) {
    throw new TokenRequiredError(o.address);
  }
  if (o.tls !== null) {
    try {
      createSecureContext({ cert: o.tls.cert, key: o.tls.key });
    } catch (e) {
      throw new ValidationError(
        'tls',
        'a PEM certificate chain and its private key',
        describeError(e),
      );
    }
  }
  for (const [name, v] of [
    ['maxWatchBacklog', o.maxWatchBacklog],
    ['maxWatchers', o.maxWatchers],
  ] as const) {
    if (v !== undefined && !(Number.isSafeInteger(v) && v >= 1))
      throw new ValidationError(name, 'an integer >= 1', v);
  }
  return { host, port };
}

/**
 * Refuses, before the handler runs, every call whose metadata lacks
 * `authorization: Bearer <token>`; tokens are compared in constant time (as SHA-256
 * digests, so their lengths do not leak either).
 */
function authInterceptor(token: string): ServerInterceptor {
  const expected = digest(token);
  const refusal = (metadata: Metadata): string | null => {
    const values = metadata.get('authorization');
    const [value] = values;
    if (values.length !== 1 || typeof value !== 'string' || !value.startsWith('Bearer '))
      return 'this engine needs a token: send the metadata "authorization: Bearer <token>"';
    return timingSafeEqual(digest(value.slice('Bearer '.length)), expected)
      ? null
      : 'the token is wrong';
  };
  return (_method, call) =>
    new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, pass) => {
            const why = refusal(metadata);
            if (why === null) pass(metadata);
            else call.sendStatus({ code: status.UNAUTHENTICATED, details: why });
          },
        });
      },
    });
}

/**
 * Failures of the engine's machine or of the stored state that the submitter can act on
 * (the trainer does not load, a folder is unusable, more GPUs than the engine has, a
 * stored study that does not replay): FAILED_PRECONDITION, the details led by the code
 * (`STAGETREE_ENVIRONMENT: the node trainer ... cannot be loaded: ...`).
 */
const PRECONDITION_CODES: ReadonlySet<string> = new Set([
  ErrorCode.environment,
  ErrorCode.io,
  ErrorCode.resourceFit,
  ErrorCode.resume,
  ErrorCode.unsupported,
]);

/**
 * The status a failure becomes: bad input INVALID_ARGUMENT, an unknown study NOT_FOUND, a
 * conflict with the study's state FAILED_PRECONDITION, each with its message; a failure
 * the submitter can act on (`PRECONDITION_CODES`) FAILED_PRECONDITION led by its code;
 * anything else INTERNAL with a generic message (the error itself goes to `onError`).
 */
function statusOf(
  method: string,
  e: unknown,
  onError: (method: string, error: unknown) => void,
): Pick<StatusObject, 'code' | 'details'> {
  if (e instanceof StagetreeError) {
    const code =
      e.code === ErrorCode.validation
        ? status.INVALID_ARGUMENT
        : e.code === ErrorCode.notFound
          ? status.NOT_FOUND
          : e.code === ErrorCode.conflict
            ? status.FAILED_PRECONDITION
            : null;
    if (code !== null) return { code, details: truncateText(e.message, MAX_ERROR_MESSAGE_CHARS) };
    if (PRECONDITION_CODES.has(e.code))
      return {
        code: status.FAILED_PRECONDITION,
        details: truncateText(`${e.code}: ${e.message}`, MAX_ERROR_MESSAGE_CHARS),
      };
  }
  try {
    onError(method, e);
  } catch {
    // a logger's failure must not change the answer
  }
  return {
    code: status.INTERNAL,
    details: `internal error in ${method}; the engine's log has the details`,
  };
}

const defaultOnError = (method: string, error: unknown): void => {
  process.stderr.write(`stagetree engine: ${method} failed: ${describeError(error)}\n`);
};

interface Watch {
  end(code: status, details: string): void;
}

/**
 * Serves `api` as the gRPC `EngineService` (proto/stagetree/v1/engine.proto).
 *
 * Security: refuses (`TokenRequiredError`) to listen on anything but loopback without a
 * token; with one, every call must carry `authorization: Bearer <token>` or is refused with
 * UNAUTHENTICATED before anything runs. With `tls` it speaks TLS only.
 *
 * Every request field is checked before the executor sees it (INVALID_ARGUMENT naming
 * the field), every answer before the client does (an invalid one is INTERNAL). Errors of
 * `api` map to status codes by their `code` (see `statusOf`); nothing an executor or a
 * client does throws out of a handler. A watch stream unsubscribes when it ends for any
 * reason; a watcher that falls `maxWatchBacklog` events behind is cut off with
 * RESOURCE_EXHAUSTED, so a slow client holds bounded memory. Messages are limited to
 * `MAX_MESSAGE_BYTES` both ways.
 */
export async function startEngineServer(options: EngineServerOptions): Promise<EngineServer> {
  const { host, port } = checkOptions(options);
  const { api } = options;
  const onError = options.onError ?? defaultOnError;
  const maxBacklog = options.maxWatchBacklog ?? 4096;
  const maxWatchers = options.maxWatchers ?? 1024;
  const server = new Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    // Ping idle clients, so a watcher whose machine vanished is noticed and unsubscribed.
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 20_000,
    ...(options.token === null ? {} : { interceptors: [authInterceptor(options.token)] }),
  });
  const watches = new Set<Watch>();
  let closing = false;

  const answer = (info: StudyInfo): WireStudy =>
    checkedAnswer(info, studyToWire, (w) => studyFromWire(w, ['study']), 'study');

  function unary<Req, Res>(
    method: string,
    run: (request: Req) => Res | Promise<Res>,
  ): handleUnaryCall<Req, Res> {
    return (call, callback) => {
      void (async () => {
        let response: Res;
        try {
          response = await run(call.request);
        } catch (e) {
          callback(statusOf(method, e, onError));
          return;
        }
        callback(null, response);
      })();
    };
  }

  const watch = (call: ServerWritableStream<WatchRequest, WatchResponse>): void => {
    const backlog: WatchResponse[] = [];
    let writable = true;
    let done = false;
    let unsubscribe: (() => void) | null = null;
    const ended = (): boolean => done;
    const stop = (): void => {
      if (done) return;
      done = true;
      watches.delete(entry);
      backlog.length = 0;
      const u = unsubscribe;
      unsubscribe = null;
      try {
        u?.();
      } catch (e) {
        try {
          onError('Watch', e);
        } catch {
          // nothing more to do
        }
      }
    };
    const entry: Watch = {
      end(code, details) {
        if (done) return;
        stop();
        try {
          call.emit('error', { code, details, message: details });
        } catch {
          // the stream is gone already
        }
      },
    };
    const write = (message: WatchResponse): boolean => {
      try {
        return call.write(message);
      } catch {
        // a stream torn down under us: its close event says so
        return false;
      }
    };
    const listener = (event: StudyEvent): void => {
      if (done) return;
      try {
        const wire = {
          event: checkedAnswer(event, eventToWire, (w) => eventFromWire(w, ['event']), 'event'),
        };
        if (!writable || backlog.length > 0) {
          if (backlog.length >= maxBacklog) {
            entry.end(
              status.RESOURCE_EXHAUSTED,
              `the watcher read too slowly: ${maxBacklog} events were waiting for it`,
            );
            return;
          }
          backlog.push(wire);
          return;
        }
        writable = write(wire);
      } catch (e) {
        entry.end(
          statusOf('Watch', e, onError).code,
          "internal error in Watch; the engine's log has the details",
        );
      }
    };
    call.on('drain', () => {
      writable = true;
      while (!done && writable) {
        const next = backlog.shift();
        if (next === undefined) break;
        writable = write(next);
      }
    });
    call.on('cancelled', stop);
    call.on('error', stop);
    call.on('finish', stop);
    call.on('close', stop);
    if (closing) {
      entry.end(status.UNAVAILABLE, 'the engine is shutting down');
      return;
    }
    if (watches.size >= maxWatchers) {
      entry.end(status.RESOURCE_EXHAUSTED, `this engine serves at most ${maxWatchers} watchers`);
      return;
    }
    watches.add(entry);
    try {
      const id = checkId(call.request.id, ['id']);
      const u = api.watch(id, listener);
      // The listener may have ended the stream during the subscription (an overflow).
      if (ended()) u();
      else unsubscribe = u;
    } catch (e) {
      const s = statusOf('Watch', e, onError);
      entry.end(s.code, s.details);
    }
  };

  const implementation: EngineServiceServer = {
    submit: unary('Submit', async (r) => ({
      study: answer(await api.submit(submitFromWire(r))),
    })),
    get: unary('Get', (r) => ({ study: answer(api.get(checkId(r.id, ['id']))) })),
    list: unary('List', () => ({ studies: api.list().map(answer) })),
    cancel: unary('Cancel', (r) => ({ study: answer(api.cancel(checkId(r.id, ['id']))) })),
    pause: unary('Pause', (r) => ({ study: answer(api.pause(checkId(r.id, ['id']))) })),
    resume: unary('Resume', (r) => ({ study: answer(api.resume(checkId(r.id, ['id']))) })),
    watch,
  };
  server.addService(EngineServiceService, implementation);

  const credentials =
    options.tls === null
      ? ServerCredentials.createInsecure()
      : ServerCredentials.createSsl(
          null,
          [{ cert_chain: options.tls.cert, private_key: options.tls.key }],
          false,
        );
  let bound: number;
  try {
    bound = await new Promise<number>((resolve, reject) => {
      server.bindAsync(formatAddress(host, port), credentials, (err, p) =>
        err ? reject(err) : resolve(p),
      );
    });
  } catch (e) {
    server.forceShutdown();
    throw new IoError(options.address, `cannot listen: ${describeError(e)}`, { cause: e });
  }
  let closed: Promise<void> | null = null;
  return {
    address: formatAddress(host, bound),
    port: bound,
    get watchers() {
      return watches.size;
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        closing = true;
        for (const w of [...watches]) w.end(status.UNAVAILABLE, 'the engine is shutting down');
        server.tryShutdown(() => resolve());
        setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000).unref();
      });
      return closed;
    },
  };
}
