import { readFile } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ErrorCode, StagetreeError } from '../errors.js';
import { planStudy, renderPlan, renderSimulation, simulateStudy } from '../report/index.js';
import { parseStudy } from '../study/index.js';
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
  return cli;
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
