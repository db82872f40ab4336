/**
 * What the checkpoint store does in a folder it may not write: `delete`, `collect` and
 * `checkWritable` must throw an `IoError` (never a raw EACCES). The test calls
 * `tryReadOnly` directly, or, when it runs as root (for whom permissions do not stop
 * writes), runs this file as a child process of an unprivileged user: `node --import tsx
 * read-only.ts <dir>` prints the outcomes as JSON.
 */
import { fileURLToPath } from 'node:url';
import { CheckpointStore } from '../../src/store/index.js';

export type Outcome =
  | { readonly ok: true }
  | { readonly ok: false; readonly name: string; readonly code: string; readonly message: string };

export interface ReadOnlyOutcomes {
  readonly delete: Outcome;
  readonly collect: Outcome;
  readonly checkWritable: Outcome;
}

function outcome(fn: () => unknown): Outcome {
  try {
    fn();
    return { ok: true };
  } catch (e) {
    const err = e as Error & { code?: unknown };
    return { ok: false, name: err.name, code: String(err.code), message: err.message };
  }
}

/** Tries the store's writing operations in `dir`, which holds a checkpoint `Ka`. */
export function tryReadOnly(dir: string): ReadOnlyOutcomes {
  const store = new CheckpointStore(dir);
  return {
    delete: outcome(() => store.delete('Ka')),
    collect: outcome(() => store.collect(new Set())),
    checkWritable: outcome(() => {
      store.checkWritable();
    }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2];
  if (dir === undefined) throw new Error('usage: read-only.ts <checkpoint folder>');
  process.stdout.write(JSON.stringify(tryReadOnly(dir)));
}
