export { PHASES, WorkerAgent } from './runtime.js';
export type { AgentOptions, CheckpointIO } from './runtime.js';
