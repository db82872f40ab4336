import { ErrorCode, StagetreeError } from '../errors.js';

/**
 * A worker slot's lifecycle, the same in every pool backend:
 *
 *   starting --registered--> idle --task sent--> busy --result or cancel--> idle
 *   any live state --stop asked--> draining; any state --process/stream gone--> gone
 *
 * A task sent to a starting slot waits until it registers (then idle, then busy).
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

/** The lifecycle of one slot. */
export class SlotLifecycle {
  private current: SlotState = SlotState.starting;

  constructor(readonly slot: string) {}

  get state(): SlotState {
    return this.current;
  }

  /** Moves to `next`; throws `IllegalTransitionError` where the lifecycle does not allow it. */
  to(next: SlotState): void {
    if (!NEXT[this.current].includes(next))
      throw new IllegalTransitionError(this.slot, this.current, next);
    this.current = next;
  }
}
