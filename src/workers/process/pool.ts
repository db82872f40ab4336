import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import type { EngineToWorker, WorkerId, WorkerPort, WorkerToEngine } from '../../engine/index.js';

/** How to start one worker process. */
export interface WorkerCommand {
  readonly file: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string;
}

export interface ProcessPoolOptions {
  /** The command for a worker; the pool adds STAGETREE_ENGINE, STAGETREE_WORKER_ID, GPU variables. */
  readonly command: (workerId: WorkerId) => WorkerCommand;
  /** host:port of the engine's worker hub. */
  readonly engineAddress: string;
  /** Whether there are GPUs to assign (sets CUDA_VISIBLE_DEVICES). */
  readonly gpus: boolean;
  /** What every worker is told on registering. */
  readonly welcome: Extract<EngineToWorker, { kind: 'welcome' }>;
  /** Where worker output goes (default: this process's stderr, prefixed). */
  readonly log?: (workerId: WorkerId, line: string) => void;
}

type Message = Exclude<WorkerToEngine, { kind: 'register' }>;

interface Slot {
  readonly id: WorkerId;
  readonly child: ChildProcess;
  port: WorkerPort | null;
  /** Messages waiting for the worker to register. */
  readonly pending: EngineToWorker[];
  gone: boolean;
}

/**
 * The embedded default backend: one local child process per worker. The engine decides
 * when a worker starts (a task with `startProcess`) and when one retires; the pool
 * spawns it with its GPU (CUDA_VISIBLE_DEVICES; a fractional share shares the GPU),
 * queues messages until the worker has dialled the hub and registered, and reports a
 * worker gone when its process exits or its stream ends, whichever comes first. A worker
 * that never registers is killed, not reused.
 */
export class ProcessPool {
  private readonly slots = new Map<WorkerId, Slot>();
  private readonly messageListeners: ((worker: WorkerId, m: Message) => void)[] = [];
  private readonly goneListeners: ((worker: WorkerId, reason: string) => void)[] = [];

  constructor(private readonly options: ProcessPoolOptions) {}

  onMessage(listener: (worker: WorkerId, m: Message) => void): void {
    this.messageListeners.push(listener);
  }

  onGone(listener: (worker: WorkerId, reason: string) => void): void {
    this.goneListeners.push(listener);
  }

  /** Starts worker `id` on `gpu` with `share` of it. */
  start(id: WorkerId, gpu: number, share: number): void {
    if (this.slots.has(id)) throw new Error(`internal: worker ${id} started twice`);
    const cmd = this.options.command(id);
    const env: Record<string, string> = {
      ...process.env,
      ...cmd.env,
      STAGETREE_ENGINE: this.options.engineAddress,
      STAGETREE_WORKER_ID: id,
      STAGETREE_GPU_SHARE: String(share),
    };
    if (this.options.gpus) env.CUDA_VISIBLE_DEVICES = String(gpu);
    else env.STAGETREE_GPUS = '';
    const child = spawn(cmd.file, [...cmd.args], {
      env,
      cwd: cmd.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const slot: Slot = { id, child, port: null, pending: [], gone: false };
    this.slots.set(id, slot);
    const log = this.options.log ?? ((w, line) => process.stderr.write(`[${w}] ${line}\n`));
    for (const stream of [child.stdout, child.stderr]) {
      let buffer = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        buffer += chunk;
        let nl = buffer.indexOf('\n');
        while (nl >= 0) {
          log(id, buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
          nl = buffer.indexOf('\n');
        }
      });
    }
    child.on('error', (e) => {
      this.gone(slot, `could not start: ${e.message}`);
    });
    child.on('exit', (code, signal) => {
      this.gone(
        slot,
        signal
          ? `its process was killed (${signal})`
          : `its process exited with code ${String(code)}`,
      );
    });
  }

  /** A worker dialled the hub and registered. */
  attach(port: WorkerPort): void {
    const slot = this.slots.get(port.registration.workerId);
    if (!slot || slot.gone || slot.port) {
      port.send({
        kind: 'shutdown',
        reason: `no worker ${port.registration.workerId} is expected`,
      });
      port.close();
      return;
    }
    slot.port = port;
    port.onMessage((m) => {
      for (const l of this.messageListeners) l(slot.id, m);
    });
    port.onClose((reason) => {
      this.gone(slot, `its stream ended (${reason})`);
      this.kill(slot.id);
    });
    port.send(this.options.welcome);
    for (const m of slot.pending.splice(0)) port.send(m);
  }

  send(id: WorkerId, message: EngineToWorker): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.port) slot.port.send(message);
    else slot.pending.push(message);
  }

  /** Asks a worker to exit (after its current task), then kills it if it lingers. */
  stop(id: WorkerId, reason: string): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    this.send(id, { kind: 'shutdown', reason });
    setTimeout(() => {
      this.kill(id);
    }, 5000).unref();
  }

  kill(id: WorkerId): void {
    const slot = this.slots.get(id);
    if (slot && slot.child.exitCode === null && slot.child.signalCode === null)
      slot.child.kill('SIGKILL');
  }

  /** The process id of a worker (for tests that kill it). */
  pid(id: WorkerId): number | undefined {
    return this.slots.get(id)?.child.pid;
  }

  /** Stops every worker and waits for the processes to exit. */
  async shutdown(reason: string): Promise<void> {
    const waits = [...this.slots.values()].map(
      (slot) =>
        new Promise<void>((resolve) => {
          if (slot.child.exitCode !== null || slot.child.signalCode !== null) {
            resolve();
            return;
          }
          slot.child.once('exit', () => {
            resolve();
          });
          this.stop(slot.id, reason);
        }),
    );
    await Promise.all(waits);
  }

  private gone(slot: Slot, reason: string): void {
    if (slot.gone) return;
    slot.gone = true;
    for (const l of this.goneListeners) l(slot.id, reason);
  }
}
