import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import type { CheckpointKey } from '../engine/types.js';
import { ErrorCode, NotFoundError, StagetreeError, ValidationError } from '../errors.js';

/**
 * Checkpoints on local disk, one file per checkpoint key. The format is shared with the
 * Python worker runtime (docs/store.md is its specification):
 *
 *   <dir>/<key>.ckpt = "STCKPT01" (8 bytes ASCII) + SHA-256 of the payload (32 bytes)
 *                      + the payload (the trainer's saved state, opaque here)
 *
 * Files are written atomically: to `<dir>/.tmp-<key>-<pid>-<random>`, fsynced, renamed
 * over the final name, then the folder is fsynced. A reader thus sees a whole file or
 * none; a crash may leave a `.tmp-` file, which `collect` removes.
 */

/** The 8 bytes every checkpoint file starts with. */
export const CHECKPOINT_MAGIC = 'STCKPT01';
/** Bytes before the payload: magic + SHA-256. */
export const CHECKPOINT_HEADER_BYTES = 8 + 32;
/** File name suffix of a checkpoint. */
export const CHECKPOINT_SUFFIX = '.ckpt';
/** File name prefix of a file being written. */
export const TEMP_PREFIX = '.tmp-';

/** A checkpoint key: `K` then 1 to 127 base64url characters (what `stateKey` makes). */
export const CHECKPOINT_KEY_PATTERN = /^K[A-Za-z0-9_-]{1,127}$/;

const MAGIC = Buffer.from(CHECKPOINT_MAGIC, 'ascii');

/** A checkpoint file exists but cannot be trusted: its magic, length or checksum is wrong. */
export class CorruptCheckpointError extends StagetreeError {
  readonly file: string;
  /** What is wrong, e.g. "checksum mismatch (header says ..., payload hashes to ...)". */
  readonly problem: string;

  constructor(file: string, problem: string) {
    super(ErrorCode.corruptCheckpoint, `checkpoint ${file} is corrupt: ${problem}`);
    this.file = file;
    this.problem = problem;
  }
}

/** Throws a `ValidationError` unless `key` is a checkpoint key. */
export function checkCheckpointKey(key: unknown, path = 'key'): asserts key is CheckpointKey {
  if (typeof key !== 'string' || !CHECKPOINT_KEY_PATTERN.test(key)) {
    throw new ValidationError(path, 'a checkpoint key: "K" then 1 to 127 of [A-Za-z0-9_-]', key);
  }
}

/** The bytes of a checkpoint file holding `payload`. */
export function encodeCheckpoint(payload: Uint8Array): Buffer {
  const digest = createHash('sha256').update(payload).digest();
  return Buffer.concat([MAGIC, digest, payload]);
}

/**
 * The payload of a checkpoint file's bytes; `CorruptCheckpointError` (naming `file`) when
 * it is too short, has the wrong magic or its payload does not match the checksum.
 */
export function decodeCheckpoint(bytes: Buffer, file: string): Buffer {
  checkHeader(bytes, bytes.length, file);
  const payload = bytes.subarray(CHECKPOINT_HEADER_BYTES);
  checkDigest(
    bytes.subarray(8, CHECKPOINT_HEADER_BYTES),
    createHash('sha256').update(payload).digest(),
    file,
  );
  return payload;
}

function checkHeader(header: Buffer, size: number, file: string): void {
  if (size < CHECKPOINT_HEADER_BYTES) {
    throw new CorruptCheckpointError(
      file,
      `too short: ${size} bytes, a checkpoint has at least ${CHECKPOINT_HEADER_BYTES} (magic + SHA-256)`,
    );
  }
  if (!header.subarray(0, 8).equals(MAGIC)) {
    throw new CorruptCheckpointError(
      file,
      `bad magic: expected ${JSON.stringify(CHECKPOINT_MAGIC)}, got ${JSON.stringify(header.subarray(0, 8).toString('latin1'))}`,
    );
  }
}

function checkDigest(stored: Buffer, actual: Buffer, file: string): void {
  if (!stored.equals(actual)) {
    throw new CorruptCheckpointError(
      file,
      `checksum mismatch: the header says SHA-256 ${stored.toString('hex')}, ` +
        `the payload hashes to ${actual.toString('hex')}`,
    );
  }
}

export type CheckpointHealth = 'ok' | 'missing' | 'corrupt';

/** What `collect` deleted. */
export interface Collected {
  /** Checkpoint keys deleted, sorted. */
  readonly keys: readonly CheckpointKey[];
  /** Temporary (`.tmp-*`) file names deleted, sorted. */
  readonly temporary: readonly string[];
  /** Bytes freed. */
  readonly bytes: number;
}

export class CheckpointStore {
  /** The folder, as an absolute path. */
  readonly dir: string;

  /** A store in `dir`, created (with its parents) if missing. */
  constructor(dir: string) {
    this.dir = resolve(dir);
    mkdirSync(this.dir, { recursive: true });
  }

  /** The file of a key's checkpoint (whether it exists or not). */
  fileOf(key: CheckpointKey): string {
    checkCheckpointKey(key);
    return join(this.dir, key + CHECKPOINT_SUFFIX);
  }

  /** Writes a checkpoint atomically and durably, replacing any under the same key. */
  put(key: CheckpointKey, payload: Uint8Array): void {
    const file = this.fileOf(key);
    const tmp = join(
      this.dir,
      `${TEMP_PREFIX}${key}-${process.pid}-${randomBytes(6).toString('hex')}`,
    );
    const bytes = encodeCheckpoint(payload);
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      try {
        let off = 0;
        while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, file);
    } catch (e) {
      try {
        unlinkSync(tmp);
      } catch {
        // the original error matters more
      }
      throw e;
    }
    fsyncDir(this.dir);
  }

  /**
   * A checkpoint's payload, verified. `NotFoundError` when there is none under `key`,
   * `CorruptCheckpointError` when the file is damaged.
   */
  get(key: CheckpointKey): Buffer {
    const file = this.fileOf(key);
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      if (isCode(e, 'ENOENT')) throw new NotFoundError('checkpoint', key, `no file ${file}`);
      throw e;
    }
    return decodeCheckpoint(bytes, file);
  }

  /**
   * Whether a checkpoint is present and intact (magic, length, checksum). Reads the file
   * in chunks: memory stays small for large checkpoints.
   */
  verify(key: CheckpointKey): CheckpointHealth {
    const file = this.fileOf(key);
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (e) {
      if (isCode(e, 'ENOENT')) return 'missing';
      throw e;
    }
    try {
      const header = Buffer.alloc(CHECKPOINT_HEADER_BYTES);
      const got = readFully(fd, header);
      checkHeader(header, got, file);
      const hash = createHash('sha256');
      const chunk = Buffer.alloc(1 << 20);
      for (;;) {
        const n = readSync(fd, chunk, 0, chunk.length, null);
        if (n === 0) break;
        hash.update(chunk.subarray(0, n));
      }
      checkDigest(header.subarray(8), hash.digest(), file);
      return 'ok';
    } catch (e) {
      if (e instanceof CorruptCheckpointError) return 'corrupt';
      throw e;
    } finally {
      closeSync(fd);
    }
  }

  /** Whether a file exists under `key` (not verified: see `verify`). */
  has(key: CheckpointKey): boolean {
    try {
      return statSync(this.fileOf(key)).isFile();
    } catch (e) {
      if (isCode(e, 'ENOENT')) return false;
      throw e;
    }
  }

  /** Deletes a checkpoint; returns whether there was one. */
  delete(key: CheckpointKey): boolean {
    try {
      unlinkSync(this.fileOf(key));
      return true;
    } catch (e) {
      if (isCode(e, 'ENOENT')) return false;
      throw e;
    }
  }

  /** The keys with a checkpoint file, sorted. Other files in the folder are ignored. */
  keys(): CheckpointKey[] {
    return this.entries()
      .checkpoints.map((e) => e.key)
      .sort();
  }

  /**
   * Deletes every checkpoint whose key is not in `keep`, and every `.tmp-*` file (a write
   * that a crash interrupted) unless `temporary` is false: pass false while workers may
   * be writing into the folder. Files that are neither are left alone. Returns what it
   * deleted.
   */
  collect(keep: ReadonlySet<string>, options: { readonly temporary?: boolean } = {}): Collected {
    for (const k of keep) checkCheckpointKey(k, 'keep[]');
    const { checkpoints, temporary } = this.entries();
    const keys: CheckpointKey[] = [];
    const temps: string[] = [];
    let bytes = 0;
    for (const c of checkpoints) {
      if (keep.has(c.key)) continue;
      const size = sizeOf(join(this.dir, c.name));
      if (this.delete(c.key)) {
        keys.push(c.key);
        bytes += size;
      }
    }
    if (options.temporary ?? true) {
      for (const name of temporary) {
        const file = join(this.dir, name);
        const size = sizeOf(file);
        if (removeQuietly(file)) {
          temps.push(name);
          bytes += size;
        }
      }
    }
    return { keys: keys.sort(), temporary: temps.sort(), bytes };
  }

  /** Total size in bytes of the checkpoint files (headers included; `.tmp-` files not). */
  bytes(): number {
    let total = 0;
    for (const c of this.entries().checkpoints) total += sizeOf(join(this.dir, c.name));
    return total;
  }

  private entries(): {
    checkpoints: { key: CheckpointKey; name: string }[];
    temporary: string[];
  } {
    const checkpoints: { key: CheckpointKey; name: string }[] = [];
    const temporary: string[] = [];
    for (const d of readdirSync(this.dir, { withFileTypes: true })) {
      if (!d.isFile()) continue;
      if (d.name.startsWith(TEMP_PREFIX)) temporary.push(d.name);
      else if (d.name.endsWith(CHECKPOINT_SUFFIX)) {
        const key = d.name.slice(0, -CHECKPOINT_SUFFIX.length);
        if (CHECKPOINT_KEY_PATTERN.test(key)) checkpoints.push({ key, name: d.name });
      }
    }
    return { checkpoints, temporary };
  }
}

function readFully(fd: number, buf: Buffer): number {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, null);
    if (n === 0) break;
    off += n;
  }
  return off;
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch (e) {
    if (isCode(e, 'ENOENT')) return 0;
    throw e;
  }
}

function removeQuietly(file: string): boolean {
  try {
    unlinkSync(file);
    return true;
  } catch (e) {
    if (isCode(e, 'ENOENT')) return false;
    throw e;
  }
}

/** fsync a folder so a rename in it is durable (a no-op where folders cannot be opened). */
function fsyncDir(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, 'r');
  } catch (e) {
    if (isCode(e, 'EISDIR') || isCode(e, 'EPERM') || isCode(e, 'EACCES')) return;
    throw e;
  }
  try {
    fsyncSync(fd);
  } catch (e) {
    if (!isCode(e, 'EINVAL') && !isCode(e, 'EBADF')) throw e;
  } finally {
    closeSync(fd);
  }
}

function isCode(e: unknown, code: string): boolean {
  return e instanceof Error && (e as NodeJS.ErrnoException).code === code;
}
