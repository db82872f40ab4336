export * from './types.js';
export * from './tree.js';
export { emptyShards, shardGet, shardKeys, shardValues } from './shards.js';
export type { Shards } from './shards.js';
