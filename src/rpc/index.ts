export { startWorkerHub } from './server.js';
export type {
  Refusal,
  Registration,
  WorkerConnection,
  WorkerHub,
  WorkerHubOptions,
} from './server.js';
export { boundedWire, dialEngine } from './client.js';
export type { EngineLink } from './client.js';
export * from './convert.js';
