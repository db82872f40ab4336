import { createHash, randomBytes } from 'node:crypto';
import type { Hash } from 'node:crypto';
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
import type { Dirent } from 'node:fs';
import { join, resolve } from 'node:path';
import type { CheckpointKey } from '../engine/types.js';
import { ErrorCode, NotFoundError, StagetreeError, ValidationError } from '../errors.js';
import { isErrno, toIoError } from './fs-errors.js';

/**
 * Checkpoints on local disk, one file per checkpoint key. The format is shared with the
 * Python worker runtime (docs/store.md is its specification):
 *
 *   <dir>/<key>.ckpt = "STCKPT02" (8 bytes ASCII) + digest (32 bytes)
 *                      + the payload (the trainer's saved state, opaque here)
 *   digest = SHA-256("stagetree checkpoint\0" + key (ASCII) + "\0" + payload)
 *
 * The digest binds the content to its key: another key's valid file under this key's name
 * (files swapped or copied between a kill and a resume) is as corrupt as a damaged one, so
 * the engine recomputes the state rather than continue from the wrong one.
 *
 * Files are written atomically: to `<dir>/.tmp-<key>-<pid>-<random>`, fsynced, renamed
 * over the final name, then the folder is fsynced. A reader thus sees a whole file or
 * none; a crash may leave a `.tmp-` file, which `collect` removes.
 */

/** The 8 bytes every checkpoint file starts with (format version 2). */
export const CHECKPOINT_MAGIC = 'STCKPT02';
/** The magic of format 1 (a digest of the payload alone): read as corrupt, "old format". */
export const OLD_CHECKPOINT_MAGIC = 'STCKPT01';
/** What the digest hashes before the key (then a NUL byte and the payload). */
export const CHECKPOINT_DIGEST_PREFIX = 'stagetree checkpoint\0';
/** Bytes before the payload: magic + digest. */
export const CHECKPOINT_HEADER_BYTES = 8 + 32;
/** File name suffix of a checkpoint. */
export const CHECKPOINT_SUFFIX = '.ckpt';
/** File name prefix of a file being written. */
export const TEMP_PREFIX = '.tmp-';

/** A checkpoint key: `K` then 1 to 127 base64url characters (what `stateKey` makes). */
export const CHECKPOINT_KEY_PATTERN = /^K[A-Za-z0-9_-]{1,127}$/;

const MAGIC = Buffer.from(CHECKPOINT_MAGIC, 'ascii');
const OLD_MAGIC = Buffer.from(OLD_CHECKPOINT_MAGIC, 'ascii');

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

/**
 * A hash that has taken in the digest prefix and `key`: update it with the payload, then
 * `digest()` is the checkpoint's digest.
 */
function keyedHash(key: string): Hash {
  return createHash('sha256').update(CHECKPOINT_DIGEST_PREFIX + key + '\0', 'ascii');
}

/** The 32-byte digest of checkpoint `key` holding `payload` (bytes 8 to 40 of its file). */
export function checkpointDigest(key: CheckpointKey, payload: Uint8Array): Buffer {
  checkCheckpointKey(key);
  return keyedHash(key).update(payload).digest();
}

/** The bytes of the file of checkpoint `key` holding `payload`. */
export function encodeCheckpoint(key: CheckpointKey, payload: Uint8Array): Buffer {
  return Buffer.concat([MAGIC, checkpointDigest(key, payload), payload]);
}

/**
 * The payload of checkpoint `key` from its file's bytes; `CorruptCheckpointError` (naming
 * `file`) when it is too short, has the wrong (or the old format's) magic, or its digest is
 * not that of `key` with this payload: damaged, or another key's file.
 */
export function decodeCheckpoint(bytes: Buffer, file: string, key: CheckpointKey): Buffer {
  checkCheckpointKey(key);
  checkHeader(bytes, bytes.length, file);
  const payload = bytes.subarray(CHECKPOINT_HEADER_BYTES);
  checkDigest(
    bytes.subarray(8, CHECKPOINT_HEADER_BYTES),
    keyedHash(key).update(payload).digest(),
    file,
    key,
  );
  return payload;
}

function checkHeader(header: Buffer, size: number, file: string): void {
  if (size >= OLD_MAGIC.length && header.subarray(0, OLD_MAGIC.length).equals(OLD_MAGIC)) {
    throw new CorruptCheckpointError(
      file,
      `old checkpoint format ${OLD_CHECKPOINT_MAGIC} (this stagetree reads ${CHECKPOINT_MAGIC}, ` +
        `whose digest binds the content to its key): it will be re-computed`,
    );
  }
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

function checkDigest(stored: Buffer, actual: Buffer, file: string, key: string): void {
  if (!stored.equals(actual)) {
    throw new CorruptCheckpointError(
      file,
      `checksum mismatch: the header says SHA-256 ${stored.toString('hex')}, ` +
        `the payload under key ${key} hashes to ${actual.toString('hex')} ` +
        `(the file is damaged, or its content does not belong to this key)`,
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

  /**
   * A store in `dir`, created (with its parents) if missing. An `IoError` naming `dir`
   * when it cannot be (a file in the way, no permission, a name too long).
   */
  constructor(dir: string) {
    this.dir = resolve(dir);
    try {
      mkdirSync(this.dir, { recursive: true });
    } catch (e) {
      throw toIoError(e, this.dir, 'cannot create the checkpoint folder');
    }
  }

  /** The file of a key's checkpoint (whether it exists or not). */
  fileOf(key: CheckpointKey): string {
    checkCheckpointKey(key);
    return join(this.dir, key + CHECKPOINT_SUFFIX);
  }

  /**
   * Checks, before a run, that checkpoints can be written here: creates the folder if
   * missing, then creates, writes and deletes a probe file (`.tmp-probe-...`, which
   * `collect` removes should a crash leave it). An `IoError` naming the folder and the
   * cause otherwise: a file in the way, EACCES, EROFS, ENOSPC, ENAMETOOLONG, ...
   */
  checkWritable(): void {
    let action = 'cannot create the checkpoint folder';
    const probe = join(
      this.dir,
      `${TEMP_PREFIX}probe-${process.pid}-${randomBytes(6).toString('hex')}`,
    );
    try {
      mkdirSync(this.dir, { recursive: true });
      action = 'cannot write a file into the checkpoint folder';
      writeProbe(probe);
      action = 'cannot delete a file in the checkpoint folder';
      unlinkSync(probe);
    } catch (e) {
      removeIfThere(probe);
      throw toIoError(e, this.dir, action);
    }
  }

  /**
   * Writes a checkpoint atomically and durably, replacing any under the same key. An
   * `IoError` naming the folder when it cannot (not writable, disk full, ...); a failed
   * write leaves no file behind.
   */
  put(key: CheckpointKey, payload: Uint8Array): void {
    const file = this.fileOf(key);
    const tmp = join(
      this.dir,
      `${TEMP_PREFIX}${key}-${process.pid}-${randomBytes(6).toString('hex')}`,
    );
    const bytes = encodeCheckpoint(key, payload);
    try {
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
        removeIfThere(tmp); // the original error matters more
        throw e;
      }
      fsyncDir(this.dir);
    } catch (e) {
      throw toIoError(e, this.dir, `cannot write checkpoint ${key}${CHECKPOINT_SUFFIX}`);
    }
  }

  /**
   * A checkpoint's payload, verified against its key. `NotFoundError` when there is none
   * under `key`, `CorruptCheckpointError` when the file is damaged, of the old format, or
   * another key's; `IoError` when it cannot be read.
   */
  get(key: CheckpointKey): Buffer {
    const file = this.fileOf(key);
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      if (isErrno(e, 'ENOENT')) throw new NotFoundError('checkpoint', key, `no file ${file}`);
      throw toIoError(e, this.dir, `cannot read checkpoint ${key}${CHECKPOINT_SUFFIX}`);
    }
    return decodeCheckpoint(bytes, file, key);
  }

  /**
   * Whether a checkpoint is present and intact (magic, length, digest of key and payload).
   * Reads the file in chunks: memory stays small for large checkpoints. `IoError` when it
   * cannot be read.
   */
  verify(key: CheckpointKey): CheckpointHealth {
    const file = this.fileOf(key);
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return 'missing';
      throw toIoError(e, this.dir, `cannot read checkpoint ${key}${CHECKPOINT_SUFFIX}`);
    }
    try {
      const header = Buffer.alloc(CHECKPOINT_HEADER_BYTES);
      const got = readFully(fd, header);
      checkHeader(header, got, file);
      const hash = keyedHash(key);
      const chunk = Buffer.alloc(1 << 20);
      for (;;) {
        const n = readSync(fd, chunk, 0, chunk.length, null);
        if (n === 0) break;
        hash.update(chunk.subarray(0, n));
      }
      checkDigest(header.subarray(8), hash.digest(), file, key);
      return 'ok';
    } catch (e) {
      if (e instanceof CorruptCheckpointError) return 'corrupt';
      throw toIoError(e, this.dir, `cannot read checkpoint ${key}${CHECKPOINT_SUFFIX}`);
    } finally {
      closeSync(fd);
    }
  }

  /** Whether a file exists under `key` (not verified: see `verify`). */
  has(key: CheckpointKey): boolean {
    try {
      return statSync(this.fileOf(key)).isFile();
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return false;
      throw toIoError(e, this.dir, `cannot look for checkpoint ${key}${CHECKPOINT_SUFFIX}`);
    }
  }

  /**
   * Deletes a checkpoint; returns whether there was one to delete (false: no file). When
   * the file cannot be deleted (a read-only folder: EACCES, EPERM, EROFS, ...) it throws
   * an `IoError` naming the folder and the cause; it never throws a raw errno error.
   */
  delete(key: CheckpointKey): boolean {
    const file = this.fileOf(key);
    try {
      unlinkSync(file);
      return true;
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return false;
      throw toIoError(e, this.dir, `cannot delete checkpoint ${key}${CHECKPOINT_SUFFIX}`);
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
   * deleted. Like `delete`, it throws an `IoError` (naming the folder and the cause) at
   * the first file it cannot delete or folder it cannot list; what it deleted before
   * stays deleted.
   */
  collect(keep: ReadonlySet<string>, options: { readonly temporary?: boolean } = {}): Collected {
    for (const k of keep) checkCheckpointKey(k, 'keep[]');
    const { checkpoints, temporary } = this.entries();
    const keys: CheckpointKey[] = [];
    const temps: string[] = [];
    let bytes = 0;
    for (const c of checkpoints) {
      if (keep.has(c.key)) continue;
      const size = this.sizeOf(c.name);
      if (this.delete(c.key)) {
        keys.push(c.key);
        bytes += size;
      }
    }
    if (options.temporary ?? true) {
      for (const name of temporary) {
        const size = this.sizeOf(name);
        if (this.remove(name)) {
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
    for (const c of this.entries().checkpoints) total += this.sizeOf(c.name);
    return total;
  }

  /** The folder's checkpoint and temporary files (none when the folder is gone). */
  private entries(): {
    checkpoints: { key: CheckpointKey; name: string }[];
    temporary: string[];
  } {
    const checkpoints: { key: CheckpointKey; name: string }[] = [];
    const temporary: string[] = [];
    let listing: Dirent[];
    try {
      listing = readdirSync(this.dir, { withFileTypes: true });
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return { checkpoints, temporary };
      throw toIoError(e, this.dir, 'cannot list the checkpoint folder');
    }
    for (const d of listing) {
      if (!d.isFile()) continue;
      if (d.name.startsWith(TEMP_PREFIX)) temporary.push(d.name);
      else if (d.name.endsWith(CHECKPOINT_SUFFIX)) {
        const key = d.name.slice(0, -CHECKPOINT_SUFFIX.length);
        if (CHECKPOINT_KEY_PATTERN.test(key)) checkpoints.push({ key, name: d.name });
      }
    }
    return { checkpoints, temporary };
  }

  /** The size of a file in the folder; 0 when it is gone. */
  private sizeOf(name: string): number {
    try {
      return statSync(join(this.dir, name)).size;
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return 0;
      throw toIoError(e, this.dir, `cannot read the size of ${name}`);
    }
  }

  /** Deletes a file in the folder; whether it was there. */
  private remove(name: string): boolean {
    try {
      unlinkSync(join(this.dir, name));
      return true;
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return false;
      throw toIoError(e, this.dir, `cannot delete ${name}`);
    }
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

/** Creates `file` exclusively and writes a few bytes into it (what a checkpoint write does). */
function writeProbe(file: string): void {
  const fd = openSync(file, 'wx', 0o644);
  try {
    writeSync(fd, 'stagetree probe\n');
  } finally {
    closeSync(fd);
  }
}

/** Deletes a file if it is there, ignoring every error (cleanup after another failure). */
function removeIfThere(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // the original error matters more
  }
}

/** fsync a folder so a rename in it is durable (a no-op where folders cannot be opened). */
function fsyncDir(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, 'r');
  } catch (e) {
    if (isErrno(e, 'EISDIR') || isErrno(e, 'EPERM') || isErrno(e, 'EACCES')) return;
    throw e;
  }
  try {
    fsyncSync(fd);
  } catch (e) {
    if (!isErrno(e, 'EINVAL') && !isErrno(e, 'EBADF')) throw e;
  } finally {
    closeSync(fd);
  }
}
