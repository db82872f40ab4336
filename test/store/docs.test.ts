import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { CheckpointStore, StudyStore } from '../../src/store/index.js';
import { useTempDirs } from './helpers.js';

const tempDir = useTempDirs();
const doc = readFileSync(new URL('../../docs/store.md', import.meta.url), 'utf8');
const block = (lang: string): string => {
  const m = new RegExp('```' + lang + '\\n([\\s\\S]*?)\\n```').exec(doc);
  if (!m?.[1]) throw new Error(`docs/store.md has no ${lang} block`);
  return m[1];
};

function schemaOf(db: Database.Database): unknown[] {
  return db
    .prepare(`SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name`)
    .all()
    .map((r) => {
      const row = r as { sql: string | null };
      // Spacing aside (ALTER TABLE ... ADD COLUMN writes " , col" into the stored SQL).
      const sql = row.sql?.replace(/\s+/g, ' ').replace(/ ?([(),]) ?/g, '$1') ?? null;
      return { ...row, sql };
    });
}

const python = spawnSync('python3', ['--version']).status === 0;

describe('docs/store.md', () => {
  it('its SQL block is the schema the study store makes', () => {
    const file = join(tempDir(), 'study.db');
    StudyStore.open(file).close();
    const real = new Database(file, { readonly: true });
    const fromDoc = new Database(':memory:');
    fromDoc.exec(block('sql'));
    expect(schemaOf(fromDoc)).toEqual(schemaOf(real));
    real.close();
    fromDoc.close();
  });

  it.skipIf(!python)('its Python reference reads and writes what the TypeScript store does', () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir);
    const fromTs = Buffer.from('written by TypeScript \u00e9\u0000\u00ff', 'latin1');
    store.put('KfromTs', fromTs);
    const script = join(dir, 'ref.py');
    writeFileSync(
      script,
      `${block('python')}

import shutil
import sys
d = sys.argv[1]
assert read_checkpoint(d, "KfromTs") == bytes.fromhex(sys.argv[2])
# Another key's valid file under this name is corrupt: the digest binds content to key.
other = os.path.join(d, "Kother.ckpt")
shutil.copyfile(os.path.join(d, "KfromTs.ckpt"), other)
try:
    read_checkpoint(d, "Kother")
    raise SystemExit("read another key's file")
except ValueError as e:
    assert "checksum mismatch" in str(e), e
os.remove(other)
write_checkpoint(d, "KfromPy", bytes(range(256)) * 3)
write_checkpoint(d, "Kempty", b"")
`,
    );
    const r = spawnSync('python3', [script, dir, fromTs.toString('hex')], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const expected = Buffer.alloc(768);
    for (let i = 0; i < 768; i++) expected[i] = i % 256;
    expect(store.get('KfromPy').equals(expected)).toBe(true);
    expect(store.get('Kempty')).toHaveLength(0);
    expect(store.keys()).toEqual(['Kempty', 'KfromPy', 'KfromTs']);
    expect(store.collect(new Set(store.keys())).temporary).toEqual([]);
  });
});
