export { CHUNK_SECONDS, CHUNK_SECONDS_ENV, chunkSteps, PHASES, WorkerAgent } from './runtime.js';
export type { AgentOptions, CheckpointIO } from './runtime.js';
