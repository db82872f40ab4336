import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeError, EnvironmentError, InternalError } from '../errors.js';
import type { Study } from '../study/index.js';
import type { WorkerCommand } from '../workers/index.js';

/** The repository root (dist/cli/.. or src/cli/..): where the worker entry points live. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface RunPaths {
  readonly db: string;
  readonly checkpoints: string;
}

/** Default places: `.stagetree/<name>.db` and `.stagetree/<name>-checkpoints/` beside the study file. */
export function defaultPaths(studyFile: string, study: Study, given: Partial<RunPaths>): RunPaths {
  const dir = join(dirname(resolve(studyFile)), '.stagetree');
  const slug = study.name.replace(/[^A-Za-z0-9._-]+/g, '_');
  return {
    db: given.db ?? join(dir, `${slug}.db`),
    checkpoints: given.checkpoints ?? join(dir, `${slug}-checkpoints`),
  };
}

/**
 * Where the trial-based baseline of a study's run lives (`run --baseline trial-based`):
 * beside its store, `NAME.trial-based.db` and `NAME.trial-based-checkpoints/`.
 */
export function baselinePaths(paths: RunPaths): RunPaths {
  const stem = paths.db.endsWith('.db') ? paths.db.slice(0, -3) : paths.db;
  return { db: `${stem}.trial-based.db`, checkpoints: `${stem}.trial-based-checkpoints` };
}

export type RealTrainer = Exclude<Study['trainer'], { kind: 'sim' }>;

export function realTrainer(study: Study): RealTrainer {
  if (study.trainer.kind === 'sim') throw new InternalError('a sim trainer has no worker process');
  return study.trainer;
}

export function workerCommand(
  studyFile: string,
  study: Study,
): (workerId: string) => WorkerCommand {
  const base = dirname(resolve(studyFile));
  const trainer = realTrainer(study);
  switch (trainer.kind) {
    case 'node':
      return () => ({
        file: process.execPath,
        args: [join(ROOT, 'dist', 'cli', 'worker.js')],
        env: {
          STAGETREE_TRAINER_MODULE: trainer.module.startsWith('.')
            ? resolve(base, trainer.module)
            : trainer.module,
          STAGETREE_TRAINER_EXPORT: trainer.export,
        },
      });
    case 'python':
      ensurePythonStubs(trainer.python);
      return () => ({
        file: trainer.python,
        args: ['-m', 'stagetree.worker'],
        env: {
          PYTHONPATH: [
            join(ROOT, 'python'),
            ...trainer.path.map((p) => resolve(base, p)),
            process.env.PYTHONPATH ?? '',
          ]
            .filter((p) => p !== '')
            .join(':'),
          STAGETREE_TRAINER: trainer.module,
        },
      });
  }
}

/**
 * Loads the trainer the way a worker will (`worker --check`) before anything starts, and
 * returns its identity for the store: the declared `trainer.version`, else the SHA-256
 * of the file that defines it. A trainer that does not load is an `EnvironmentError`
 * with the worker's own explanation.
 */
export function checkTrainer(studyFile: string, study: Study): string {
  const cmd = workerCommand(studyFile, study)('check');
  const r = spawnSync(cmd.file, [...cmd.args, '--check'], {
    env: { ...process.env, ...cmd.env },
    cwd: cmd.cwd,
    encoding: 'utf8',
    timeout: 120_000,
    maxBuffer: 16 * 1024 * 1024,
  });
  const trainer = realTrainer(study);
  const what =
    trainer.kind === 'node'
      ? `node trainer ${trainer.module} (export ${JSON.stringify(trainer.export)})`
      : `python trainer ${trainer.module}`;
  const answer = checkAnswer(r.stdout);
  if (answer?.ok === true && typeof answer.fingerprint === 'string') {
    return trainer.version !== null ? `version:${trainer.version}` : answer.fingerprint;
  }
  const why =
    typeof answer?.error === 'string'
      ? answer.error
      : r.error
        ? describeError(r.error)
        : `${cmd.file} exited with ${r.status ?? r.signal}: ${tail(r.stderr || r.stdout)}`;
  throw new EnvironmentError(`the ${what} cannot be loaded: ${why}`);
}

/** The JSON line `worker --check` prints last, or null. */
function checkAnswer(
  stdout: string | null,
): { ok?: unknown; fingerprint?: unknown; error?: unknown } | null {
  const line = (stdout ?? '').trim().split('\n').pop() ?? '';
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === 'object' && v !== null ? v : null;
  } catch {
    return null;
  }
}

function tail(text: string | null, lines = 8): string {
  return (text ?? '').trim().split('\n').slice(-lines).join('\n') || '(no output)';
}

/**
 * Whether to give workers GPUs (CUDA_VISIBLE_DEVICES): never for a CPU-only study;
 * STAGETREE_GPUS=1 or 0 decides; otherwise, whether `nvidia-smi -L` lists any.
 */
export function gpusPresent(study: Study): boolean {
  if (study.cpuOnly) return false;
  const forced = process.env.STAGETREE_GPUS;
  if (forced === '1' || forced === '0') return forced === '1';
  const r = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('GPU');
}

/** The Python runtime's generated stubs (python/stagetree/gen, not committed), made anew when the proto changed. */
function ensurePythonStubs(python: string): void {
  const stub = join(ROOT, 'python', 'stagetree', 'gen', 'worker_pb2.py');
  const proto = join(ROOT, 'proto', 'stagetree', 'v1', 'worker.proto');
  if (existsSync(stub) && (!existsSync(proto) || statSync(proto).mtimeMs <= statSync(stub).mtimeMs))
    return;
  const r = spawnSync('bash', [join(ROOT, 'python', 'gen.sh')], {
    env: { ...process.env, PYTHON: python },
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new EnvironmentError(
      `cannot generate the Python worker's protocol stubs: ${(r.stderr || r.stdout).trim()}`,
    );
  }
}
