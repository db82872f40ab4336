import { Server, ServerCredentials, status } from '@grpc/grpc-js';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { describeError, ValidationError } from '../errors.js';
import { MAX_MESSAGE_BYTES, PROTOCOL } from '../engine/protocol.js';
import type { EngineToWorker, WorkerToEngine } from '../engine/index.js';
import { WorkerHubServiceService } from '../gen/stagetree/v1/worker.js';
import type { ConnectRequest, ConnectResponse } from '../gen/stagetree/v1/worker.js';
import { engineToWire, workerFromWire } from './convert.js';

export type Registration = Extract<WorkerToEngine, { kind: 'register' }>;

/** One worker's stream, as the engine side sees it (domain messages only). */
export interface WorkerConnection {
  readonly registration: Registration;
  send(message: EngineToWorker): void;
  /** Ends the stream from the engine side. */
  close(): void;
  /** Ends the stream for a protocol violation: FAILED_PRECONDITION with `message`. */
  abort(message: string): void;
  onMessage(listener: (message: Exclude<WorkerToEngine, Registration>) => void): void;
  /** The stream ended (worker gone, protocol error, or close()); `reason` says why. */
  onClose(listener: (reason: string) => void): void;
}

/**
 * Why a registration is refused: no valid secret, a worker that is connected already, or
 * a worker that is not what it was started as (other GPUs, a state it cannot hold).
 */
export interface Refusal {
  readonly code: 'unauthenticated' | 'already-exists' | 'failed-precondition';
  readonly message: string;
}

export interface WorkerHub {
  /** What workers dial: `host:port`, or `unix:/path` for a Unix socket. */
  readonly address: string;
  /** The TCP port, or 0 on a Unix socket. */
  readonly port: number;
  /** Streams refused or ended for what their peer sent, by reason (for logs and tests). */
  readonly refused: ReadonlyMap<string, number>;
  close(): Promise<void>;
}

export interface WorkerHubOptions {
  readonly host?: string;
  /** 0 (default): any free port. */
  readonly port?: number;
  /** Listen on this Unix socket path instead of TCP (its folder should be owner-only). */
  readonly socket?: string;
  /**
   * Decides whether a registration may connect (the worker proves it was started by this
   * engine); null admits it. Called before `onConnect`; a throw refuses it as unauthenticated.
   */
  readonly admit: (registration: Registration) => Refusal | null;
  /** A worker registered and was admitted. */
  readonly onConnect: (connection: WorkerConnection) => void;
  /** Seconds a stream may stay open without registering. Default 10. */
  readonly registerTimeout?: number;
}

type Call = ServerDuplexStream<ConnectRequest, ConnectResponse>;

function fail(call: Call, code: status, details: string): void {
  try {
    call.emit('error', { code, details, message: details });
  } catch {
    // the stream is gone already
  }
}

const STATUS = {
  unauthenticated: status.UNAUTHENTICATED,
  'already-exists': status.ALREADY_EXISTS,
  'failed-precondition': status.FAILED_PRECONDITION,
} as const;

type Connection = WorkerConnection & {
  emit(m: Exclude<WorkerToEngine, Registration>): void;
  ended(reason: string): void;
};

/**
 * The engine's gRPC endpoint: every worker dials it and holds one bidirectional stream
 * (`WorkerHubService.Connect`). The first message must be a Register for this protocol
 * version with a secret `admit` accepts (UNAUTHENTICATED otherwise; ALREADY_EXISTS for a
 * worker connected already), sent within `registerTimeout`. Every message is validated
 * (src/rpc/convert.ts); a malformed or out-of-order one ends that stream with
 * INVALID_ARGUMENT or FAILED_PRECONDITION and a message naming the field, without
 * reaching the engine. Nothing a peer sends can throw out of the hub: an exception in a
 * listener ends that stream with INTERNAL. Messages are limited to `MAX_MESSAGE_BYTES`.
 */
export async function startWorkerHub(options: WorkerHubOptions): Promise<WorkerHub> {
  const server = new Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
  const refused = new Map<string, number>();
  const count = (reason: string): void => {
    refused.set(reason, (refused.get(reason) ?? 0) + 1);
  };
  const registerTimeout = options.registerTimeout ?? 10;
  server.addService(WorkerHubServiceService, {
    connect: (call: Call) => {
      let connection: Connection | null = null;
      let closed = false;
      const end = (reason: string): void => {
        if (closed) return;
        closed = true;
        clearTimeout(deadline);
        try {
          connection?.ended(reason);
        } catch {
          // a listener's failure must not escape into grpc-js
        }
      };
      const refuse = (code: status, why: string, details: string): void => {
        count(why);
        // First, so the stream's own error event does not replace the reason.
        end(details);
        fail(call, code, details);
      };
      const deadline = setTimeout(() => {
        if (connection === null)
          refuse(
            status.DEADLINE_EXCEEDED,
            'no register',
            `no register within ${registerTimeout} s`,
          );
      }, registerTimeout * 1000);
      deadline.unref();
      const receive = (wire: ConnectRequest): void => {
        if (closed) return;
        let message: WorkerToEngine;
        try {
          message = workerFromWire(wire);
        } catch (e) {
          if (e instanceof ValidationError) {
            refuse(status.INVALID_ARGUMENT, 'malformed', `malformed message: ${e.message}`);
            return;
          }
          throw e;
        }
        if (connection === null) {
          if (message.kind !== 'register') {
            refuse(
              status.FAILED_PRECONDITION,
              'protocol',
              `the first message must be register, got ${message.kind}`,
            );
            return;
          }
          if (message.protocol !== PROTOCOL) {
            refuse(
              status.FAILED_PRECONDITION,
              'protocol',
              `protocol ${JSON.stringify(message.protocol)} is not supported; this engine speaks ${PROTOCOL}`,
            );
            return;
          }
          let refusal: Refusal | null;
          try {
            refusal = options.admit(message);
          } catch (e) {
            refusal = { code: 'unauthenticated', message: describeError(e) };
          }
          if (refusal !== null) {
            refuse(STATUS[refusal.code], refusal.code, refusal.message);
            return;
          }
          clearTimeout(deadline);
          connection = makeConnection(call, message, (details) => {
            refuse(status.FAILED_PRECONDITION, 'protocol', details);
          });
          options.onConnect(connection);
          return;
        }
        if (message.kind === 'register') {
          refuse(status.FAILED_PRECONDITION, 'protocol', 'register may only be sent once, first');
          return;
        }
        connection.emit(message);
      };
      call.on('data', (wire: ConnectRequest) => {
        try {
          receive(wire);
        } catch (e) {
          refuse(status.INTERNAL, 'internal', `internal error: ${describeError(e)}`);
        }
      });
      call.on('end', () => {
        end('the worker closed its stream');
        try {
          call.end();
        } catch {
          // already ended
        }
      });
      call.on('error', () => {
        end('the stream failed');
      });
      call.on('cancelled', () => {
        end('the worker went away');
      });
      call.on('close', () => {
        end('the stream closed');
      });
    },
  });
  const target = options.socket
    ? `unix:${options.socket}`
    : `${options.host ?? '127.0.0.1'}:${options.port ?? 0}`;
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(target, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    );
  });
  return {
    address: options.socket ? target : `${options.host ?? '127.0.0.1'}:${port}`,
    port: options.socket ? 0 : port,
    refused,
    close: () =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => resolve());
        setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000).unref();
      }),
  };
}

function makeConnection(
  call: Call,
  registration: Registration,
  abort: (message: string) => void,
): Connection {
  const messageListeners: ((m: Exclude<WorkerToEngine, Registration>) => void)[] = [];
  const closeListeners: ((reason: string) => void)[] = [];
  let open = true;
  return {
    registration,
    send(message) {
      if (!open) return;
      try {
        call.write(engineToWire(message));
      } catch {
        // a stream torn down under us: its close event says so
      }
    },
    close() {
      if (!open) return;
      open = false;
      try {
        call.end();
      } catch {
        // already ended
      }
    },
    abort(message) {
      if (!open) return;
      abort(message);
    },
    onMessage(listener) {
      messageListeners.push(listener);
    },
    onClose(listener) {
      closeListeners.push(listener);
    },
    emit(m) {
      for (const l of messageListeners) l(m);
    },
    ended(reason) {
      open = false;
      for (const l of closeListeners) l(reason);
    },
  };
}
