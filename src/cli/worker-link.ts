/**
 * The TypeScript worker's link thread (a `worker_threads` Worker inside the worker
 * process). It owns the gRPC stream to the engine and the heartbeat, so a trainer that
 * holds the main thread for minutes of synchronous work is still seen alive; it relays
 * messages to and from the main thread, records cancels where a blocked trainer can see
 * them (shared memory), and ends the whole process when the engine is gone (the stream
 * breaks, or the engine process dies and the worker is re-parented) or when a shutdown
 * is not honoured within a few seconds.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { EngineToWorker, WorkerToEngine } from '../engine/index.js';
import { dialEngine } from '../rpc/client.js';
import { InternalError } from '../errors.js';

export interface LinkData {
  readonly engine: string;
  /** [0]: the task running now (0: none); [1]: the last task the engine cancelled. */
  readonly shared: SharedArrayBuffer;
  /** The worker's parent (the engine) when it started. */
  readonly ppid: number;
  /** Seconds a shutdown may take before the process is ended (the trainer may be blocked). */
  readonly shutdownGraceSeconds: number;
}

/** From the main thread: a message to send, or a request to close the stream. */
export type ToLink =
  { readonly type: 'send'; readonly message: WorkerToEngine } | { readonly type: 'close' };
/** To the main thread: a message from the engine, or the stream's end. */
export type FromLink =
  | { readonly type: 'message'; readonly message: EngineToWorker }
  | { readonly type: 'closed'; readonly error: string | null };

const port = parentPort;
if (port === null) throw new InternalError('worker-link.js runs as a worker thread of worker.js');
const data = workerData as LinkData;
const state = new BigInt64Array(data.shared);
const link = dialEngine(data.engine);
let heartbeat: ReturnType<typeof setInterval> | null = null;
let ending = false;

/**
 * Ends the whole process (not just this thread) after `seconds` unless the main thread
 * exits first. Without its engine a worker has nothing to finish, so that is quick.
 */
function endProcessSoon(why: string, seconds = 1): void {
  if (ending) return;
  ending = true;
  setTimeout(() => {
    process.stderr.write(`stagetree worker: ${why}; exiting\n`);
    process.kill(process.pid, 'SIGTERM');
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), 2000).unref();
  }, seconds * 1000).unref();
}

link.onMessage((message) => {
  switch (message.kind) {
    case 'welcome':
      if (heartbeat !== null) clearInterval(heartbeat);
      heartbeat = setInterval(
        () => {
          const running = Atomics.load(state, 0);
          link.send({ kind: 'heartbeat', taskId: running === 0n ? null : Number(running) });
        },
        Math.max(10, message.heartbeatSeconds * 1000),
      );
      break;
    case 'cancel':
      Atomics.store(state, 1, BigInt(message.taskId));
      break;
    case 'shutdown':
      endProcessSoon(
        'the engine asked it to shut down and the trainer did not stop',
        data.shutdownGraceSeconds,
      );
      break;
    case 'run':
    case 'cut':
    case 'saveCut':
      break;
  }
  port.postMessage({ type: 'message', message } satisfies FromLink);
});
link.onClose((error) => {
  if (heartbeat !== null) clearInterval(heartbeat);
  port.postMessage({ type: 'closed', error } satisfies FromLink);
  // A stream that ended cleanly (a shutdown) leaves the main thread time to flush its output.
  endProcessSoon(
    `lost the engine (${error ?? 'its stream ended'})`,
    error === null ? data.shutdownGraceSeconds : 1,
  );
});
port.on('message', (m: ToLink) => {
  if (m.type === 'send') link.send(m.message);
  else link.close();
});

// The engine was SIGKILLed: the stream breaks at once on a local socket, but a stream
// through a proxy may not, so also watch for being re-parented.
setInterval(() => {
  if (process.ppid !== data.ppid) endProcessSoon(`its engine (pid ${data.ppid}) is gone`);
}, 500).unref();
