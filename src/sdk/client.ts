import { readFileSync } from 'node:fs';
import { connectEngine } from '../rpc/index.js';
import type { EngineClient, StudyEvent, StudyInfo } from '../rpc/index.js';

/** A study as code gives it: a `defineStudy` result, a parsed study, or any study-format object. */
export type StudyInput = object;

export interface ConnectOptions {
  /** The engine's token (`serve --token-file`); default $STAGETREE_TOKEN. */
  readonly token?: string;
  /** The CA certificate (PEM text or bytes, or a path to a PEM file) of a TLS engine. */
  readonly ca?: Buffer | string;
  /** Speak TLS, trusting the system's CAs unless `ca` is given (`ca` implies TLS). */
  readonly tls?: boolean;
}

export interface SubmitOptions {
  /** The folder relative trainer paths resolve against (default: the current folder). */
  readonly baseDir?: string;
  /** Weight in fair share between studies (default 1). */
  readonly priority?: number;
}

const ENDED = new Set<StudyInfo['state']>(['finished', 'cancelled', 'stopped']);

/** A study submitted to an engine server. */
export class RemoteStudy {
  constructor(
    private readonly engine: EngineClient,
    /** The study's id on the engine (its name). */
    readonly id: string,
  ) {}

  /** Its progress events from now on (trials proposed, stopped, failed; metrics; state), until it ends. */
  async *events(): AsyncGenerator<StudyEvent> {
    const info = await this.engine.get(this.id);
    if (ENDED.has(info.state)) return;
    for await (const e of this.engine.watch(this.id)) {
      yield e;
      if (e.kind === 'state' && ENDED.has(e.state)) return;
    }
  }

  /** Waits until it has ended (finished, cancelled, or the engine stopped it) and returns where it stands. */
  async result(): Promise<StudyInfo> {
    // eslint-disable-next-line @typescript-eslint/no-unused-vars
    for await (const _ of this.events());
    return this.engine.get(this.id);
  }

  info(): Promise<StudyInfo> {
    return this.engine.get(this.id);
  }

  cancel(): Promise<StudyInfo> {
    return this.engine.cancel(this.id);
  }

  pause(): Promise<StudyInfo> {
    return this.engine.pause(this.id);
  }

  resume(): Promise<StudyInfo> {
    return this.engine.resume(this.id);
  }
}

/** A connection to an engine server (`stagetree serve`). */
export class Client {
  constructor(private readonly engine: EngineClient) {}

  /** Submits a study; its id is its name. The study is validated by the engine (`ValidationError`). */
  async submit(study: StudyInput, options: SubmitOptions = {}): Promise<RemoteStudy> {
    const info = await this.engine.submit({
      studyJson: JSON.stringify(study),
      baseDir: options.baseDir ?? process.cwd(),
      priority: options.priority ?? null,
    });
    return new RemoteStudy(this.engine, info.id);
  }

  /** A study already on the engine. */
  study(id: string): RemoteStudy {
    return new RemoteStudy(this.engine, id);
  }

  get(id: string): Promise<StudyInfo> {
    return this.engine.get(id);
  }

  list(): Promise<StudyInfo[]> {
    return this.engine.list();
  }

  close(): void {
    this.engine.close();
  }
}

/**
 * Connects to an engine server at `address` (`host:port`; default $STAGETREE_SERVER, then
 * 127.0.0.1:7700).
 */
export function connect(address?: string, options: ConnectOptions = {}): Client {
  const token = options.token ?? process.env.STAGETREE_TOKEN;
  const ca =
    options.ca === undefined
      ? undefined
      : typeof options.ca !== 'string'
        ? options.ca
        : options.ca.includes('-----BEGIN')
          ? Buffer.from(options.ca)
          : readFileSync(options.ca);
  const tls = ca !== undefined ? { tls: { ca } } : options.tls === true ? { tls: {} } : {};
  return new Client(
    connectEngine(address ?? process.env.STAGETREE_SERVER ?? '127.0.0.1:7700', {
      ...(token !== undefined && token !== '' ? { token } : {}),
      ...tls,
    }),
  );
}
