export { Execution, runWithPool } from './runner.js';
export type { ExecutionOptions, RunOptions, RunResult, RunStop } from './runner.js';
export { ProcessPool } from './process/pool.js';
export type { ProcessPoolOptions, WorkerCommand } from './process/pool.js';
export { subscribe } from './pool.js';
export type { GoneInfo, Unsubscribe, WorkerMessage, WorkerPool } from './pool.js';
export { IllegalTransitionError, SlotLifecycle, SlotState } from './slot.js';
