export { Execution, runWithPool } from './runner.js';
export type { ExecutionOptions, RunOptions, RunResult, RunStop } from './runner.js';
export { detectGpus, parseGpuQuery, ProcessPool } from './process/pool.js';
export type { GpuDevice, ProcessPoolOptions, WorkerCommand } from './process/pool.js';
export { fitsInventory, gpuAt, gpuList, subscribe, UnknownGpuError } from './pool.js';
export type { GoneInfo, Gpu, Inventory, Unsubscribe, WorkerMessage, WorkerPool } from './pool.js';
export { IllegalTransitionError, SlotLifecycle, SlotState } from './slot.js';
