import { Server, ServerCredentials, status } from '@grpc/grpc-js';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { ValidationError } from '../errors.js';
import { PROTOCOL } from '../engine/index.js';
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
  onMessage(listener: (message: Exclude<WorkerToEngine, Registration>) => void): void;
  /** The stream ended (worker gone, protocol error, or close()); `reason` says why. */
  onClose(listener: (reason: string) => void): void;
}

export interface WorkerHub {
  /** host:port the workers dial. */
  readonly address: string;
  readonly port: number;
  close(): Promise<void>;
}

export interface WorkerHubOptions {
  readonly host?: string;
  /** 0 (default): any free port. */
  readonly port?: number;
  /** A worker registered; return false (or throw a ValidationError) to refuse it. */
  readonly onConnect: (connection: WorkerConnection) => void;
}

type Call = ServerDuplexStream<ConnectRequest, ConnectResponse>;

function fail(call: Call, code: status, details: string): void {
  call.emit('error', { code, details, message: details });
}

/**
 * The engine's gRPC endpoint: every worker dials it and holds one bidirectional stream
 * (`WorkerHubService.Connect`). The first message must be a Register for this protocol
 * version; every message is validated (src/rpc/convert.ts) and a malformed or
 * out-of-order one ends the stream with INVALID_ARGUMENT or FAILED_PRECONDITION and a
 * message naming the field, without reaching the engine.
 */
export async function startWorkerHub(options: WorkerHubOptions): Promise<WorkerHub> {
  const server = new Server();
  server.addService(WorkerHubServiceService, {
    connect: (call: Call) => {
      let connection:
        (WorkerConnection & { emit(m: WorkerToEngine): void; ended(reason: string): void }) | null =
        null;
      let closed = false;
      const end = (reason: string): void => {
        if (closed) return;
        closed = true;
        connection?.ended(reason);
      };
      call.on('data', (wire: ConnectRequest) => {
        let message: WorkerToEngine;
        try {
          message = workerFromWire(wire);
        } catch (e) {
          if (e instanceof ValidationError) {
            fail(call, status.INVALID_ARGUMENT, `malformed message: ${e.message}`);
            end(`malformed message: ${e.message}`);
            return;
          }
          throw e;
        }
        if (connection === null) {
          if (message.kind !== 'register') {
            fail(
              call,
              status.FAILED_PRECONDITION,
              `the first message must be register, got ${message.kind}`,
            );
            end('protocol error');
            return;
          }
          if (message.protocol !== PROTOCOL) {
            fail(
              call,
              status.FAILED_PRECONDITION,
              `protocol ${JSON.stringify(message.protocol)} is not supported; this engine speaks ${PROTOCOL}`,
            );
            end('protocol mismatch');
            return;
          }
          connection = makeConnection(call, message);
          options.onConnect(connection);
          return;
        }
        if (message.kind === 'register') {
          fail(call, status.FAILED_PRECONDITION, 'register may only be sent once, first');
          end('protocol error');
          return;
        }
        connection.emit(message);
      });
      call.on('end', () => {
        end('the worker closed its stream');
        if (!closed) call.end();
      });
      call.on('error', () => end('the stream failed'));
      call.on('cancelled', () => end('the worker went away'));
      call.on('close', () => end('the stream closed'));
    },
  });
  const host = options.host ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(
      `${host}:${options.port ?? 0}`,
      ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p)),
    );
  });
  return {
    address: `${host}:${port}`,
    port,
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
): WorkerConnection & { emit(m: WorkerToEngine): void; ended(reason: string): void } {
  const messageListeners: ((m: Exclude<WorkerToEngine, Registration>) => void)[] = [];
  const closeListeners: ((reason: string) => void)[] = [];
  let open = true;
  return {
    registration,
    send(message) {
      if (open) call.write(engineToWire(message));
    },
    close() {
      if (!open) return;
      open = false;
      call.end();
    },
    onMessage(listener) {
      messageListeners.push(listener);
    },
    onClose(listener) {
      closeListeners.push(listener);
    },
    emit(m) {
      if (m.kind === 'register') return;
      for (const l of messageListeners) l(m);
    },
    ended(reason) {
      open = false;
      for (const l of closeListeners) l(reason);
    },
  };
}
