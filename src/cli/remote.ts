import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { positiveInt, positiveNumber, retainChoice } from './args.js';
import { IoError, ValidationError } from '../errors.js';
import { Executor, ExecutorService } from '../executor/index.js';
import { connectEngine, startEngineServer } from '../rpc/index.js';
import type { EngineClient, StudyEvent, StudyInfo } from '../rpc/index.js';
import { RemoteStudy } from '../sdk/client.js';

/** Where `submit`, `watch`, ... find the engine when `--server` is not given. */
export const DEFAULT_SERVER = '127.0.0.1:7700';

export interface RemoteIo {
  out: (text: string) => void;
  err: (text: string) => void;
}

/** Reads a secret or certificate file; an `IoError` naming it when it cannot be read. */
function readSecretFile(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new IoError(
      file,
      `cannot read the ${what} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
}

/** A token file's text without its trailing newline; an empty token is refused. */
function readToken(file: string): string {
  const token = readSecretFile(file, 'token file').toString('utf8').trim();
  if (token === '') throw new ValidationError('--token-file', 'a file holding a token', '');
  return token;
}

interface ClientOptions {
  server?: string;
  tokenFile?: string;
  tlsCa?: string;
  json?: true;
}

/** The engine client for a command: `--server`, else $STAGETREE_SERVER, else 127.0.0.1:7700. */
function client(opts: ClientOptions): EngineClient {
  const address = opts.server ?? process.env.STAGETREE_SERVER ?? DEFAULT_SERVER;
  const token =
    opts.tokenFile !== undefined
      ? readToken(opts.tokenFile)
      : (process.env.STAGETREE_TOKEN ?? null);
  return connectEngine(address, {
    ...(token !== null && token !== '' ? { token } : {}),
    ...(opts.tlsCa !== undefined
      ? { tls: { ca: readSecretFile(opts.tlsCa, 'CA certificate') } }
      : {}),
  });
}

function withClientOptions(c: Command): Command {
  return c
    .option('--server <addr>', `the engine (default $STAGETREE_SERVER, then ${DEFAULT_SERVER})`)
    .option('--token-file <file>', "the engine's token (default $STAGETREE_TOKEN)")
    .option('--tls-ca <file>', "the CA certificate of the engine's TLS certificate")
    .option('--json', 'print JSON');
}

const fmt = (n: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(1));

/** One line per study for people. */
export function renderInfo(s: StudyInfo): string {
  const best = s.best
    ? `best ${s.best.trial} ${s.metric.name} = ${s.best.value} at step ${s.best.step}`
    : 'no metric yet';
  const lines = [
    `${s.id}: ${s.state}, ${s.trials.total} trials (${s.trials.active} active, ${s.trials.failed} failed), ${best}`,
    `  ${fmt(s.stepsTrained)} steps trained, ${fmt(s.stepsReused)} reused from other studies, ${(s.gpuSeconds / 3600).toFixed(4)} GPU-hours`,
  ];
  if (s.problem !== null) lines.push(`  problem: ${s.problem}`);
  return lines.join('\n');
}

function renderEvent(e: StudyEvent): string {
  switch (e.kind) {
    case 'state':
      return `${e.study}: ${e.state}`;
    case 'trial':
      return `${e.study}: trial ${e.trial} ${e.status}${e.message !== '' ? `: ${e.message}` : ''}`;
    case 'metric':
      return `${e.study}: trial ${e.trial} step ${e.step}: ${e.value}`;
  }
}

/** Whether a study's end is a failure a script should see: stopped, cancelled, or every trial failed. */
function failed(s: StudyInfo): boolean {
  return (
    s.state === 'stopped' ||
    s.state === 'cancelled' ||
    (s.trials.total > 0 && s.trials.failed === s.trials.total)
  );
}

/** Follows a study's events until it ends (`RemoteStudy.events`); returns its final info. */
async function follow(
  engine: EngineClient,
  id: string,
  onEvent: (e: StudyEvent) => void,
): Promise<StudyInfo> {
  for await (const e of new RemoteStudy(engine, id).events()) onEvent(e);
  return engine.get(id);
}

/** Adds `serve`, `submit`, `watch`, `list`, `get`, `cancel`, `pause`, `resume`. */
export function addRemoteCommands(cli: Command, io: RemoteIo, exit: { code: number }): void {
  cli
    .command('serve')
    .description('run an engine server: studies submitted to it share one executor and pool')
    .option('--listen <addr>', 'host:port to listen on', DEFAULT_SERVER)
    .option('--store <dir>', "the engine's store: engine.db and checkpoints/", '.stagetree/server')
    .option('--workers <n>', 'the most worker processes at once (the pool size)', positiveInt, 4)
    .option('--token-file <file>', 'a token every call must carry (required off loopback)')
    .option('--tls-cert <file>', 'serve TLS with this certificate (PEM)')
    .option('--tls-key <file>', "the certificate's private key (PEM)")
    .option(
      '--retain <which>',
      'checkpoints kept after studies end: all (for later studies to reuse; default) or best',
      retainChoice,
      'all',
    )
    .action(
      async (opts: {
        listen: string;
        store: string;
        workers: number;
        tokenFile?: string;
        tlsCert?: string;
        tlsKey?: string;
        retain: 'best' | 'all';
      }) => {
        if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined)) {
          throw new ValidationError(
            '--tls-cert / --tls-key',
            'both or neither',
            opts.tlsCert ?? opts.tlsKey,
          );
        }
        const token = opts.tokenFile !== undefined ? readToken(opts.tokenFile) : null;
        const tls =
          opts.tlsCert !== undefined && opts.tlsKey !== undefined
            ? {
                cert: readSecretFile(opts.tlsCert, 'TLS certificate'),
                key: readSecretFile(opts.tlsKey, 'TLS key'),
              }
            : null;
        const dir = resolve(opts.store);
        const abort = new AbortController();
        const executor = await Executor.open(
          {
            db: join(dir, 'engine.db'),
            checkpoints: join(dir, 'checkpoints'),
            workers: opts.workers,
            stayOpen: true,
            resumeStored: true,
            retain: opts.retain,
            signal: abort.signal,
          },
          [],
        );
        const service = new ExecutorService(executor);
        let server;
        try {
          server = await startEngineServer({ address: opts.listen, api: service, token, tls });
        } catch (e) {
          service.close();
          await executor.close();
          throw e;
        }
        const resumed = executor.studyNames.filter((n) => executor.state(n) === 'running');
        io.out(
          `stagetree engine on ${server.address} (store ${dir}, ${opts.workers} workers${tls ? ', TLS' : ''}${token !== null ? ', token' : ''})` +
            (resumed.length > 0 ? `; resumed ${resumed.join(', ')}` : ''),
        );
        await new Promise<void>((done) => {
          const stop = (signal: NodeJS.Signals): void => {
            io.err(
              `stagetree: ${signal}, stopping the engine; unfinished studies resume on the next serve`,
            );
            process.off('SIGINT', stop);
            process.off('SIGTERM', stop);
            done();
          };
          process.on('SIGINT', stop);
          process.on('SIGTERM', stop);
        });
        await server.close();
        service.close();
        abort.abort('the engine server stopped');
        await executor.close();
        exit.code = 0;
      },
    );

  withClientOptions(
    cli
      .command('submit')
      .description('submit a study to an engine server; prints its id')
      .argument('<study>', 'study file (its trainer paths are relative to its folder)')
      .option('--priority <p>', 'weight in fair share between studies', positiveNumber)
      .option('--wait', 'follow it until it ends; exit 1 if it failed'),
  ).action(async (file: string, opts: ClientOptions & { priority?: number; wait?: true }) => {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new IoError(
        file,
        `cannot read the study file (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      );
    }
    const engine = client(opts);
    try {
      let info = await engine.submit({
        studyJson: text.startsWith('\uFEFF') ? text.slice(1) : text,
        baseDir: dirname(resolve(file)),
        priority: opts.priority ?? null,
      });
      if (opts.wait) {
        info = await follow(engine, info.id, (e) => {
          if (!opts.json) io.out(renderEvent(e));
        });
        if (failed(info)) exit.code = 1;
      }
      io.out(opts.json ? JSON.stringify(info) : opts.wait ? renderInfo(info) : info.id);
    } finally {
      engine.close();
    }
  });

  withClientOptions(
    cli
      .command('watch')
      .description("follow a study's events until it ends")
      .argument('<id>', 'the study id (its name)'),
  ).action(async (id: string, opts: ClientOptions) => {
    const engine = client(opts);
    try {
      const info = await follow(engine, id, (e) =>
        io.out(opts.json ? JSON.stringify(e) : renderEvent(e)),
      );
      io.out(opts.json ? JSON.stringify(info) : renderInfo(info));
      if (failed(info)) exit.code = 1;
    } finally {
      engine.close();
    }
  });

  withClientOptions(cli.command('list').description("the engine's studies")).action(
    async (opts: ClientOptions) => {
      const engine = client(opts);
      try {
        const all = await engine.list();
        io.out(opts.json ? JSON.stringify(all) : all.map(renderInfo).join('\n') || 'no studies');
      } finally {
        engine.close();
      }
    },
  );

  for (const [name, what] of [
    ['get', 'show a study'],
    ['cancel', 'cancel a study (its trials stop; stages other studies need go on)'],
    ['pause', 'pause a study: nothing of it starts until resume; nothing trained is lost'],
    ['resume', 'resume a paused study'],
  ] as const) {
    withClientOptions(
      cli.command(name).description(what).argument('<id>', 'the study id (its name)'),
    ).action(async (id: string, opts: ClientOptions) => {
      const engine = client(opts);
      try {
        const info = await engine[name](id);
        io.out(opts.json ? JSON.stringify(info) : renderInfo(info));
      } finally {
        engine.close();
      }
    });
  }
}
