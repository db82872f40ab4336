export { runWithPool } from './runner.js';
export type { RunOptions, RunResult, RunStop } from './runner.js';
export { ProcessPool } from './process/pool.js';
export type { GoneInfo, ProcessPoolOptions, WorkerCommand } from './process/pool.js';
