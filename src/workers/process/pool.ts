import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import { WORKER_SECRET_ENV } from '../../engine/index.js';
import type { EngineToWorker, WorkerId, WorkerPort } from '../../engine/index.js';
import { gpuAt, subscribe } from '../pool.js';
import type { GoneInfo, Inventory, Unsubscribe, WorkerMessage, WorkerPool } from '../pool.js';
import { SlotLifecycle, SlotState } from '../slot.js';
import { InternalError, ValidationError } from '../../errors.js';

/** How to start one worker process. */
export interface WorkerCommand {
  readonly file: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string;
}

export interface ProcessPoolOptions {
  /**
   * The command for a worker; the pool adds STAGETREE_ENGINE, STAGETREE_WORKER_ID,
   * STAGETREE_WORKER_SECRET and the GPU variables.
   */
  readonly command: (workerId: WorkerId, runtime: string | null) => WorkerCommand;
  /** What workers dial: the engine's worker hub (`host:port` or `unix:/path`). */
  readonly engineAddress: string;
  /**
   * Whether there are GPUs to assign (sets CUDA_VISIBLE_DEVICES; none: it is set empty
   * and the inventory has no GPUs, so the engine's GPU indices are worker slots).
   */
  readonly gpus: boolean;
  /**
   * This host's GPUs, in the engine's order: GPU index i runs with CUDA_VISIBLE_DEVICES
   * set to `devices[i].device`, and an index outside the list is refused
   * (`UnknownGpuError`). Only with `gpus: true`. Absent: the inventory lists what
   * `nvidia-smi` sees (`detectGpus`, asked once, when first needed) and GPU index i runs
   * on device i, as before inventories existed.
   */
  readonly devices?: readonly GpuDevice[];
  /** The host name in the inventory (default: `os.hostname()`). */
  readonly host?: string;
  /** What every worker is told on registering (the pool adds its id). */
  readonly welcome: Omit<Extract<EngineToWorker, { kind: 'welcome' }>, 'workerId'>;
  /** Where worker output goes (default: this process's stderr, prefixed). */
  readonly log?: (workerId: WorkerId, line: string) => void;
}

/** A GPU of this host: its device number and memory (null: unknown). */
export interface GpuDevice {
  readonly device: number;
  readonly memoryBytes: number | null;
}

/**
 * The GPUs `nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits`
 * prints (memory in MiB), in its order; none when it cannot be run or prints nothing usable.
 */
export function detectGpus(command = 'nvidia-smi'): GpuDevice[] {
  const r = spawnSync(
    command,
    ['--query-gpu=index,memory.total', '--format=csv,noheader,nounits'],
    {
      encoding: 'utf8',
      timeout: 10_000,
    },
  );
  if (r.error !== undefined || r.status !== 0 || typeof r.stdout !== 'string') return [];
  return parseGpuQuery(r.stdout);
}

/** Parses `index, memory.total` lines (memory in MiB; `[N/A]` and the like: unknown). */
export function parseGpuQuery(text: string): GpuDevice[] {
  const out: GpuDevice[] = [];
  for (const line of text.split('\n')) {
    const [index, memory] = line.split(',').map((x) => x.trim());
    if (index === undefined || !/^\d+$/.test(index)) continue;
    const mib = memory !== undefined && /^\d+(\.\d+)?$/.test(memory) ? Number(memory) : null;
    out.push({ device: Number(index), memoryBytes: mib === null ? null : mib * 1024 * 1024 });
  }
  return out;
}

/** How long a worker whose stream ended may take to exit on its own before it is killed. */
const STREAM_END_GRACE_MS = 3000;

/** Lines of a worker's output kept for the message when it dies before registering. */
const TAIL_LINES = 20;

interface Slot {
  readonly id: WorkerId;
  readonly life: SlotLifecycle;
  readonly child: ChildProcess;
  readonly secret: Buffer;
  /** The GPUs (CUDA_VISIBLE_DEVICES) and share it was started with. */
  readonly gpus: readonly number[];
  readonly share: number;
  port: WorkerPort | null;
  /** Messages waiting for the worker to register. */
  readonly pending: EngineToWorker[];
  readonly tail: string[];
  gone: boolean;
  /** stdout and stderr are closed and every line was passed on. */
  readonly drained: Promise<void>;
}

/** A registration refused by `admit`. */
export interface AdmitRefusal {
  readonly code: 'unauthenticated' | 'already-exists' | 'failed-precondition';
  readonly message: string;
}

/**
 * The embedded default backend: one local child process per worker. The engine decides
 * when a worker starts (a task with `startProcess`) and when one retires; the pool
 * spawns it with its GPU (CUDA_VISIBLE_DEVICES; a fractional share shares the GPU) and
 * a secret of its own (an HMAC of the worker id under a per-run key that never leaves
 * this process), admits only the registration that proves it holds that secret (once),
 * queues messages until then, and reports a worker gone when its process exits or its
 * stream ends, whichever comes first. A worker that never registers is killed, not
 * reused. Every line a worker prints is passed on, none dropped.
 */
export class ProcessPool implements WorkerPool {
  private readonly slots = new Map<WorkerId, Slot>();
  private readonly key = randomBytes(32);
  private readonly messageListeners: ((worker: WorkerId, m: WorkerMessage) => void)[] = [];
  private readonly goneListeners: ((worker: WorkerId, reason: string, info: GoneInfo) => void)[] =
    [];
  private readonly registeredListeners: ((worker: WorkerId) => void)[] = [];
  private detected: Inventory | null = null;

  constructor(private readonly options: ProcessPoolOptions) {
    const devices = options.devices;
    if (devices === undefined) return;
    if (!options.gpus)
      throw new ValidationError(
        'ProcessPoolOptions.devices',
        'no devices when gpus is false (a CPU-only pool)',
        devices,
      );
    const seen = new Set<number>();
    devices.forEach((d, i) => {
      if (!Number.isInteger(d.device) || d.device < 0 || seen.has(d.device))
        throw new ValidationError(
          `ProcessPoolOptions.devices[${i}].device`,
          'a device number >= 0, each once',
          d.device,
        );
      seen.add(d.device);
      if (d.memoryBytes !== null && !(Number.isFinite(d.memoryBytes) && d.memoryBytes > 0))
        throw new ValidationError(
          `ProcessPoolOptions.devices[${i}].memoryBytes`,
          'a number of bytes > 0, or null',
          d.memoryBytes,
        );
    });
  }

  /**
   * This host and its GPUs: `devices`, or what `nvidia-smi` sees when `gpus` is true
   * without them (possibly none), or no GPUs for a CPU-only pool.
   */
  inventory(): Inventory {
    const name = this.options.host ?? hostname();
    if (!this.options.gpus) return { hosts: [{ name, gpus: [] }] };
    if (this.options.devices === undefined && this.detected !== null) return this.detected;
    const devices = this.options.devices ?? detectGpus();
    const inv: Inventory = {
      hosts: [{ name, gpus: devices.map((d) => ({ host: name, ...d })) }],
    };
    if (this.options.devices === undefined) this.detected = inv;
    return inv;
  }

  /** The CUDA device GPU index `gpu` runs on, or null for a CPU-only pool. */
  private deviceOf(gpu: number): number | null {
    if (!this.options.gpus) return null;
    // Without a device list, index i is device i (what the pool always did).
    if (this.options.devices === undefined) return gpu;
    return gpuAt(this.inventory(), gpu)?.device ?? null;
  }

  /** What the pool's workers dial (the engine's hub). */
  get engineAddress(): string {
    return this.options.engineAddress;
  }

  onMessage(listener: (worker: WorkerId, m: WorkerMessage) => void): Unsubscribe {
    return subscribe(this.messageListeners, listener);
  }

  onGone(listener: (worker: WorkerId, reason: string, info: GoneInfo) => void): Unsubscribe {
    return subscribe(this.goneListeners, listener);
  }

  /** A worker registered: messages sent to it from now on reach it. */
  onRegistered(listener: (worker: WorkerId) => void): Unsubscribe {
    return subscribe(this.registeredListeners, listener);
  }

  /** Whether a worker has registered (and is not gone). */
  registered(id: WorkerId): boolean {
    const slot = this.slots.get(id);
    return slot !== undefined && !slot.gone && slot.port !== null;
  }

  private secretOf(id: WorkerId): Buffer {
    return createHmac('sha256', this.key).update(`worker:${id}`).digest();
  }

  /** Starts worker `id` on `gpu` with `share` of it. */
  start(id: WorkerId, gpu: number, share: number, runtime: string | null = null): void {
    if (this.slots.has(id)) throw new InternalError(`worker ${id} started twice`);
    const device = this.deviceOf(gpu);
    const cmd = this.options.command(id, runtime);
    const secret = this.secretOf(id);
    const env: Record<string, string> = {
      ...process.env,
      ...cmd.env,
      STAGETREE_ENGINE: this.options.engineAddress,
      STAGETREE_WORKER_ID: id,
      [WORKER_SECRET_ENV]: secret.toString('base64url'),
      STAGETREE_GPU_SHARE: String(share),
      CUDA_VISIBLE_DEVICES: device === null ? '' : String(device),
    };
    const child = spawn(cmd.file, [...cmd.args], {
      env,
      cwd: cmd.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log = this.options.log ?? ((w, line) => process.stderr.write(`[${w}] ${line}\n`));
    const tail: string[] = [];
    const emit = (line: string): void => {
      tail.push(line);
      if (tail.length > TAIL_LINES) tail.shift();
      log(id, line);
    };
    const drained = Promise.all(
      [child.stdout, child.stderr].map(
        (stream) =>
          new Promise<void>((resolve) => {
            let buffer = '';
            stream.setEncoding('utf8');
            stream.on('data', (chunk: string) => {
              buffer += chunk;
              let nl = buffer.indexOf('\n');
              while (nl >= 0) {
                emit(buffer.slice(0, nl));
                buffer = buffer.slice(nl + 1);
                nl = buffer.indexOf('\n');
              }
            });
            stream.on('close', () => {
              if (buffer !== '') emit(buffer);
              buffer = '';
              resolve();
            });
          }),
      ),
    ).then(() => undefined);
    const slot: Slot = {
      id,
      life: new SlotLifecycle(id),
      child,
      secret,
      gpus: device === null ? [] : [device],
      share,
      port: null,
      pending: [],
      tail,
      gone: false,
      drained,
    };
    this.slots.set(id, slot);
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

  /**
   * Whether a registration may connect: it must name a worker this pool started and is
   * waiting for, with that worker's secret (compared in constant time). Null admits it.
   */
  admit(registration: {
    readonly workerId: string;
    readonly secret: string;
    readonly gpus: readonly number[];
    readonly gpuShare: number;
    readonly holds: string | null;
  }): AdmitRefusal | null {
    const slot = this.slots.get(registration.workerId);
    const given = Buffer.from(registration.secret, 'base64url');
    if (
      !slot ||
      slot.gone ||
      given.length !== slot.secret.length ||
      !timingSafeEqual(given, slot.secret)
    ) {
      return {
        code: 'unauthenticated',
        message: 'not a worker this engine started (unknown worker id or wrong secret)',
      };
    }
    if (slot.port) {
      return {
        code: 'already-exists',
        message: `worker ${registration.workerId} is connected already`,
      };
    }
    // It proved who it is; now it must be what it was started as.
    const id = registration.workerId;
    if (registration.gpus.join(',') !== slot.gpus.join(',')) {
      return {
        code: 'failed-precondition',
        message: `worker ${id} sees GPUs [${registration.gpus.join(', ')}], it was started for [${slot.gpus.join(', ')}] (CUDA_VISIBLE_DEVICES changed on the way?)`,
      };
    }
    if (Math.abs(registration.gpuShare - slot.share) > 1e-9) {
      return {
        code: 'failed-precondition',
        message: `worker ${id} registered for a GPU share of ${registration.gpuShare}, it was started for ${slot.share}`,
      };
    }
    if (registration.holds !== null) {
      return {
        code: 'failed-precondition',
        message: `worker ${id} is new and cannot hold state ${registration.holds}`,
      };
    }
    return null;
  }

  /** A worker dialled the hub, registered and was admitted. */
  attach(port: WorkerPort): void {
    const slot = this.slots.get(port.registration.workerId);
    if (!slot || slot.gone || slot.port || this.admit(port.registration) !== null) {
      port.abort(`no worker ${port.registration.workerId} is expected`);
      return;
    }
    slot.port = port;
    if (slot.life.state === SlotState.starting) slot.life.to(SlotState.idle);
    port.onMessage((m) => {
      // A slot that is gone says nothing more (a message still on the wire is dropped).
      if (slot.gone) return;
      if (m.kind === 'done' || m.kind === 'failed') slot.life.answered(m.taskId);
      for (const l of this.messageListeners) l(slot.id, m);
    });
    port.onClose((reason) => {
      // Never inside the call that ended the stream (`abort`): listeners hear it after.
      queueMicrotask(() => {
        this.gone(slot, `its stream ended (${reason})`);
      });
      // A worker without a stream is of no use; let it flush its output and exit first.
      setTimeout(() => {
        this.kill(slot.id);
      }, STREAM_END_GRACE_MS).unref();
    });
    port.send({ ...this.options.welcome, workerId: slot.id });
    for (const m of slot.pending.splice(0)) this.deliver(slot, m);
    for (const l of this.registeredListeners) l(slot.id);
  }

  send(id: WorkerId, message: EngineToWorker): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.port) {
      this.deliver(slot, message);
    } else {
      slot.life.queue(message);
      slot.pending.push(message);
    }
  }

  /** The lifecycle state of a slot, or null for one this pool never started. */
  state(id: WorkerId): SlotState | null {
    return this.slots.get(id)?.life.state ?? null;
  }

  private deliver(slot: Slot, message: EngineToWorker): void {
    // A task on a busy slot is a bug of the caller: the lifecycle throws.
    slot.life.deliver(message);
    slot.port?.send(message);
  }

  /** Ends a worker's stream for a protocol violation (it is then gone, and killed). */
  abort(id: WorkerId, message: string): void {
    const slot = this.slots.get(id);
    if (!slot) return;
    slot.port?.abort(message);
    this.kill(id);
  }

  /** Asks a worker to exit (after its current task), then kills it if it lingers `grace` seconds. */
  stop(id: WorkerId, reason: string, grace = 5): void {
    const slot = this.slots.get(id);
    if (!slot || slot.gone) return;
    if (slot.life.state === SlotState.starting) slot.life.to(SlotState.draining);
    this.send(id, { kind: 'shutdown', reason });
    setTimeout(() => {
      this.kill(id);
    }, grace * 1000).unref();
  }

  /** Kills a worker's process; the slot drains until the exit is seen, then it is gone. */
  kill(id: WorkerId): void {
    const slot = this.slots.get(id);
    if (!slot) return;
    if (!slot.gone && slot.life.state !== SlotState.draining) slot.life.to(SlotState.draining);
    if (slot.child.exitCode === null && slot.child.signalCode === null) slot.child.kill('SIGKILL');
  }

  /** The process id of a worker (for tests that kill it). */
  pid(id: WorkerId): number | undefined {
    return this.slots.get(id)?.child.pid;
  }

  /** Process ids of every worker started, alive or not (for tests that look for leftovers). */
  pids(): number[] {
    return [...this.slots.values()].flatMap((s) =>
      s.child.pid === undefined ? [] : [s.child.pid],
    );
  }

  /**
   * Stops every worker, kills any still alive after `grace`
   * seconds, and waits until every process has exited and all its output is passed on.
   */
  async shutdown(reason: string, grace = 5): Promise<void> {
    const waits = [...this.slots.values()].map(
      (slot) =>
        new Promise<void>((resolve) => {
          const done = (): void => {
            void slot.drained.then(resolve);
          };
          if (slot.child.exitCode !== null || slot.child.signalCode !== null) {
            done();
            return;
          }
          slot.child.once('exit', done);
          this.stop(slot.id, reason, grace);
        }),
    );
    await Promise.all(waits);
  }

  private gone(slot: Slot, reason: string): void {
    if (slot.gone) return;
    slot.gone = true;
    slot.life.to(SlotState.gone);
    const info: GoneInfo = { registered: slot.port !== null, output: [...slot.tail] };
    for (const l of this.goneListeners) l(slot.id, reason, info);
  }
}
