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
export type { EngineApi, StudyEvent, StudyInfo, StudyState, SubmitRequest } from './engine-api.js';
export { MIN_TOKEN_CHARS, startEngineServer } from './engine-server.js';
export type { EngineServer, EngineServerOptions } from './engine-server.js';
export { connectEngine } from './engine-client.js';
export type { EngineClient, EngineClientOptions } from './engine-client.js';
export { ENGINE_LIMITS, isLoopback } from './engine-wire.js';
