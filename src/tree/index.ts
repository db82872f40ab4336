export * from './types.js';
export * from './tree.js';
export { shardOf } from './shards.js';
