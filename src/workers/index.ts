export { runWithPool } from './runner.js';
export type { RunOptions, RunResult } from './runner.js';
export { ProcessPool } from './process/pool.js';
export type { ProcessPoolOptions, WorkerCommand } from './process/pool.js';
