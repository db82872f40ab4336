import type { EngineToWorker, TaskId } from '../engine/index.js';
import { ErrorCode, StagetreeError } from '../errors.js';

/**
 * A worker slot's lifecycle, the same in every pool backend:
 *
 *   starting --registered--> idle --task sent--> busy --result or cancel--> idle
 *   any live state --stop asked--> draining; any state --process/stream gone--> gone
 *
 * A task sent to a starting slot waits until it registers (then idle, then busy).
 * Messages move a slot as they reach its worker (`deliver`): a run makes an idle slot
 * busy (a run to a busy slot is a caller bug), a cancel of the task it runs makes it idle
 * at once (the worker drops that task's result, or it was on the wire already and the
 * caller drops it), a shutdown makes it draining. A result makes a busy slot idle only
 * when it is for the task the slot runs: a late result of a cancelled task does not free
 * the slot that already runs the next one.
 *
 * `gone` is final. A transition the table does not list is a bug in the pool or its
 * caller and throws `IllegalTransitionError`.
 */
export const SlotState = {
  starting: 'starting',
  idle: 'idle',
  busy: 'busy',
  draining: 'draining',
  gone: 'gone',
} as const;
export type SlotState = (typeof SlotState)[keyof typeof SlotState];

const NEXT: Readonly<Record<SlotState, readonly SlotState[]>> = {
  starting: ['idle', 'draining', 'gone'],
  idle: ['busy', 'draining', 'gone'],
  busy: ['idle', 'draining', 'gone'],
  draining: ['gone'],
  gone: [],
};

/** A slot asked to move where its lifecycle does not allow (a bug, never user input). */
export class IllegalTransitionError extends StagetreeError {
  readonly slot: string;
  readonly from: SlotState;
  readonly to: SlotState;

  constructor(slot: string, from: SlotState, to: SlotState) {
    super(
      ErrorCode.internal,
      `internal: worker slot ${slot} cannot go from ${from} to ${to} (allowed: ${NEXT[from].join(', ') || 'none'})`,
    );
    this.slot = slot;
    this.from = from;
    this.to = to;
  }
}

/** The lifecycle of one slot, and the task it runs. */
export class SlotLifecycle {
  private current: SlotState = SlotState.starting;
  private running: TaskId | null = null;
  /** A task waiting for the slot to register (not cancelled since). */
  private waiting: TaskId | null = null;

  constructor(readonly slot: string) {}

  get state(): SlotState {
    return this.current;
  }

  /** Moves to `next`; throws `IllegalTransitionError` where the lifecycle does not allow it. */
  to(next: SlotState): void {
    if (!NEXT[this.current].includes(next))
      throw new IllegalTransitionError(this.slot, this.current, next);
    this.current = next;
    if (next !== SlotState.busy) this.running = null;
  }

  /** The task the slot runs (busy), else null. */
  get task(): TaskId | null {
    return this.running;
  }

  /**
   * A message waits for the slot to register (it is starting). A second task while one
   * waits is the same caller bug as a task to a busy slot, and throws now rather than
   * when the worker registers.
   */
  queue(message: EngineToWorker): void {
    if (message.kind === 'run') {
      if (this.waiting !== null)
        throw new IllegalTransitionError(this.slot, SlotState.busy, SlotState.busy);
      this.waiting = message.task.taskId;
    } else if (message.kind === 'cancel' && message.taskId === this.waiting) {
      this.waiting = null;
    }
  }

  /**
   * A message reaches the worker: moves the slot as the lifecycle says (see above). In
   * starting, draining and gone a message moves nothing.
   */
  deliver(message: EngineToWorker): void {
    const state = this.current;
    if (state !== SlotState.idle && state !== SlotState.busy) return;
    switch (message.kind) {
      case 'run':
        this.to(SlotState.busy);
        this.running = message.task.taskId;
        this.waiting = null;
        return;
      case 'cancel':
        if (state === SlotState.busy && message.taskId === this.running) this.to(SlotState.idle);
        return;
      case 'shutdown':
        this.to(SlotState.draining);
        return;
      case 'welcome':
      case 'cut': // the task goes on until the worker answers (done, or cutAt then done)
      case 'saveCut':
        return;
    }
  }

  /** The worker answered `task` (done or failed): a busy slot running it is idle again. */
  answered(task: TaskId): void {
    if (this.current === SlotState.busy && this.running === task) this.to(SlotState.idle);
  }
}
