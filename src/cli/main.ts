import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { EnvironmentError, ErrorCode, InternalError, StagetreeError } from '../errors.js';
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
    // A UTF-8 byte order mark, as some editors write, is not part of the JSON.
    json = JSON.parse(text.startsWith('\uFEFF') ? text.slice(1) : text);
  } catch (e) {
    throw new StudyFileError(file, `not valid JSON (${(e as Error).message})`, e);
  }
  try {
    return parseStudy(json);
  } catch (e) {
    if (userError(e)) throw new StudyFileError(file, e.message, e);
    throw e;
  }
}

/** A stagetree error about the user's input (not a bug in stagetree). */
function userError(e: unknown): e is StagetreeError {
  return e instanceof StagetreeError && !(e instanceof InternalError);
}

/** Runs `fn`; a user-facing error it throws is reported against the study file. */
function withFile<T>(file: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (userError(e) && !(e instanceof StudyFileError))
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

/** Where a command leaves its exit code when it ends without an error (130: interrupted). */
interface Exit {
  code: number;
}

function program(io: Io, exit: Exit): Command {
  const cli = new Command('stagetree')
    .description('Hyperparameter tuning that runs shared schedule prefixes once (a stage tree).')
    .option('--debug', 'show the stack trace of an error')
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
    .option(
      '--restart',
      "start the study's log afresh (the old one is archived), reusing every trained state whose checkpoint is still there",
    )
    .action(
      async (
        file: string,
        opts: { db?: string; checkpoints?: string; json?: true; restart?: true },
      ) => {
        const study = await loadStudy(file);
        if (study.trainer.kind === 'sim') {
          throw new StudyFileError(
            file,
            'trainer.kind: expected "node" or "python" to run (a sim trainer is simulated: `stagetree simulate`), got "sim"',
          );
        }
        // Ctrl-C / SIGTERM: no new work, the workers stopped, the study left resumable.
        // A second signal leaves at once.
        const abort = new AbortController();
        const interrupt = (signal: NodeJS.Signals): void => {
          if (abort.signal.aborted) process.exit(130);
          io.err(`stagetree: ${signal}, stopping workers; run again to resume`);
          abort.abort(`the engine got ${signal}`);
        };
        process.on('SIGINT', interrupt);
        process.on('SIGTERM', interrupt);
        let out;
        try {
          out = await runStudy(
            file,
            study,
            {
              ...(opts.db !== undefined ? { db: opts.db } : {}),
              ...(opts.checkpoints !== undefined ? { checkpoints: opts.checkpoints } : {}),
            },
            { signal: abort.signal, ...(opts.restart ? { restart: true } : {}) },
          );
        } finally {
          process.off('SIGINT', interrupt);
          process.off('SIGTERM', interrupt);
        }
        if (out.stopped !== null) {
          if (opts.json) io.out(JSON.stringify({ ...out.status, stopped: out.stopped }));
          if (out.stopped.kind === 'interrupted') {
            io.err(`stagetree: study ${study.name} interrupted; run it again to resume`);
            exit.code = 130;
            return;
          }
          throw new EnvironmentError(
            `study ${study.name} stopped: ${out.stopped.message}; fix it and run again to resume`,
          );
        }
        const state = out.resumed ? 'resumed and finished' : 'finished';
        const text = renderStatus(out.status, state, study);
        io.out(
          opts.json
            ? JSON.stringify({ ...out.status, bestCheckpoint: out.bestCheckpoint })
            : out.bestCheckpoint
              ? `${text}\n  best trial's final state: ${out.bestCheckpoint}`
              : text,
        );
      },
    );

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
            : renderStatus(status, status.finished ? 'finished' : 'not finished', study),
        );
      } finally {
        store.close();
      }
    });
  return cli;
}

function renderStatus(s: StudyStatus, state: string, study: Study): string {
  const lines = [
    `study ${s.name}: ${state}, ${s.trials.total} trials (${s.trials.active} active, ${s.trials.stopped} stopped, ${s.trials.failed} failed)`,
    s.best
      ? `  best: ${s.best.trial} with ${s.metric.name} = ${s.best.value} at step ${s.best.step}`
      : '  best: no metric reported yet',
    `  ${s.events} events, ${s.attempts.total} task attempts`,
  ];
  lines.push(
    study.cpuOnly
      ? `  ${s.gpuSeconds.toFixed(1)} worker-slot seconds; no GPU was used (a CPU-only study: resources.gpus is 0)`
      : `  ${(s.gpuSeconds / 3600).toFixed(4)} GPU-hours (share x wall time of every attempt, failed ones included)`,
  );
  if (s.owner !== null && s.owner.pid !== process.pid)
    lines.push(
      `  being run by pid ${s.owner.pid} since ${new Date(s.owner.since * 1000).toISOString()}`,
    );
  if (s.problem !== null && !s.finished) lines.push(`  stopped: ${s.problem}`);
  for (const f of s.failed) lines.push(`  failed ${f.trial}: ${f.message}`);
  return lines.join('\n');
}

/** Node's error codes for file system problems, shown as `STAGETREE_IO` with the path. */
function systemError(e: unknown): string | null {
  if (!(e instanceof Error)) return null;
  const errno = e as NodeJS.ErrnoException;
  if (typeof errno.code !== 'string' || !/^E[A-Z]+$/.test(errno.code)) return null;
  return errno.path ? `${errno.path}: ${errno.code} (${errno.message})` : e.message;
}

/**
 * Runs the CLI and returns the exit code. A user mistake prints `error CODE: message`
 * and returns 1 (2 for a bad command line), never a stack trace.
 */
export async function main(argv: readonly string[], io: Io = processIo): Promise<number> {
  const debug = argv.includes('--debug');
  const exit: Exit = { code: 0 };
  try {
    await program(io, exit).parseAsync(
      argv.filter((a) => a !== '--debug'),
      { from: 'user' },
    );
    return exit.code;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (debug && e instanceof Error && e.stack) io.err(e.stack);
    if (userError(e)) {
      io.err(`error ${e.code}: ${e.message}`);
      return 1;
    }
    const system = systemError(e);
    if (system !== null) {
      io.err(`error ${ErrorCode.io}: ${system}`);
      return 1;
    }
    io.err(
      `error ${ErrorCode.internal}: ${e instanceof Error ? e.message : String(e)}` +
        (debug ? '' : ' (a bug in stagetree: run again with --debug for the stack, and report it)'),
    );
    return 1;
  }
}
