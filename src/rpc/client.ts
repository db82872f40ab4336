import { credentials } from '@grpc/grpc-js';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { ValidationError } from '../errors.js';
import { MAX_MESSAGE_BYTES } from '../engine/protocol.js';
import type { EngineToWorker, WorkerToEngine } from '../engine/index.js';
import {
  ConnectRequest as ConnectRequestCodec,
  WorkerHubServiceClient,
} from '../gen/stagetree/v1/worker.js';
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

/**
 * The wire form of a worker's message, within the message limit: a result too large to
 * send (a huge metric map) becomes a failure that says so, so the engine hears why
 * instead of seeing the stream break.
 */
export function boundedWire(message: WorkerToEngine): ConnectRequest {
  const wire = workerToWire(message);
  // Only results can grow large (metric maps, error texts); the rest are a few bytes.
  if (message.kind !== 'done' && message.kind !== 'failed') return wire;
  const size = ConnectRequestCodec.encode(wire).finish().length;
  if (size <= MAX_MESSAGE_BYTES) return wire;
  const what =
    message.kind === 'done'
      ? ` (evaluate() returned ${Object.keys(message.metrics).length} metrics)`
      : '';
  return workerToWire({
    kind: 'failed',
    taskId: message.taskId,
    message: `message of ${size} bytes exceeds the limit of ${MAX_MESSAGE_BYTES} bytes${what}`,
    detail: '',
    reason: 'trainer',
  });
}

/** Dials the engine (`host:port` or `unix:/path`) and opens the worker stream. */
export function dialEngine(address: string): EngineLink {
  const client = new WorkerHubServiceClient(address, credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
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
      if (!done) call.write(boundedWire(message));
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
