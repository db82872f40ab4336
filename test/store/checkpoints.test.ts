import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ErrorCode, IoError, NotFoundError, ValidationError } from '../../src/errors.js';
import {
  CheckpointStore,
  CorruptCheckpointError,
  CHECKPOINT_HEADER_BYTES,
  checkpointDigest,
  decodeCheckpoint,
  encodeCheckpoint,
} from '../../src/store/index.js';
import { useTempDirs } from './helpers.js';
import { tryReadOnly } from './read-only.js';
import type { ReadOnlyOutcomes } from './read-only.js';

const tempDir = useTempDirs();
const KEY = 'KRabc_DEF-0123456789xy';
const isRoot = process.getuid?.() === 0;
const hasPython = spawnSync('python3', ['--version']).status === 0;

/** A checkpoint file's bytes, built here independently of the store's encoder. */
function fileBytes(key: string, payload: Buffer): Buffer {
  const digest = createHash('sha256')
    .update(Buffer.from(`stagetree checkpoint\0${key}\0`, 'ascii'))
    .update(payload)
    .digest();
  return Buffer.concat([Buffer.from('STCKPT02', 'ascii'), digest, payload]);
}

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
  it('writes the documented format: magic, SHA-256 of prefix, key and payload, payload', () => {
    const dir = join(tempDir(), 'ckpt'); // created on demand
    const store = new CheckpointStore(dir);
    const payload = Buffer.from('model and optimizer state');
    store.put(KEY, payload);
    const file = join(dir, `${KEY}.ckpt`);
    expect(store.fileOf(KEY)).toBe(file);
    const bytes = readFileSync(file);
    // Built here independently of the store's encoder: what the Python runtime writes.
    const expected = Buffer.concat([
      Buffer.from('STCKPT02', 'ascii'),
      createHash('sha256')
        .update(Buffer.concat([Buffer.from(`stagetree checkpoint\0${KEY}\0`, 'ascii'), payload]))
        .digest(),
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
    writeFileSync(join(dir, 'Kbig.ckpt'), fileBytes('Kbig', big));
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
      bytes.write('STCKPT03', 0, 'ascii');
      writeFileSync(file, bytes);
      expect(store.verify(KEY)).toBe('corrupt');
      expect(corruptError(() => store.get(KEY)).problem).toBe(
        'bad magic: expected "STCKPT02", got "STCKPT03"',
      );
    });

    it('a file of the old format 1 (magic STCKPT01, digest of the payload alone)', () => {
      const { store, file } = setup();
      const payload = Buffer.from('state of format 1');
      writeFileSync(
        file,
        Buffer.concat([
          Buffer.from('STCKPT01', 'ascii'),
          createHash('sha256').update(payload).digest(),
          payload,
        ]),
      );
      expect(store.verify(KEY)).toBe('corrupt');
      const e = corruptError(() => store.get(KEY));
      expect(e.problem).toMatch(/^old checkpoint format STCKPT01 .*it will be re-computed$/);
      expect(e.message).toContain(file);
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

describe('checkpoint format 2: the digest binds the content to its key', () => {
  it('matches the test vector the Python runtime checks too', () => {
    // key "Kabc", payload "hello": digest = SHA-256("stagetree checkpoint\0Kabc\0hello").
    const expected = Buffer.from(
      '5354434b50543032' + // "STCKPT02"
        '45d0d11fdd0387b1d2d5c851538302cc23d93d59414d5acf117fc7843c0caefb' +
        '68656c6c6f', // "hello"
      'hex',
    );
    const digest = createHash('sha256').update('stagetree checkpoint\0Kabc\0hello').digest('hex');
    expect(expected.subarray(8, 40).toString('hex')).toBe(digest);
    expect(checkpointDigest('Kabc', Buffer.from('hello')).toString('hex')).toBe(digest);
    expect(encodeCheckpoint('Kabc', Buffer.from('hello')).equals(expected)).toBe(true);
    expect(decodeCheckpoint(expected, 'x.ckpt', 'Kabc').toString()).toBe('hello');

    const store = new CheckpointStore(tempDir());
    store.put('Kabc', Buffer.from('hello'));
    expect(readFileSync(store.fileOf('Kabc')).equals(expected)).toBe(true);
    expect(store.get('Kabc').toString()).toBe('hello');
  });

  it('two valid files swapped between a kill and a resume: both read as corrupt', () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir);
    store.put('Ka', Buffer.from('state after stage a'));
    store.put('Kb', Buffer.from('state after stage b'));
    store.put('Kc', Buffer.from('untouched'));
    renameSync(store.fileOf('Ka'), join(dir, 'swap'));
    renameSync(store.fileOf('Kb'), store.fileOf('Ka'));
    renameSync(join(dir, 'swap'), store.fileOf('Kb'));

    for (const key of ['Ka', 'Kb']) {
      expect(store.verify(key)).toBe('corrupt');
      const e = corruptError(() => store.get(key));
      expect(e.file).toBe(store.fileOf(key));
      expect(e.problem).toMatch(/^checksum mismatch: /);
      expect(e.problem).toContain(`under key ${key}`);
      expect(e.problem).toContain('its content does not belong to this key');
    }
    // Each still reads under the key it was written for; a correct file reads back.
    expect(decodeCheckpoint(readFileSync(store.fileOf('Kb')), 'f', 'Ka').toString()).toBe(
      'state after stage a',
    );
    expect(store.verify('Kc')).toBe('ok');
    expect(store.get('Kc').toString()).toBe('untouched');
    expect(() => decodeCheckpoint(readFileSync(store.fileOf('Kc')), 'f', 'Kd')).toThrow(
      CorruptCheckpointError,
    );
  });

  it.skipIf(!hasPython)(
    "is byte for byte the Python runtime's (python/stagetree/checkpoints.py)",
    () => {
      const dir = tempDir();
      const store = new CheckpointStore(dir);
      store.put('KfromTs', Buffer.from('written by TypeScript'));
      const script = `
import sys
sys.path.insert(0, sys.argv[1])
from stagetree.checkpoints import read_checkpoint, write_checkpoint, encode
d = sys.argv[2]
assert read_checkpoint(d, "KfromTs") == b"written by TypeScript"
assert encode("Kabc", b"hello").hex() == sys.argv[3]
write_checkpoint(d, "KfromPy", b"written by Python")
`;
      const r = spawnSync(
        'python3',
        [
          '-c',
          script,
          fileURLToPath(new URL('../../python', import.meta.url)),
          dir,
          encodeCheckpoint('Kabc', Buffer.from('hello')).toString('hex'),
        ],
        { encoding: 'utf8' },
      );
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(store.get('KfromPy').toString()).toBe('written by Python');
    },
  );
});

describe('CheckpointStore: folders it cannot write', () => {
  it('a file in the way: an IoError naming the folder, never ENOTDIR or EEXIST', () => {
    const dir = tempDir();
    const blocker = join(dir, 'a-file');
    writeFileSync(blocker, 'not a folder');
    const under = ioError(() => new CheckpointStore(join(blocker, 'ckpt')));
    expect(under.path).toBe(join(blocker, 'ckpt'));
    expect(under.message).toContain('ENOTDIR');

    // The folder replaced by a file after the store was made (as root too, this fails).
    const ckpt = join(dir, 'ckpt');
    const store = new CheckpointStore(ckpt);
    store.put('Ka', Buffer.from('x'));
    rmSync(ckpt, { recursive: true });
    writeFileSync(ckpt, 'in the way');
    const w = ioError(() => {
      store.checkWritable();
    });
    expect(w.path).toBe(ckpt);
    expect(w.message).toBe(
      `${ckpt}: cannot create the checkpoint folder: EEXIST: a file is in the way where a folder should be`,
    );
    const d = ioError(() => store.delete('Ka'));
    expect(d.message).toBe(
      `${ckpt}: cannot delete checkpoint Ka.ckpt: ENOTDIR: a file is in the way: a part of the path is a file, not a folder`,
    );
    expect(ioError(() => store.collect(new Set())).message).toContain(
      'cannot list the checkpoint folder: ENOTDIR',
    );
    expect(ioError(() => store.put('Kb', Buffer.from('y'))).message).toContain(
      'cannot write checkpoint Kb.ckpt: ENOTDIR',
    );

    // A folder name too long for the file system.
    const long = join(dir, 'c'.repeat(300));
    expect(ioError(() => new CheckpointStore(long)).message).toContain('ENAMETOOLONG');
  });

  it('checkWritable creates a missing folder and leaves nothing behind', () => {
    const dir = join(tempDir(), 'new', 'ckpt');
    const store = new CheckpointStore(dir);
    rmSync(dir, { recursive: true });
    store.checkWritable();
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a read-only folder: delete, collect and checkWritable throw IoError (EACCES)', () => {
    const dir = tempDir();
    const ckpt = join(dir, 'ckpt');
    const store = new CheckpointStore(ckpt);
    store.put('Ka', Buffer.from('state'));
    writeFileSync(join(ckpt, '.tmp-Kb-1-000000000000'), 'crash leftover');
    chmodSync(ckpt, 0o555);
    // Permissions do not stop root: then the same calls run as the unprivileged `nobody`.
    let outcomes: ReadOnlyOutcomes | null;
    try {
      outcomes = isRoot ? asNobody(dir, ckpt) : tryReadOnly(ckpt);
    } finally {
      chmodSync(ckpt, 0o755);
    }
    const ran = ['setup'];
    if (outcomes === null) {
      console.warn('checkpoint permission checks skipped: running as root, cannot run as nobody');
    } else {
      for (const [op, o] of Object.entries(outcomes)) {
        expect(o, op).toMatchObject({ ok: false, name: 'IoError', code: 'STAGETREE_IO' });
        expect((o as { message: string }).message, op).toMatch(
          new RegExp(`^${ckpt}: .*: EACCES: permission denied; make the folder writable$`),
        );
      }
      expect((outcomes.delete as { message: string }).message).toContain(
        'cannot delete checkpoint Ka.ckpt',
      );
      ran.push(isRoot ? 'permission checks as nobody' : 'permission checks');
    }
    expect(store.get('Ka').toString()).toBe('state'); // nothing was deleted
    // Counted: what ran (only 'setup' where permissions cannot be tested).
    expect(ran).toEqual(
      outcomes === null
        ? ['setup']
        : ['setup', isRoot ? 'permission checks as nobody' : 'permission checks'],
    );
  });
});

/** Runs `read-only.ts` on `ckpt` as user `nobody`, or null where that is impossible. */
function asNobody(parent: string, ckpt: string): ReadOnlyOutcomes | null {
  chmodSync(parent, 0o755); // mkdtemp made it 0700
  const child = fileURLToPath(new URL('./read-only.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', 'tsx', child, ckpt], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    uid: 65534,
    gid: 65534,
    encoding: 'utf8',
    env: { ...process.env, HOME: parent },
  });
  if (r.error || r.status !== 0) {
    console.warn(`cannot run as nobody: ${r.error?.message ?? r.stderr}`);
    return null;
  }
  return JSON.parse(r.stdout) as ReadOnlyOutcomes;
}

function ioError(fn: () => unknown): IoError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(IoError);
    return e as IoError;
  }
  throw new Error('expected an IoError');
}
