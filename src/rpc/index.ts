export { startWorkerHub } from './server.js';
export type { Registration, WorkerConnection, WorkerHub, WorkerHubOptions } from './server.js';
export { dialEngine } from './client.js';
export type { EngineLink } from './client.js';
export * from './convert.js';
