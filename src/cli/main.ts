import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ErrorCode, StagetreeError } from '../errors.js';
import { planStudy, renderPlan, renderSimulation, simulateStudy } from '../report/index.js';
import { StudyStore } from '../store/index.js';
import type { StudyStatus } from '../store/index.js';
import { parseStudy } from '../study/index.js';
import { defaultPaths, runStudy } from './run.js';
import type { Study } from '../study/index.js';

/** A study file that cannot be read, parsed or validated; the message starts with the file. */
export class StudyFileError extends StagetreeError {
  readonly file: string;

  constructor(file: string, problem: string, cause?: unknown) {
    super(ErrorCode.validation, `${file}: ${problem}`, { cause });
    this.file = file;
  }
}

/** Reads and validates a study file. */
export async function loadStudy(file: string): Promise<Study> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new StudyFileError(file, `cannot read the study file (${code})`, e);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new StudyFileError(file, `not valid JSON (${(e as Error).message})`, e);
  }
  try {
    return parseStudy(json);
  } catch (e) {
    if (e instanceof StagetreeError) throw new StudyFileError(file, e.message, e);
    throw e;
  }
}

/** Runs `fn`; a user-facing error it throws is reported against the study file. */
function withFile<T>(file: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof StagetreeError && !(e instanceof StudyFileError))
      throw new StudyFileError(file, e.message, e);
    throw e;
  }
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError(`expected an integer >= 1, got ${value}`);
  }
  return n;
}

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

const processIo: Io = {
  out: (text) => process.stdout.write(text + '\n'),
  err: (text) => process.stderr.write(text + '\n'),
};

function program(io: Io): Command {
  const cli = new Command('stagetree')
    .description('Hyperparameter tuning that runs shared schedule prefixes once (a stage tree).')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.out(s.trimEnd()),
      writeErr: (s) => io.err(s.trimEnd()),
    });

  cli
    .command('plan')
    .description("merge a study's trials into a stage tree and show what it would save")
    .argument('<study>', 'study file (JSON, format v1: docs/study-format.md)')
    .option('--json', 'print one JSON object: trials, trialSteps, treeSteps, stages, idealSavings')
    .option('--depth <n>', 'levels of the tree to show', positiveInt, 3)
    .option('--width <n>', 'children to show per stage', positiveInt, 6)
    .action(async (file: string, opts: { json?: true; depth: number; width: number }) => {
      const study = await loadStudy(file);
      const plan = withFile(file, () => planStudy(study));
      io.out(
        opts.json
          ? JSON.stringify(plan.summary)
          : renderPlan(study, plan, { depth: opts.depth, width: opts.width }),
      );
    });

  cli
    .command('simulate')
    .description(
      'run the study on simulated workers (virtual clock), as a stage tree and trial by trial, and compare',
    )
    .argument('<study>', 'study file (JSON, format v1: docs/study-format.md)')
    .option('--json', 'print one JSON object (stageTree, trialBased, savings, idealSavings, ...)')
    .action(async (file: string, opts: { json?: true }) => {
      const study = await loadStudy(file);
      const sim = withFile(file, () => simulateStudy(study));
      io.out(opts.json ? JSON.stringify(sim.summary) : renderSimulation(study, sim));
    });

  cli
    .command('run')
    .description('run the study for real on local worker processes (resumes if its store exists)')
    .argument('<study>', 'study file with a node or python trainer')
    .option('--db <file>', 'the study store (default .stagetree/<name>.db beside the study)')
    .option('--checkpoints <dir>', 'checkpoint directory (default .stagetree/<name>-checkpoints)')
    .option('--json', 'print the final status as one JSON object')
    .action(async (file: string, opts: { db?: string; checkpoints?: string; json?: true }) => {
      const study = await loadStudy(file);
      if (study.trainer.kind === 'sim') {
        throw new StudyFileError(
          file,
          'trainer.kind: expected "node" or "python" to run (a sim trainer is simulated: `stagetree simulate`), got "sim"',
        );
      }
      const out = await runStudy(file, study, {
        ...(opts.db !== undefined ? { db: opts.db } : {}),
        ...(opts.checkpoints !== undefined ? { checkpoints: opts.checkpoints } : {}),
      });
      const text = renderStatus(out.status, out.resumed ? 'resumed and finished' : 'finished');
      io.out(
        opts.json
          ? JSON.stringify({ ...out.status, bestCheckpoint: out.bestCheckpoint })
          : out.bestCheckpoint
            ? `${text}\n  best trial's final state: ${out.bestCheckpoint}`
            : text,
      );
    });

  cli
    .command('status')
    .description('show what a study store holds: trials, the best one, failures')
    .argument('<study>', 'study file (or use --db)')
    .option('--db <file>', 'the study store (default .stagetree/<name>.db beside the study)')
    .option('--json', 'print one JSON object')
    .action(async (file: string, opts: { db?: string; json?: true }) => {
      const study = await loadStudy(file);
      const paths = defaultPaths(file, study, opts.db !== undefined ? { db: opts.db } : {});
      if (!existsSync(paths.db)) {
        throw new StudyFileError(file, `no study store at ${paths.db} (run the study first)`);
      }
      const store = StudyStore.open(paths.db);
      try {
        const status = store.status();
        io.out(
          opts.json
            ? JSON.stringify(status)
            : renderStatus(status, status.finished ? 'finished' : 'not finished'),
        );
      } finally {
        store.close();
      }
    });
  return cli;
}

function renderStatus(s: StudyStatus, state: string): string {
  const lines = [
    `study ${s.name}: ${state}, ${s.trials.total} trials (${s.trials.active} active, ${s.trials.stopped} stopped, ${s.trials.failed} failed)`,
    s.best
      ? `  best: ${s.best.trial} with ${s.metric.name} = ${s.best.value} at step ${s.best.step}`
      : '  best: no metric reported yet',
    `  ${s.events} events, ${s.attempts.total} task attempts`,
  ];
  for (const f of s.failed) lines.push(`  failed ${f.trial}: ${f.message}`);
  return lines.join('\n');
}

/**
 * Runs the CLI and returns the exit code. A user mistake prints `error CODE: message`
 * and returns 1 (2 for a bad command line), never a stack trace.
 */
export async function main(argv: readonly string[], io: Io = processIo): Promise<number> {
  try {
    await program(io).parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof StagetreeError) {
      io.err(`error ${e.code}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
