/**
 * A record split into 256 shards by a hash of the key. Immer copies a record it writes
 * to; with shards a write copies one shard (n / 256 entries) and the 256-entry index,
 * not the whole record, so single operations on a tree of 100,000 stages stay cheap.
 */
export type Shards<T> = Readonly<Record<string, Readonly<Record<string, T>>>>;

/** FNV-1a over the key's UTF-16 code units, reduced to a shard name. */
export function shardOf(key: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return ((h >>> 0) & 0xff).toString(16);
}

export function shardGet<T>(shards: Shards<T>, key: string): T | undefined {
  return shards[shardOf(key)]?.[key];
}

/** Writes into a (draft) sharded record. */
export function shardSet<T>(
  shards: Record<string, Record<string, T>>,
  key: string,
  value: T,
): void {
  const name = shardOf(key);
  const shard = shards[name];
  if (shard) shard[key] = value;
  else shards[name] = { [key]: value };
}

export function shardDelete<T>(shards: Record<string, Record<string, T>>, key: string): void {
  const shard = shards[shardOf(key)];
  // Shards are records keyed by ids; deleting an entry is their whole point.
  // eslint-disable-next-line @typescript-eslint/no-dynamic-delete
  if (shard && key in shard) delete shard[key];
}

export function* shardValues<T>(shards: Shards<T>): Generator<T> {
  for (const name of Object.keys(shards)) {
    const shard = shards[name];
    if (shard) yield* Object.values(shard);
  }
}

export function* shardKeys<T>(shards: Shards<T>): Generator<string> {
  for (const name of Object.keys(shards)) {
    const shard = shards[name];
    if (shard) yield* Object.keys(shard);
  }
}
