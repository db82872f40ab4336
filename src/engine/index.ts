export { Engine, LINEAGE_PARAM } from './engine.js';
export type { Commands, EngineOptions, EngineStats, SubmitOptions } from './engine.js';
export * from './types.js';
export { accountLog, entryStudy, feedLog, replay } from './replay.js';
export type { LogAccount } from './replay.js';
export * from './protocol.js';
