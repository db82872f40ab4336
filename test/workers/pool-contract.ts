import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TaskId, WireTask, WorkerId } from '../../src/engine/index.js';
import { PHASES } from '../../src/agent/runtime.js';
import { StagetreeError } from '../../src/errors.js';
import { gpuAt, gpuList, UnknownGpuError } from '../../src/workers/index.js';
import type { GoneInfo, Inventory, WorkerMessage, WorkerPool } from '../../src/workers/index.js';
import { IllegalTransitionError } from '../../src/workers/slot.js';
import type { SlotState } from '../../src/workers/slot.js';

/**
 * The WorkerPool contract: what every backend (sim, process, later docker and cluster
 * managers) must do, checked through the port alone, event by event. A backend gives a
 * fresh pool per test plus the faults the contract needs to provoke; everything else is
 * the same test for every backend.
 */
export interface PoolUnderTest {
  readonly pool: WorkerPool;
  /** The inventory the pool must report. */
  readonly inventory: Inventory;
  /** The metric a result reports (by name). */
  readonly metric: string;
  /**
   * A grace for `stop` and `shutdown`, in the pool's seconds: long enough for a worker
   * to finish a short task and exit, short enough for a test.
   */
  readonly grace: number;
  /** The real milliseconds `grace` lasts (the safety net waits this plus a margin). */
  readonly graceMs: number;
  /** A task: `short` answers soon after it starts; `long` runs until cancelled or killed. */
  task(kind: 'short' | 'long'): WireTask;
  /** Before its start: worker `id` fails to start (it exits before registering). */
  failStart(id: WorkerId): void;
  /** A line the output of a worker that failed to start holds. */
  readonly failOutput: RegExp;
  /**
   * Before its start: worker `id` sends each task's progress at once and its result
   * later, whatever it is told in between (a cancel after the progress races the result).
   */
  delayResults(id: WorkerId): void;
  /** Worker `id`, registered, goes silent: no heartbeat, no answer, no exit on shutdown. */
  silence(id: WorkerId): void;
  /** Ends whatever the test left (the pool may have been shut down already). */
  close(): Promise<void>;
}

type Event =
  | { readonly kind: 'registered'; readonly worker: WorkerId; readonly state: SlotState | null }
  | {
      readonly kind: 'message';
      readonly worker: WorkerId;
      readonly m: WorkerMessage;
      readonly state: SlotState | null;
    }
  | {
      readonly kind: 'gone';
      readonly worker: WorkerId;
      readonly reason: string;
      readonly info: GoneInfo;
      readonly state: SlotState | null;
    };

/** Every event of a pool, in order, with the slot's state when the listener heard it. */
function record(pool: WorkerPool): { events: Event[]; off: () => void } {
  const events: Event[] = [];
  const offs = [
    pool.onRegistered((worker) => {
      events.push({ kind: 'registered', worker, state: pool.state(worker) });
    }),
    pool.onMessage((worker, m) => {
      events.push({ kind: 'message', worker, m, state: pool.state(worker) });
    }),
    pool.onGone((worker, reason, info) => {
      events.push({ kind: 'gone', worker, reason, info, state: pool.state(worker) });
    }),
  ];
  return {
    events,
    off: () => {
      for (const o of offs) o();
    },
  };
}

/** Waits until `cond` holds; the deadline is a safety net, not an assertion on time. */
async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An event's short form, for exact sequences: `registered`, `progress 2`, `done 7`, `gone`. */
function brief(e: Event): string {
  if (e.kind !== 'message') return e.kind;
  switch (e.m.kind) {
    case 'heartbeat':
      return 'heartbeat';
    case 'progress':
      return `progress ${e.m.step}`;
    case 'cutAt':
      return `cutAt ${e.m.step}`;
    case 'done':
    case 'failed':
      return `${e.m.kind} ${e.m.taskId}`;
  }
}

/**
 * Worker `w`'s events, heartbeats left out, and of consecutive progress reports only the
 * last (a worker reports after every chunk it trains; how many chunks is its own choice).
 */
const of = (events: readonly Event[], w: WorkerId): string[] =>
  events
    .filter((e) => e.worker === w && brief(e) !== 'heartbeat')
    .map(brief)
    .filter((b, i, all) => !(b.startsWith('progress ') && all[i + 1]?.startsWith('progress ')));

const heartbeats = (events: readonly Event[], w: WorkerId): number =>
  events.filter((e) => e.worker === w && brief(e) === 'heartbeat').length;

const results = (events: readonly Event[], task: TaskId): Event[] =>
  events.filter(
    (e) =>
      e.kind === 'message' && (e.m.kind === 'done' || e.m.kind === 'failed') && e.m.taskId === task,
  );

const lastStep = (t: WireTask): number => t.runs[t.runs.length - 1]?.end ?? 0;

export function describePoolContract(name: string, factory: () => Promise<PoolUnderTest>): void {
  describe(`WorkerPool contract: ${name}`, () => {
    let h: PoolUnderTest;
    let pool: WorkerPool;
    let events: Event[];
    /** The GPU index workers start on: the last one of the inventory (0 when there is none). */
    let gpu: number;

    beforeEach(async () => {
      h = await factory();
      pool = h.pool;
      events = record(pool).events;
      gpu = Math.max(0, gpuList(pool.inventory()).length - 1);
    });

    afterEach(async () => {
      await h.close();
    });

    const registered = (...ids: WorkerId[]): Promise<void> =>
      until(`${ids.join(', ')} to register`, () => ids.every((id) => pool.registered(id)));
    const gone = (...ids: WorkerId[]): Promise<void> =>
      until(`${ids.join(', ')} to be gone`, () => ids.every((id) => pool.state(id) === 'gone'));

    it('reports its inventory: hosts in order, every GPU on its host, indices into gpuList', () => {
      const inv = pool.inventory();
      expect(inv).toEqual(h.inventory);
      const list = gpuList(inv);
      let checked = 0;
      for (const host of inv.hosts) {
        const devices = host.gpus.map((g) => g.device);
        expect(new Set(devices).size).toBe(devices.length);
        for (const g of host.gpus) {
          expect(g.host).toBe(host.name);
          expect(Number.isInteger(g.device) && g.device >= 0).toBe(true);
          expect(g.memoryBytes === null || g.memoryBytes > 0).toBe(true);
          expect(gpuAt(inv, list.indexOf(g))).toBe(g);
          checked++;
        }
      }
      expect(checked).toBe(list.length);
      expect(new Set(inv.hosts.map((x) => x.name)).size).toBe(inv.hosts.length);
      if (list.length > 0) {
        // An index outside the inventory is the engine and the pool disagreeing.
        expect(() => {
          pool.start('w1', list.length, 1);
        }).toThrow(UnknownGpuError);
        expect(pool.state('w1')).toBeNull();
      } else {
        // CPU only: an index is a worker slot and names no device.
        expect(gpuAt(inv, 7)).toBeNull();
      }
      expect(events).toEqual([]);
    });

    it('reports a slot that fails to start as gone, never registered, with its output', async () => {
      h.failStart('w1');
      pool.start('w1', gpu, 1);
      expect(pool.state('w1')).toBe('starting');
      expect(pool.registered('w1')).toBe(false);
      await gone('w1');
      expect(events.map(brief)).toEqual(['gone']);
      const e = events[0];
      if (e?.kind !== 'gone') throw new Error('expected a gone event');
      expect(e.info.registered).toBe(false);
      expect(e.reason).toMatch(/^its process exited with code [1-9]\d*$/);
      expect(e.info.output.some((line) => h.failOutput.test(line))).toBe(true);
      expect(e.state).toBe('gone');
      expect(pool.registered('w1')).toBe(false);
      // A gone slot takes nothing and says nothing more.
      pool.send('w1', { kind: 'run', task: h.task('short') });
      await sleep(100);
      expect(events.length).toBe(1);
    });

    it('starts a slot: starting, then registered and idle', async () => {
      expect(pool.state('w1')).toBeNull();
      pool.start('w1', gpu, 1);
      expect(pool.state('w1')).toBe('starting');
      expect(pool.registered('w1')).toBe(false);
      expect(() => {
        pool.start('w1', gpu, 1);
      }).toThrow(StagetreeError);
      await registered('w1');
      expect(of(events, 'w1')).toEqual(['registered']);
      expect(events[0]).toEqual({ kind: 'registered', worker: 'w1', state: 'idle' });
      expect(pool.state('w1')).toBe('idle');
    });

    it('runs a task: busy until its result, then idle; a second task to a busy slot throws', async () => {
      pool.start('w1', gpu, 1);
      // Sent while starting: it waits for the registration, and the slot stays starting.
      const t1 = h.task('short');
      pool.send('w1', { kind: 'run', task: t1 });
      expect(pool.state('w1')).toBe('starting');
      expect(() => {
        pool.send('w1', { kind: 'run', task: h.task('short') });
      }).toThrow(IllegalTransitionError);
      await until('the first result', () => results(events, t1.taskId).length > 0);
      expect(of(events, 'w1')).toEqual([
        'registered',
        `progress ${lastStep(t1)}`,
        `done ${t1.taskId}`,
      ]);
      const done = results(events, t1.taskId)[0];
      if (done?.kind !== 'message' || done.m.kind !== 'done') throw new Error('expected done');
      expect(done.state).toBe('idle');
      expect(Number.isFinite(done.m.metrics[h.metric])).toBe(true);
      expect(Object.keys(done.m.seconds).sort()).toEqual([...PHASES].sort());
      let phases = 0;
      for (const s of Object.values(done.m.seconds)) {
        expect(s).toBeGreaterThanOrEqual(0);
        phases++;
      }
      expect(phases).toBe(PHASES.length);
      // Registered now: a task makes the slot busy at once, a second one throws.
      const t2 = h.task('short');
      pool.send('w1', { kind: 'run', task: t2 });
      expect(pool.state('w1')).toBe('busy');
      expect(() => {
        pool.send('w1', { kind: 'run', task: h.task('short') });
      }).toThrow(IllegalTransitionError);
      expect(pool.state('w1')).toBe('busy');
      await until('the second result', () => results(events, t2.taskId).length > 0);
      expect(results(events, t2.taskId).map((e) => [brief(e), e.state])).toEqual([
        [`done ${t2.taskId}`, 'idle'],
      ]);
      expect(pool.state('w1')).toBe('idle');
    });

    it('kills a slot mid-task: draining, then gone, and never a result', async () => {
      pool.start('w1', gpu, 1);
      const t = h.task('long');
      pool.send('w1', { kind: 'run', task: t });
      await until('a heartbeat naming the task', () =>
        events.some(
          (e) =>
            e.worker === 'w1' &&
            e.kind === 'message' &&
            e.m.kind === 'heartbeat' &&
            e.m.taskId === t.taskId,
        ),
      );
      expect(pool.state('w1')).toBe('busy');
      const before = events.length;
      pool.kill('w1');
      // Nothing is heard from inside the call; the slot drains until the end is seen.
      expect(events.length).toBe(before);
      expect(pool.state('w1')).toBe('draining');
      await gone('w1');
      const g = events.find((e) => e.kind === 'gone');
      if (g?.kind !== 'gone') throw new Error('expected a gone event');
      expect(g.reason).toMatch(/killed \(SIGKILL\)|stream ended/);
      expect(g.info.registered).toBe(true);
      expect(g.state).toBe('gone');
      expect(pool.registered('w1')).toBe(false);
      // A message to a gone slot is dropped; nothing more is heard from it.
      pool.send('w1', { kind: 'cancel', taskId: t.taskId });
      pool.kill('w1');
      await sleep(200);
      expect(results(events, t.taskId)).toEqual([]);
      expect(events[events.length - 1]).toBe(g);
      // (Progress of the chunks it trained before the kill may come; no result.)
      expect(of(events, 'w1').filter((b) => !b.startsWith('progress '))).toEqual([
        'registered',
        'gone',
      ]);
    });

    it('frees a slot on cancel: a cancelled task answers once or never, the next task always', async () => {
      pool.start('w1', gpu, 1);
      await registered('w1');
      const cancelled: TaskId[] = [];
      let checked = 0;
      for (let i = 0; i < 4; i++) {
        const t = h.task('short');
        pool.send('w1', { kind: 'run', task: t });
        // Later rounds let the task get further before the cancel.
        if (i > 1) await sleep(i);
        pool.send('w1', { kind: 'cancel', taskId: t.taskId });
        cancelled.push(t.taskId);
        expect(pool.state('w1')).toBe('idle');
        const next = h.task('short');
        pool.send('w1', { kind: 'run', task: next });
        expect(pool.state('w1')).toBe('busy');
        await until('the next result', () => results(events, next.taskId).length > 0);
        expect(results(events, next.taskId).map(brief)).toEqual([`done ${next.taskId}`]);
        checked++;
      }
      expect(checked).toBe(4);
      await sleep(100);
      for (const id of cancelled) expect(results(events, id).length).toBeLessThanOrEqual(1);
      expect(pool.state('w1')).toBe('idle');
    });

    it('lets a result that races a cancel through, without freeing the slot that runs the next task', async () => {
      h.delayResults('w1');
      pool.start('w1', gpu, 1);
      await registered('w1');
      const t1 = h.task('short');
      pool.send('w1', { kind: 'run', task: t1 });
      await until('the progress of the first task', () =>
        of(events, 'w1').includes(`progress ${lastStep(t1)}`),
      );
      // Its result is on the wire: the cancel comes too late to stop it.
      pool.send('w1', { kind: 'cancel', taskId: t1.taskId });
      expect(pool.state('w1')).toBe('idle');
      const t2 = h.task('short');
      pool.send('w1', { kind: 'run', task: t2 });
      expect(pool.state('w1')).toBe('busy');
      await until('the second result', () => results(events, t2.taskId).length > 0);
      await sleep(100);
      // Exactly one result each; the late one found the slot busy with the next task.
      expect(
        events
          .filter((e) => e.kind === 'message' && (e.m.kind === 'done' || e.m.kind === 'failed'))
          .map((e) => [brief(e), e.state]),
      ).toEqual([
        [`done ${t1.taskId}`, 'busy'],
        [`done ${t2.taskId}`, 'idle'],
      ]);
      expect(pool.state('w1')).toBe('idle');
    });

    it('heart-beats for live workers and not for a silent one, which it does not declare dead', async () => {
      pool.start('w1', gpu, 1);
      pool.start('w2', gpu, 1);
      await until('three heartbeats from each', () =>
        ['w1', 'w2'].every((w) => heartbeats(events, w) >= 3),
      );
      let checked = 0;
      for (const e of events) {
        if (brief(e) !== 'heartbeat') continue;
        if (e.kind !== 'message' || e.m.kind !== 'heartbeat') throw new Error('expected heartbeat');
        expect(e.m.taskId).toBeNull(); // idle workers run nothing
        checked++;
      }
      expect(checked).toBe(heartbeats(events, 'w1') + heartbeats(events, 'w2'));
      h.silence('w1');
      // Let a heartbeat already on its way arrive, using the live worker as the clock.
      const settle = heartbeats(events, 'w2') + 2;
      await until('two more heartbeats from w2', () => heartbeats(events, 'w2') >= settle);
      const silentCount = heartbeats(events, 'w1');
      const t = h.task('short');
      pool.send('w1', { kind: 'run', task: t });
      const later = heartbeats(events, 'w2') + 5;
      await until('five more heartbeats from w2', () => heartbeats(events, 'w2') >= later);
      expect(heartbeats(events, 'w1')).toBe(silentCount);
      expect(results(events, t.taskId)).toEqual([]);
      // The pool does not declare it dead: whoever watches heartbeats does (the runner).
      expect(pool.state('w1')).toBe('busy');
      expect(pool.registered('w1')).toBe(true);
      expect(events.some((e) => e.kind === 'gone')).toBe(false);
      pool.kill('w1');
      await gone('w1');
      expect(pool.state('w2')).toBe('idle');
    });

    it('stops a busy slot: draining, its task answers, then it is gone', async () => {
      pool.start('w1', gpu, 1);
      await registered('w1');
      const t = h.task('short');
      pool.send('w1', { kind: 'run', task: t });
      pool.stop('w1', 'no more work', h.grace);
      expect(pool.state('w1')).toBe('draining');
      await gone('w1');
      const seen = of(events, 'w1');
      // Its last messages leave before it does (a worker exits once its stream has ended).
      expect(seen).toEqual(['registered', `progress ${lastStep(t)}`, `done ${t.taskId}`, 'gone']);
      const g = events.find((e) => e.kind === 'gone');
      if (g?.kind !== 'gone') throw new Error('expected a gone event');
      expect(g.reason).toMatch(/exited with code 0|stream ended/);
      expect(g.info.registered).toBe(true);
    });

    it('ends a stream for a protocol violation: gone, saying why', async () => {
      pool.start('w1', gpu, 1);
      await registered('w1');
      const before = events.length;
      pool.abort('w1', 'done for task 99, which is not running on this worker');
      expect(events.length).toBe(before);
      expect(pool.state('w1')).toBe('draining');
      await gone('w1');
      const g = events.find((e) => e.kind === 'gone');
      if (g?.kind !== 'gone') throw new Error('expected a gone event');
      expect(g.reason).toBe(
        'its stream ended (done for task 99, which is not running on this worker)',
      );
      expect(g.info.registered).toBe(true);
    });

    it('shuts down with tasks running: every slot gone within the grace, nothing heard after', async () => {
      pool.start('w1', gpu, 1);
      pool.start('w2', gpu, 1);
      pool.start('w3', gpu, 1);
      await registered('w1', 'w2', 'w3');
      pool.send('w1', { kind: 'run', task: h.task('long') });
      pool.send('w2', { kind: 'run', task: h.task('short') });
      h.silence('w3');
      pool.start('w4', gpu, 1); // still starting when the shutdown comes
      let timer: ReturnType<typeof setTimeout> | undefined;
      const net = new Promise<'late'>((resolve) => {
        timer = setTimeout(() => {
          resolve('late');
        }, h.graceMs + 10_000);
      });
      const outcome = await Promise.race([
        pool.shutdown('the test is over', h.grace).then(() => 'done' as const),
        net,
      ]);
      clearTimeout(timer);
      expect(outcome).toBe('done');
      let checked = 0;
      for (const w of ['w1', 'w2', 'w3', 'w4']) {
        expect(pool.state(w)).toBe('gone');
        expect(pool.registered(w)).toBe(false);
        expect(events.filter((e) => e.worker === w && e.kind === 'gone').length).toBe(1);
        checked++;
      }
      expect(checked).toBe(4);
      const after = events.length;
      await sleep(300);
      expect(events.length).toBe(after);
      // Shutting down again finds nothing to wait for.
      await pool.shutdown('again', h.grace);
      expect(events.length).toBe(after);
    });

    it('hears nothing more on a listener that unsubscribed; the others go on', async () => {
      const heard = { registered: 0, message: 0, gone: 0 };
      const offs = [
        pool.onRegistered(() => heard.registered++),
        pool.onMessage(() => heard.message++),
        pool.onGone(() => heard.gone++),
      ];
      for (const off of offs) {
        off();
        off(); // twice is harmless
      }
      pool.start('w1', gpu, 1);
      const t = h.task('short');
      pool.send('w1', { kind: 'run', task: t });
      await until('the result', () => results(events, t.taskId).length > 0);
      pool.kill('w1');
      await gone('w1');
      expect(of(events, 'w1')).toEqual([
        'registered',
        `progress ${lastStep(t)}`,
        `done ${t.taskId}`,
        'gone',
      ]);
      expect(heard).toEqual({ registered: 0, message: 0, gone: 0 });
    });
  });
}
