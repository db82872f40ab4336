import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Command, CommanderError } from 'commander';
import { EnvironmentError, ErrorCode, InternalError, StagetreeError } from '../errors.js';
import {
  planStudy,
  renderMarkdown,
  renderPlan,
  renderSimulation,
  reportFromStore,
  savingsLines,
  simulateStudy,
  trialTable,
} from '../report/index.js';
import { StudyStore } from '../store/index.js';
import type { StudyStatus } from '../store/index.js';
import { parseStudy } from '../study/index.js';
import { baselineChoice, positiveInt, retainChoice } from './args.js';
import { addRemoteCommands } from './remote.js';
import { baselinePaths, defaultPaths, runStudies, runStudy } from './run.js';
import { ExecutionMode } from '../engine/index.js';
import type { RunStudiesOutcome } from './run.js';
import type { StudySource } from '../executor/index.js';
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
    .description(
      'run studies for real on local worker processes, several at once on one executor (resumes if the store exists)',
    )
    .argument('<studies...>', 'study files with a node or python trainer')
    .option(
      '--db <file>',
      'the store (default .stagetree/<name>.db beside the study; .stagetree/executor.db for several)',
    )
    .option('--checkpoints <dir>', 'checkpoint directory (default .stagetree/<name>-checkpoints)')
    .option('--workers <n>', "the pool's size (default: the largest study's workers)", positiveInt)
    .option(
      '--retain <which>',
      "checkpoints kept after the studies: best (each study's best final state; default for one study) or all (every trained state, for studies run later on this store; default for several)",
      retainChoice,
    )
    .option('--json', 'print one JSON object (a studies array: name, status, best, steps)')
    .option(
      '--restart',
      'start the log afresh (the old one is archived), reusing every trained state whose checkpoint is still there',
    )
    .option(
      '--baseline <mode>',
      'run the study as a baseline instead, stored beside its store for `stagetree report`: trial-based (each trial alone in its own processes on a whole slot, from step 0)',
      baselineChoice,
    )
    .action(
      async (
        files: string[],
        opts: {
          db?: string;
          checkpoints?: string;
          json?: true;
          restart?: true;
          workers?: number;
          retain?: 'best' | 'all';
          baseline?: 'trial-based';
        },
      ) => {
        const sources: StudySource[] = [];
        for (const file of files) {
          const study = await loadStudy(file);
          if (study.trainer.kind === 'sim') {
            throw new StudyFileError(
              file,
              'trainer.kind: expected "node" or "python" to run (a sim trainer is simulated: `stagetree simulate`), got "sim"',
            );
          }
          const twin = sources.find((x) => x.study.name === study.name);
          if (twin) {
            throw new StudyFileError(
              file,
              `name: expected a name no other study given has (${twin.file} is named ${JSON.stringify(study.name)})`,
            );
          }
          sources.push({ study, file });
        }
        // Ctrl-C / SIGTERM: no new work, the workers stopped, the studies left resumable.
        // A second signal leaves at once.
        const abort = new AbortController();
        const interrupt = (signal: NodeJS.Signals): void => {
          if (abort.signal.aborted) process.exit(130);
          io.err(`stagetree: ${signal}, stopping workers; run again to resume`);
          abort.abort(`the engine got ${signal}`);
        };
        process.on('SIGINT', interrupt);
        process.on('SIGTERM', interrupt);
        if (opts.baseline !== undefined && sources.length > 1)
          throw new StudyFileError(
            files[1] as string,
            '--baseline runs one study: give one study file',
          );
        const given = {
          ...(opts.db !== undefined ? { db: opts.db } : {}),
          ...(opts.checkpoints !== undefined ? { checkpoints: opts.checkpoints } : {}),
        };
        const first = sources[0] as StudySource;
        // A baseline lives beside the study's store (its own store and checkpoints).
        const paths =
          opts.baseline !== undefined
            ? baselinePaths(
                defaultPaths(first.file, first.study, {
                  ...(opts.db !== undefined ? { db: opts.db } : {}),
                }),
              )
            : given;
        const options = {
          signal: abort.signal,
          ...(opts.baseline !== undefined
            ? { mode: ExecutionMode.trialBased, wholeSlots: true }
            : {}),
          ...(opts.restart ? { restart: true } : {}),
          ...(opts.workers !== undefined ? { workers: opts.workers } : {}),
          ...(opts.retain !== undefined ? { retain: opts.retain } : {}),
        };
        let out: RunStudiesOutcome;
        try {
          if (sources.length === 1) {
            const { study, file } = sources[0] as StudySource;
            const one = await runStudy(file, study, paths, options);
            out = {
              studies: [one.study],
              stopped: one.stopped,
              seconds: one.seconds,
              paths: one.paths,
            };
          } else {
            out = await runStudies(sources, paths, options);
          }
        } finally {
          process.off('SIGINT', interrupt);
          process.off('SIGTERM', interrupt);
        }
        const names = sources.map((x) => x.study.name).join(', ');
        if (out.stopped !== null) {
          if (opts.json) io.out(JSON.stringify(runJson(out)));
          if (out.stopped.kind === 'interrupted') {
            io.err(
              `stagetree: ${sources.length > 1 ? 'studies' : 'study'} ${names} interrupted; run again to resume`,
            );
            exit.code = 130;
            return;
          }
          throw new EnvironmentError(
            `${sources.length > 1 ? 'studies' : 'study'} ${names} stopped: ${out.stopped.message}; fix it and run again to resume`,
          );
        }
        if (opts.json) {
          io.out(JSON.stringify(runJson(out)));
          return;
        }
        const texts = out.studies.map((s) => {
          const study = sources.find((x) => x.study.name === s.name)?.study ?? null;
          const state = `${s.resumed ? 'resumed and ' : ''}${s.end}`;
          const lines = [renderStatus(s.status, state, study)];
          if (sources.length > 1 || s.stepsReused > 0)
            lines.push(
              `  ${fmtSteps(s.stepsTrained)} steps trained by its own tasks, ${fmtSteps(s.stepsReused)} reused from other studies`,
            );
          if (s.bestCheckpoint) lines.push(`  best trial's final state: ${s.bestCheckpoint}`);
          return lines.join('\n');
        });
        io.out(texts.join('\n'));
        if (opts.baseline !== undefined) {
          io.out(
            `trial-based baseline stored in ${out.paths.db}; \`stagetree report ${first.file}\` compares it with the stage-tree run`,
          );
        } else if (sources.length === 1 && out.studies[0]?.end === 'finished') {
          // The point of the product, at the end of the first command: the savings.
          const report = reportFromStore(out.paths.db, first.study, baselinePaths(out.paths).db);
          for (const line of savingsLines(report)) io.out(line);
          io.out(`full report: stagetree report ${first.file}`);
        }
      },
    );

  addRemoteCommands(cli, io, exit);

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
        if (!store.studyNames().includes(study.name)) {
          throw new StudyFileError(
            file,
            `the store ${paths.db} holds no study ${JSON.stringify(study.name)} (it holds ${store.studyNames().join(', ') || 'none'})`,
          );
        }
        const status = store.status(study.name);
        store.close();
        // The per-trial table (hyperparameters, state, metrics), best first.
        const report = reportFromStore(paths.db, study, null);
        io.out(
          opts.json
            ? JSON.stringify({ ...status, table: report.trials })
            : `${renderStatus(status, status.finished ? 'finished' : 'not finished', study)}\n${trialTable(report)}`,
        );
      } finally {
        store.close();
      }
    });
  cli
    .command('report')
    .description(
      "a study's savings report from its store: GPU-hours against trial-based execution, where the savings came from, every trial",
    )
    .argument('<study>', 'study file (or use --db)')
    .option('--db <file>', 'the study store (default .stagetree/<name>.db beside the study)')
    .option('--json', 'print one JSON object')
    .option('--md', 'print markdown (the default)')
    .action(async (file: string, opts: { db?: string; json?: true; md?: true }) => {
      const study = await loadStudy(file);
      const paths = defaultPaths(file, study, opts.db !== undefined ? { db: opts.db } : {});
      if (!existsSync(paths.db)) {
        throw new StudyFileError(file, `no study store at ${paths.db} (run the study first)`);
      }
      const names = (() => {
        const store = StudyStore.open(paths.db);
        try {
          return store.studyNames();
        } finally {
          store.close();
        }
      })();
      if (!names.includes(study.name)) {
        throw new StudyFileError(
          file,
          `the store ${paths.db} holds no study ${JSON.stringify(study.name)} (it holds ${names.join(', ') || 'none'})`,
        );
      }
      const report = reportFromStore(paths.db, study, baselinePaths(paths).db);
      io.out(opts.json ? JSON.stringify(report) : renderMarkdown(report));
    });
  return cli;
}

/** What `run --json` prints: the first study's status at the top (as before), and every study. */
function runJson(out: RunStudiesOutcome): object {
  const first = out.studies[0];
  return {
    ...(first ? { ...first.status, bestCheckpoint: first.bestCheckpoint } : {}),
    stopped: out.stopped,
    studies: out.studies.map((s) => ({
      name: s.name,
      status: s.end,
      best: s.status.best,
      stepsTrained: s.stepsTrained,
      stepsReused: s.stepsReused,
      gpuSeconds: s.status.gpuSeconds,
      trials: s.status.trials,
      bestCheckpoint: s.bestCheckpoint,
      resumed: s.resumed,
    })),
  };
}

/** Steps for people: whole numbers as they are, shares of split tasks to one decimal. */
function fmtSteps(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function renderStatus(s: StudyStatus, state: string, study: Study | null): string {
  const lines = [
    `study ${s.name}: ${state}, ${s.trials.total} trials (${s.trials.active} active, ${s.trials.stopped} stopped, ${s.trials.failed} failed)`,
    s.best
      ? `  best: ${s.best.trial} with ${s.metric.name} = ${s.best.value} at step ${s.best.step}`
      : '  best: no metric reported yet',
    `  ${s.events} events, ${s.attempts.total} task attempts`,
  ];
  lines.push(
    study?.cpuOnly === true
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
