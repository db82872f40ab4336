import { BlockList, isIP } from 'node:net';
import { isAbsolute } from 'node:path';
import { InternalError, ValidationError } from '../errors.js';
import { MAX_ERROR_MESSAGE_CHARS, truncateText } from '../engine/protocol.js';
import { STUDY_LIMITS } from '../study/index.js';
import {
  MetricMode,
  StudyState as WireStudyState,
  TrialStatus as WireTrialStatus,
} from '../gen/stagetree/v1/engine.js';
import type {
  Study as WireStudy,
  StudyEvent as WireStudyEvent,
  SubmitRequest as WireSubmitRequest,
} from '../gen/stagetree/v1/engine.js';
import type { StudyEvent, StudyInfo, StudyState, SubmitRequest } from './engine-api.js';

/**
 * The engine service's wire form (proto/stagetree/v1/engine.proto) and its domain types
 * (./engine-api.ts), both ways, with the checks both ends make: the server checks every
 * request before the executor sees it (a `ValidationError` naming the field becomes
 * INVALID_ARGUMENT), the client checks every answer before its caller sees it (a hostile
 * or broken server cannot hand it a malformed study). Field paths use the generated
 * (camelCase) names, as the worker hub does.
 */

type Path = readonly (string | number)[];

/** Bounds on what the engine service accepts and answers. */
export const ENGINE_LIMITS = {
  /** A study id is a study name. */
  maxIdChars: STUDY_LIMITS.maxNameLength,
  /**
   * The study file's text, in bytes (UTF-8): `params` and `space` may be 1 MiB each
   * (`STUDY_LIMITS`), with room for the rest.
   */
  maxStudyBytes: 4 * 1024 * 1024,
  /** `baseDir`, in characters (PATH_MAX). */
  maxBaseDirChars: 4096,
  /** A trial id or a metric name in an answer, in characters. */
  maxNameChars: 1024,
  /** A study's `problem` and a trial event's `message` are cut to this many characters. */
  maxTextChars: MAX_ERROR_MESSAGE_CHARS,
} as const;

// ------------------------------------------------------------------ checks

function text(x: unknown, path: Path, max: number): string {
  if (typeof x !== 'string' || x === '' || x.length > max)
    throw new ValidationError(path, `a non-empty string of at most ${max} characters`, x);
  return x;
}

/** A study id (its name): a non-empty string of at most `ENGINE_LIMITS.maxIdChars` characters. */
export function checkId(x: unknown, path: Path): string {
  return text(x, path, ENGINE_LIMITS.maxIdChars);
}

function count(x: unknown, path: Path): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0)
    throw new ValidationError(path, 'an integer >= 0', x);
  return x;
}

function amount(x: unknown, path: Path): number {
  if (typeof x !== 'number' || !Number.isFinite(x) || x < 0)
    throw new ValidationError(path, 'a finite number >= 0', x);
  return x;
}

function anyNumber(x: unknown, path: Path): number {
  if (typeof x !== 'number') throw new ValidationError(path, 'a number', x);
  return x;
}

function optionalText(x: string | undefined): string | null {
  return x === undefined ? null : truncateText(x, ENGINE_LIMITS.maxTextChars);
}

function present<T>(x: T | undefined, path: Path, what: string): T {
  if (x === undefined) throw new ValidationError(path, what, x);
  return x;
}

// ------------------------------------------------------------------ requests

/** The domain request from the wire (server side); a `ValidationError` names the field. */
export function submitFromWire(w: WireSubmitRequest): SubmitRequest {
  return checkSubmit({
    studyJson: w.studyJson,
    baseDir: w.baseDir,
    priority: w.priority ?? null,
  });
}

/** Checks a submit request's fields (both ends): bounded text, an absolute folder, a priority > 0. */
export function checkSubmit(r: SubmitRequest): SubmitRequest {
  if (typeof r.studyJson !== 'string' || r.studyJson === '')
    throw new ValidationError(['studyJson'], "a study file's text", r.studyJson);
  const bytes = Buffer.byteLength(r.studyJson, 'utf8');
  if (bytes > ENGINE_LIMITS.maxStudyBytes)
    throw new ValidationError(
      ['studyJson'],
      `at most ${ENGINE_LIMITS.maxStudyBytes} bytes (UTF-8)`,
      `a text of ${bytes} bytes`,
    );
  const baseDir: unknown = r.baseDir;
  if (
    typeof baseDir !== 'string' ||
    baseDir.length > ENGINE_LIMITS.maxBaseDirChars ||
    baseDir.includes('\0') ||
    !isAbsolute(baseDir)
  )
    throw new ValidationError(
      ['baseDir'],
      `an absolute folder path of at most ${ENGINE_LIMITS.maxBaseDirChars} characters`,
      baseDir,
    );
  const priority: unknown = r.priority;
  if (
    priority !== null &&
    (typeof priority !== 'number' || !(Number.isFinite(priority) && priority > 0))
  )
    throw new ValidationError(['priority'], 'a finite number > 0, or none', priority);
  return { studyJson: r.studyJson, baseDir, priority };
}

export function submitToWire(r: SubmitRequest): WireSubmitRequest {
  return {
    studyJson: r.studyJson,
    baseDir: r.baseDir,
    ...(r.priority === null ? {} : { priority: r.priority }),
  };
}

// ------------------------------------------------------------------ enums

const STATES = [
  ['running', WireStudyState.STUDY_STATE_RUNNING],
  ['paused', WireStudyState.STUDY_STATE_PAUSED],
  ['finished', WireStudyState.STUDY_STATE_FINISHED],
  ['cancelled', WireStudyState.STUDY_STATE_CANCELLED],
  ['stopped', WireStudyState.STUDY_STATE_STOPPED],
] as const;
const STATE_TO_WIRE: ReadonlyMap<string, WireStudyState> = new Map(STATES);
const STATE_FROM_WIRE: ReadonlyMap<number, StudyState> = new Map(
  STATES.map(([s, w]) => [w, s] as const),
);
const STATE_PHRASE = 'a study state (running, paused, finished, cancelled or stopped)';

const STATUSES = [
  ['proposed', WireTrialStatus.TRIAL_STATUS_PROPOSED],
  ['stopped', WireTrialStatus.TRIAL_STATUS_STOPPED],
  ['failed', WireTrialStatus.TRIAL_STATUS_FAILED],
] as const;
type TrialStatus = (typeof STATUSES)[number][0];
const STATUS_TO_WIRE: ReadonlyMap<string, WireTrialStatus> = new Map(STATUSES);
const STATUS_FROM_WIRE: ReadonlyMap<number, TrialStatus> = new Map(
  STATUSES.map(([s, w]) => [w, s] as const),
);

const MODE_TO_WIRE: ReadonlyMap<string, MetricMode> = new Map([
  ['min', MetricMode.METRIC_MODE_MIN],
  ['max', MetricMode.METRIC_MODE_MAX],
]);

function stateFromWire(x: number, path: Path): StudyState {
  const s = STATE_FROM_WIRE.get(x);
  if (s === undefined) throw new ValidationError(path, STATE_PHRASE, x);
  return s;
}

// ------------------------------------------------------------------ studies

/**
 * The wire form of a study. Values the wire cannot carry (an unknown state) become the
 * zero value, which `studyFromWire` rejects: the server checks its own answers with it.
 */
export function studyToWire(s: StudyInfo): WireStudy {
  return {
    id: s.id,
    state: STATE_TO_WIRE.get(s.state) ?? WireStudyState.STUDY_STATE_UNSPECIFIED,
    best:
      s.best === null ? undefined : { trial: s.best.trial, step: s.best.step, value: s.best.value },
    trials: {
      total: s.trials.total,
      active: s.trials.active,
      stopped: s.trials.stopped,
      failed: s.trials.failed,
    },
    stepsTrained: s.stepsTrained,
    stepsReused: s.stepsReused,
    gpuSeconds: s.gpuSeconds,
    ...(s.problem === null ? {} : { problem: truncateText(s.problem, ENGINE_LIMITS.maxTextChars) }),
    metric: {
      name: s.metric.name,
      mode: MODE_TO_WIRE.get(s.metric.mode) ?? MetricMode.METRIC_MODE_UNSPECIFIED,
    },
  };
}

/** A study from the wire, checked field by field (a `ValidationError` names the field). */
export function studyFromWire(w: WireStudy | undefined, path: Path): StudyInfo {
  const s = present(w, path, 'a study');
  const trials = present(s.trials, [...path, 'trials'], 'trial counts');
  const metric = present(s.metric, [...path, 'metric'], 'a metric');
  const best = s.best;
  if (metric.mode !== MetricMode.METRIC_MODE_MIN && metric.mode !== MetricMode.METRIC_MODE_MAX)
    throw new ValidationError([...path, 'metric', 'mode'], 'min or max', metric.mode);
  return {
    id: checkId(s.id, [...path, 'id']),
    state: stateFromWire(s.state, [...path, 'state']),
    best:
      best === undefined
        ? null
        : {
            trial: text(best.trial, [...path, 'best', 'trial'], ENGINE_LIMITS.maxNameChars),
            step: count(best.step, [...path, 'best', 'step']),
            value: anyNumber(best.value, [...path, 'best', 'value']),
          },
    trials: {
      total: count(trials.total, [...path, 'trials', 'total']),
      active: count(trials.active, [...path, 'trials', 'active']),
      stopped: count(trials.stopped, [...path, 'trials', 'stopped']),
      failed: count(trials.failed, [...path, 'trials', 'failed']),
    },
    stepsTrained: amount(s.stepsTrained, [...path, 'stepsTrained']),
    stepsReused: amount(s.stepsReused, [...path, 'stepsReused']),
    gpuSeconds: amount(s.gpuSeconds, [...path, 'gpuSeconds']),
    problem: optionalText(s.problem),
    metric: {
      name: text(metric.name, [...path, 'metric', 'name'], ENGINE_LIMITS.maxNameChars),
      mode: metric.mode === MetricMode.METRIC_MODE_MIN ? 'min' : 'max',
    },
  };
}

// ------------------------------------------------------------------ events

export function eventToWire(e: StudyEvent): WireStudyEvent {
  const head = { study: e.study, t: e.t };
  switch (e.kind) {
    case 'state':
      return {
        ...head,
        kind: {
          $case: 'state',
          value: { state: STATE_TO_WIRE.get(e.state) ?? WireStudyState.STUDY_STATE_UNSPECIFIED },
        },
      };
    case 'trial':
      return {
        ...head,
        kind: {
          $case: 'trial',
          value: {
            trial: e.trial,
            status: STATUS_TO_WIRE.get(e.status) ?? WireTrialStatus.TRIAL_STATUS_UNSPECIFIED,
            message: truncateText(e.message, ENGINE_LIMITS.maxTextChars),
          },
        },
      };
    case 'metric':
      return {
        ...head,
        kind: { $case: 'metric', value: { trial: e.trial, step: e.step, value: e.value } },
      };
  }
}

/** An event from the wire, checked field by field (a `ValidationError` names the field). */
export function eventFromWire(w: WireStudyEvent | undefined, path: Path): StudyEvent {
  const e = present(w, path, 'an event');
  const study = checkId(e.study, [...path, 'study']);
  if (typeof e.t !== 'number' || !Number.isFinite(e.t))
    throw new ValidationError([...path, 't'], 'a finite time', e.t);
  const t = e.t;
  const k = present(e.kind, [...path, 'kind'], 'one of state, trial, metric');
  const p = [...path, k.$case];
  switch (k.$case) {
    case 'state':
      return { kind: 'state', study, t, state: stateFromWire(k.value.state, [...p, 'state']) };
    case 'trial': {
      const status = STATUS_FROM_WIRE.get(k.value.status);
      if (status === undefined)
        throw new ValidationError([...p, 'status'], 'proposed, stopped or failed', k.value.status);
      return {
        kind: 'trial',
        study,
        t,
        trial: text(k.value.trial, [...p, 'trial'], ENGINE_LIMITS.maxNameChars),
        status,
        message: truncateText(k.value.message, ENGINE_LIMITS.maxTextChars),
      };
    }
    case 'metric':
      return {
        kind: 'metric',
        study,
        t,
        trial: text(k.value.trial, [...p, 'trial'], ENGINE_LIMITS.maxNameChars),
        step: count(k.value.step, [...p, 'step']),
        value: anyNumber(k.value.value, [...p, 'value']),
      };
  }
}

/**
 * Runs a server-side conversion of what the executor answered and checks it as a client
 * would: a value the client would refuse is a bug of the executor (`InternalError`), never
 * sent.
 */
export function checkedAnswer<D, W>(
  value: D,
  toWire: (d: D) => W,
  check: (w: W) => unknown,
  what: string,
): W {
  let wire: W;
  try {
    wire = toWire(value);
    check(wire);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new InternalError(`the executor answered an invalid ${what}: ${why}`, { cause: e });
  }
  return wire;
}

// ------------------------------------------------------------------ addresses

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/**
 * `host:port` or `[v6]:port`, the port in `[minPort, 65535]`; a `ValidationError` at
 * `field` otherwise.
 */
export function parseAddress(address: unknown, field: string, minPort: number): HostPort {
  const expected = `host:port (an IPv6 host in brackets, the port from ${minPort} to 65535)`;
  if (typeof address !== 'string') throw new ValidationError(field, expected, address);
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s/]+)):(\d{1,5})$/.exec(address);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (host === undefined || host === '' || !(port >= minPort && port <= 65535))
    throw new ValidationError(field, expected, address);
  if (m?.[1] !== undefined && isIP(host) !== 6) throw new ValidationError(field, expected, address);
  return { host, port };
}

/** `host:port`, with an IPv6 host in brackets. */
export function formatAddress(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * Whether `host` is this machine only: 127.0.0.0/8, ::1 (also as IPv4-mapped IPv6), or
 * `localhost`. Any other name is not, even one that resolves to loopback: names are not
 * resolved here.
 */
export function isLoopback(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  if (family === 0) return false;
  return LOOPBACK.check(host, family === 4 ? 'ipv4' : 'ipv6');
}
