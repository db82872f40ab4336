import { createHash, randomBytes } from 'node:crypto';
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCode, NotFoundError, ValidationError } from '../../src/errors.js';
import {
  CheckpointStore,
  CorruptCheckpointError,
  CHECKPOINT_HEADER_BYTES,
} from '../../src/store/index.js';
import { useTempDirs } from './helpers.js';

const tempDir = useTempDirs();
const KEY = 'KRabc_DEF-0123456789xy';

function corruptError(fn: () => unknown): CorruptCheckpointError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CorruptCheckpointError);
    return e as CorruptCheckpointError;
  }
  throw new Error('expected a CorruptCheckpointError');
}

describe('CheckpointStore', () => {
  it('writes the documented format: magic, SHA-256 of the payload, payload', () => {
    const dir = join(tempDir(), 'ckpt'); // created on demand
    const store = new CheckpointStore(dir);
    const payload = Buffer.from('model and optimizer state');
    store.put(KEY, payload);
    const file = join(dir, `${KEY}.ckpt`);
    expect(store.fileOf(KEY)).toBe(file);
    const bytes = readFileSync(file);
    // Built here independently of the store's encoder: what the Python runtime writes.
    const expected = Buffer.concat([
      Buffer.from('STCKPT01', 'ascii'),
      createHash('sha256').update(payload).digest(),
      payload,
    ]);
    expect(bytes.equals(expected)).toBe(true);
    expect(store.get(KEY).equals(payload)).toBe(true);
    expect(readdirSync(dir)).toEqual([`${KEY}.ckpt`]); // no temporary file left behind
  });

  it('reads a file another writer produced, and large and empty payloads', () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir);
    const big = randomBytes(3 * 1024 * 1024 + 17); // more than one verify chunk
    writeFileSync(
      join(dir, 'Kbig.ckpt'),
      Buffer.concat([Buffer.from('STCKPT01'), createHash('sha256').update(big).digest(), big]),
    );
    expect(store.verify('Kbig')).toBe('ok');
    expect(store.get('Kbig').equals(big)).toBe(true);
    store.put('Kempty', new Uint8Array(0));
    expect(store.verify('Kempty')).toBe('ok');
    expect(store.get('Kempty')).toHaveLength(0);
    expect(statSync(store.fileOf('Kempty')).size).toBe(CHECKPOINT_HEADER_BYTES);
  });

  it('replaces a checkpoint under the same key', () => {
    const store = new CheckpointStore(tempDir());
    store.put(KEY, Buffer.from('one'));
    store.put(KEY, Buffer.from('two, longer'));
    expect(store.get(KEY).toString()).toBe('two, longer');
    expect(store.keys()).toEqual([KEY]);
  });

  it('missing: NotFoundError from get, "missing" from verify', () => {
    const store = new CheckpointStore(tempDir());
    expect(() => store.get('Knothing')).toThrow(NotFoundError);
    expect(() => store.get('Knothing')).toThrow(/checkpoint "Knothing" does not exist/);
    expect(store.verify('Knothing')).toBe('missing');
    expect(store.has('Knothing')).toBe(false);
    expect(store.delete('Knothing')).toBe(false);
  });

  describe('detects corruption', () => {
    const setup = () => {
      const store = new CheckpointStore(tempDir());
      store.put(KEY, randomBytes(4096));
      const file = store.fileOf(KEY);
      return { store, file, bytes: readFileSync(file) };
    };

    it('one flipped payload byte', () => {
      const { store, file, bytes } = setup();
      const i = CHECKPOINT_HEADER_BYTES + 1234;
      bytes[i] = (bytes[i] as number) ^ 0x01;
      writeFileSync(file, bytes);
      expect(store.has(KEY)).toBe(true);
      expect(store.verify(KEY)).toBe('corrupt');
      const e = corruptError(() => store.get(KEY));
      expect(e.code).toBe(ErrorCode.corruptCheckpoint);
      expect(e.code).toBe('STAGETREE_CORRUPT_CHECKPOINT');
      expect(e.file).toBe(file);
      expect(e.message).toContain(file);
      expect(e.problem).toMatch(/^checksum mismatch: the header says SHA-256 [0-9a-f]{64}/);
    });

    it('a flipped checksum byte', () => {
      const { store, file, bytes } = setup();
      bytes[20] = (bytes[20] as number) ^ 0x80;
      writeFileSync(file, bytes);
      expect(store.verify(KEY)).toBe('corrupt');
      expect(corruptError(() => store.get(KEY)).problem).toMatch(/checksum mismatch/);
    });

    it('a truncated payload', () => {
      const { store, file } = setup();
      truncateSync(file, CHECKPOINT_HEADER_BYTES + 100);
      expect(store.verify(KEY)).toBe('corrupt');
      expect(corruptError(() => store.get(KEY)).problem).toMatch(/checksum mismatch/);
    });

    it('a file shorter than the header', () => {
      const { store, file } = setup();
      truncateSync(file, 20);
      expect(store.verify(KEY)).toBe('corrupt');
      expect(corruptError(() => store.get(KEY)).problem).toBe(
        'too short: 20 bytes, a checkpoint has at least 40 (magic + SHA-256)',
      );
      truncateSync(file, 0);
      expect(store.verify(KEY)).toBe('corrupt');
    });

    it('the wrong magic', () => {
      const { store, file, bytes } = setup();
      bytes.write('STCKPT02', 0, 'ascii');
      writeFileSync(file, bytes);
      expect(store.verify(KEY)).toBe('corrupt');
      expect(corruptError(() => store.get(KEY)).problem).toBe(
        'bad magic: expected "STCKPT01", got "STCKPT02"',
      );
    });
  });

  it('accepts only checkpoint keys (K + base64url), for every operation', () => {
    const store = new CheckpointStore(tempDir());
    const bad: unknown[] = [
      '',
      'K',
      'abc',
      'kabc',
      'K/../etc',
      'K..',
      'Kab.c',
      'Kab c',
      'Ka+b=',
      'K' + 'a'.repeat(128),
      7,
      null,
    ];
    for (const key of bad) {
      const k = key as string;
      expect(() => store.put(k, Buffer.from('x'))).toThrow(ValidationError);
      expect(() => store.get(k)).toThrow(ValidationError);
      expect(() => store.verify(k)).toThrow(ValidationError);
      expect(() => store.has(k)).toThrow(ValidationError);
      expect(() => store.delete(k)).toThrow(ValidationError);
      expect(() => store.collect(new Set([k]))).toThrow(ValidationError);
    }
    expect(() => store.get('K/x')).toThrow(
      'key: expected a checkpoint key: "K" then 1 to 127 of [A-Za-z0-9_-], got "K/x" (string)',
    );
    store.put('K' + 'a'.repeat(127), Buffer.from('ok'));
    expect(store.keys()).toEqual(['K' + 'a'.repeat(127)]);
  });

  it('a failed write leaves neither a temporary nor a final file', () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir);
    // A folder where the checkpoint file should go makes the rename fail.
    mkdirSync(join(dir, `${KEY}.ckpt`, 'inside'), { recursive: true });
    expect(() => store.put(KEY, Buffer.from('state'))).toThrow();
    expect(readdirSync(dir)).toEqual([`${KEY}.ckpt`]);
    expect(store.keys()).toEqual([]);
  });

  it('collect deletes what is not kept and stale temporary files; keys and bytes', () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir);
    store.put('Ka', Buffer.alloc(10));
    store.put('Kb', Buffer.alloc(20));
    store.put('Kc', Buffer.alloc(30));
    store.put('Kd', Buffer.alloc(40));
    // What a crash mid-write leaves (by this runtime or the Python one).
    writeFileSync(join(dir, '.tmp-Ke-4242-0a1b2c3d4e5f'), Buffer.alloc(5));
    writeFileSync(join(dir, '.tmp-Ka-99-ffffffffffff'), Buffer.alloc(7));
    // Files that are not checkpoints are left alone.
    writeFileSync(join(dir, 'README.txt'), 'not mine');
    writeFileSync(join(dir, 'bad key.ckpt'), 'not a key');
    mkdirSync(join(dir, 'Ksub.ckpt'));

    expect(store.keys()).toEqual(['Ka', 'Kb', 'Kc', 'Kd']);
    expect(store.bytes()).toBe(4 * CHECKPOINT_HEADER_BYTES + 100);

    const keepTemps = store.collect(new Set(['Kb', 'Kd', 'Kzz']), { temporary: false });
    expect(keepTemps).toEqual({
      keys: ['Ka', 'Kc'],
      temporary: [],
      bytes: 2 * CHECKPOINT_HEADER_BYTES + 40,
    });
    expect(store.keys()).toEqual(['Kb', 'Kd']);

    const all = store.collect(new Set(['Kd']));
    expect(all).toEqual({
      keys: ['Kb'],
      temporary: ['.tmp-Ka-99-ffffffffffff', '.tmp-Ke-4242-0a1b2c3d4e5f'],
      bytes: CHECKPOINT_HEADER_BYTES + 20 + 12,
    });
    expect(readdirSync(dir).sort()).toEqual(['Kd.ckpt', 'Ksub.ckpt', 'README.txt', 'bad key.ckpt']);
    expect(store.bytes()).toBe(CHECKPOINT_HEADER_BYTES + 40);
    expect(store.get('Kd').equals(Buffer.alloc(40))).toBe(true);
    expect(store.collect(new Set())).toEqual({
      keys: ['Kd'],
      temporary: [],
      bytes: CHECKPOINT_HEADER_BYTES + 40,
    });
    expect(store.bytes()).toBe(0);
  });
});
