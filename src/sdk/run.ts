import { join, resolve } from 'node:path';
import { defaultPaths, Executor } from '../executor/index.js';
import type { ExecutorOutcome, StudyOutcome } from '../executor/index.js';
import { parseStudy } from '../study/index.js';
import type { Study } from '../study/index.js';

export interface RunOptions {
  /** The store file (default `.stagetree/<name>.db` in the current folder). */
  readonly db?: string;
  /** The checkpoint folder (default `.stagetree/<name>-checkpoints`). */
  readonly checkpoints?: string;
  /** The folder relative trainer paths resolve against (default: the current folder). */
  readonly baseDir?: string;
  /** The most worker processes at once (default: the study's `workers`). */
  readonly workers?: number;
  /** Aborting it stops the run; the study stays resumable. */
  readonly signal?: AbortSignal;
  /** Where worker output goes (default: this process's stderr). */
  readonly log?: (worker: string, line: string) => void;
}

/**
 * Runs a study in this process on an embedded executor: local worker processes, a SQLite
 * store and checkpoints on local disk. Running it again resumes it. Resolves with how it
 * ended (`end`: finished, or stopped when interrupted) and its status.
 */
export async function runStudy(
  study: object,
  options: RunOptions = {},
): Promise<StudyOutcome & { readonly executor: Omit<ExecutorOutcome, 'studies'> }> {
  const parsed: Study = parseStudy(study);
  const base = resolve(options.baseDir ?? process.cwd());
  // As if the study were a file in `base`: the store and checkpoints go in base/.stagetree.
  const file = join(base, `${parsed.name}.json`);
  const paths = defaultPaths(file, parsed, {
    ...(options.db !== undefined ? { db: options.db } : {}),
    ...(options.checkpoints !== undefined ? { checkpoints: options.checkpoints } : {}),
  });
  const executor = await Executor.open(
    {
      db: paths.db,
      checkpoints: paths.checkpoints,
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.log ? { log: options.log } : {}),
    },
    [{ study: parsed, file }],
  );
  const { studies, ...rest } = await executor.finish();
  return { ...(studies[0] as StudyOutcome), executor: rest };
}
