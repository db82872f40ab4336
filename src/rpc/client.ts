import { credentials } from '@grpc/grpc-js';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { ValidationError } from '../errors.js';
import type { EngineToWorker, WorkerToEngine } from '../engine/index.js';
import { WorkerHubServiceClient } from '../gen/stagetree/v1/worker.js';
import type { ConnectRequest, ConnectResponse } from '../gen/stagetree/v1/worker.js';
import { engineFromWire, workerToWire } from './convert.js';

/** A worker's end of the stream to the engine, in domain messages. */
export interface EngineLink {
  send(message: WorkerToEngine): void;
  onMessage(listener: (message: EngineToWorker) => void): void;
  /** The stream ended; `error` is set when it ended abnormally. */
  onClose(listener: (error: string | null) => void): void;
  close(): void;
}

/** Dials the engine at host:port and opens the worker stream. */
export function dialEngine(address: string): EngineLink {
  const client = new WorkerHubServiceClient(address, credentials.createInsecure());
  const call: ClientDuplexStream<ConnectRequest, ConnectResponse> = client.connect();
  const messageListeners: ((m: EngineToWorker) => void)[] = [];
  const closeListeners: ((error: string | null) => void)[] = [];
  let done = false;
  const finish = (error: string | null): void => {
    if (done) return;
    done = true;
    for (const l of closeListeners) l(error);
    client.close();
  };
  call.on('data', (wire: ConnectResponse) => {
    let message: EngineToWorker;
    try {
      message = engineFromWire(wire);
    } catch (e) {
      if (e instanceof ValidationError) {
        finish(`malformed message from the engine: ${e.message}`);
        call.cancel();
        return;
      }
      throw e;
    }
    for (const l of messageListeners) l(message);
  });
  call.on('end', () => finish(null));
  call.on('error', (e: Error & { details?: string }) => finish(e.details ?? e.message));
  return {
    send(message) {
      if (!done) call.write(workerToWire(message));
    },
    onMessage(listener) {
      messageListeners.push(listener);
    },
    onClose(listener) {
      closeListeners.push(listener);
    },
    close() {
      if (!done) call.end();
    },
  };
}
