import { ValidationError } from '../errors.js';
import {
  MAX_ERROR_DETAIL_CHARS,
  MAX_ERROR_MESSAGE_CHARS,
  truncateText,
} from '../engine/protocol.js';
import type { EngineToWorker, StageRun, WireTask, WorkerToEngine } from '../engine/index.js';
import { fromSegments } from '../schedule/index.js';
import type { Canonical, Piece, Segment } from '../schedule/index.js';
import type {
  ConnectRequest,
  ConnectResponse,
  Piece as WirePiece,
  Schedule as WireSchedule,
  StageRun as WireStageRun,
} from '../gen/stagetree/v1/worker.js';

/**
 * Conversions between the worker protocol's wire form (generated from
 * proto/stagetree/v1/worker.proto) and the engine's domain types. Every message from the
 * wire is validated here: a malformed one becomes a `ValidationError` naming the field,
 * which the server maps to INVALID_ARGUMENT, and never reaches the engine.
 */

type Path = (string | number)[];

function finite(x: number, path: Path): number {
  if (!Number.isFinite(x)) throw new ValidationError(path, 'a finite number', x);
  return x;
}

function seconds(x: number, path: Path): number {
  if (!Number.isFinite(x) || x < 0) throw new ValidationError(path, 'a finite number >= 0', x);
  return x;
}

function step(x: number, path: Path): number {
  if (!Number.isSafeInteger(x) || x < 0) throw new ValidationError(path, 'an integer step >= 0', x);
  return x;
}

function positiveInt(x: number, path: Path): number {
  if (!Number.isSafeInteger(x) || x < 1) throw new ValidationError(path, 'an integer >= 1', x);
  return x;
}

function nonEmpty(x: string, path: Path): string {
  if (x === '') throw new ValidationError(path, 'a non-empty string', x);
  return x;
}

function taskId(x: number, path: Path): number {
  if (!Number.isSafeInteger(x) || x < 1)
    throw new ValidationError(path, 'a task id (an integer >= 1)', x);
  return x;
}

// ------------------------------------------------------------------ schedules

export function pieceToWire(p: Piece): WirePiece {
  switch (p.f) {
    case 'const':
      return {
        kind: {
          $case: 'constant',
          value: {
            value:
              typeof p.v === 'number'
                ? { $case: 'number', value: p.v }
                : { $case: 'text', value: p.v },
          },
        },
      };
    case 'stair':
      return {
        kind: {
          $case: 'stair',
          value: { init: p.init, factor: p.factor, every: p.every, origin: p.origin },
        },
      };
    case 'exp':
      return {
        kind: { $case: 'exponential', value: { init: p.init, gamma: p.gamma, origin: p.origin } },
      };
    case 'cos':
      return {
        kind: {
          $case: 'cosine',
          value: { max: p.max, min: p.min, period: p.period, origin: p.origin },
        },
      };
    case 'lin':
      return {
        kind: {
          $case: 'linear',
          value: { fromValue: p.from, toValue: p.to, w: p.w, origin: p.origin },
        },
      };
    case 'tri':
      return {
        kind: { $case: 'triangle', value: { low: p.low, high: p.high, h: p.h, origin: p.origin } },
      };
  }
}

function pieceFromWire(w: WirePiece, path: Path): Piece {
  const k = w.kind;
  if (!k)
    throw new ValidationError(
      path,
      'a piece (constant, stair, exponential, cosine, linear or triangle)',
      w,
    );
  const p = [...path, k.$case];
  switch (k.$case) {
    case 'constant': {
      const v = k.value.value;
      if (!v) throw new ValidationError([...p, 'value'], 'a number or a text', v);
      return { f: 'const', v: v.$case === 'number' ? finite(v.value, [...p, 'number']) : v.value };
    }
    case 'stair':
      return {
        f: 'stair',
        init: finite(k.value.init, [...p, 'init']),
        factor: finite(k.value.factor, [...p, 'factor']),
        every: positiveInt(k.value.every, [...p, 'every']),
        origin: finite(k.value.origin, [...p, 'origin']),
      };
    case 'exponential':
      return {
        f: 'exp',
        init: finite(k.value.init, [...p, 'init']),
        gamma: finite(k.value.gamma, [...p, 'gamma']),
        origin: finite(k.value.origin, [...p, 'origin']),
      };
    case 'cosine':
      return {
        f: 'cos',
        max: finite(k.value.max, [...p, 'max']),
        min: finite(k.value.min, [...p, 'min']),
        period: positiveInt(k.value.period, [...p, 'period']),
        origin: finite(k.value.origin, [...p, 'origin']),
      };
    case 'linear':
      return {
        f: 'lin',
        from: finite(k.value.fromValue, [...p, 'fromValue']),
        to: finite(k.value.toValue, [...p, 'toValue']),
        w: positiveInt(k.value.w, [...p, 'w']),
        origin: finite(k.value.origin, [...p, 'origin']),
      };
    case 'triangle':
      return {
        f: 'tri',
        low: finite(k.value.low, [...p, 'low']),
        high: finite(k.value.high, [...p, 'high']),
        h: positiveInt(k.value.h, [...p, 'h']),
        origin: finite(k.value.origin, [...p, 'origin']),
      };
  }
}

export function scheduleToWire(c: Canonical): WireSchedule {
  return {
    hash: c.hash,
    segments: c.segments.map((s) => ({
      start: s.start,
      ...(s.end === null ? {} : { end: s.end }),
      piece: pieceToWire(s.piece),
    })),
  };
}

/** A schedule from the wire: contiguous segments from 0, the last one open. */
export function scheduleFromWire(w: WireSchedule, path: Path): Canonical {
  if (w.segments.length === 0)
    throw new ValidationError([...path, 'segments'], 'at least one segment', w.segments);
  const segments: Segment[] = w.segments.map((s, i) => {
    const p = [...path, 'segments', i];
    const start = step(s.start, [...p, 'start']);
    const end = s.end === undefined ? null : step(s.end, [...p, 'end']);
    if (!s.piece) throw new ValidationError([...p, 'piece'], 'a piece', undefined);
    return { start, end, piece: pieceFromWire(s.piece, [...p, 'piece']) };
  });
  segments.forEach((s, i) => {
    const expectStart = i === 0 ? 0 : (segments[i - 1] as Segment).end;
    if (s.start !== expectStart) {
      throw new ValidationError(
        [...path, 'segments', i, 'start'],
        `${String(expectStart)} (segments are contiguous from 0)`,
        s.start,
      );
    }
    const last = i === segments.length - 1;
    if (last !== (s.end === null)) {
      throw new ValidationError(
        [...path, 'segments', i, 'end'],
        last ? 'no end (the last segment is open)' : 'an end',
        s.end,
      );
    }
    if (s.end !== null && s.end <= s.start)
      throw new ValidationError([...path, 'segments', i, 'end'], `> ${s.start}`, s.end);
  });
  return fromSegments(segments);
}

export function stageRunToWire(r: StageRun): WireStageRun {
  return {
    stageId: r.stage,
    start: r.start,
    end: r.end,
    paramsJson: JSON.stringify(r.params),
    schedules: Object.fromEntries(
      Object.entries(r.schedules).map(([h, c]) => [h, scheduleToWire(c)]),
    ),
  };
}

export function stageRunFromWire(w: WireStageRun, path: Path): StageRun {
  const start = step(w.start, [...path, 'start']);
  const end = step(w.end, [...path, 'end']);
  if (end <= start) throw new ValidationError([...path, 'end'], `a step > start (${start})`, end);
  let params: unknown;
  try {
    params = JSON.parse(w.paramsJson);
  } catch {
    throw new ValidationError([...path, 'paramsJson'], 'a JSON object', w.paramsJson);
  }
  if (typeof params !== 'object' || params === null || Array.isArray(params)) {
    throw new ValidationError([...path, 'paramsJson'], 'a JSON object', w.paramsJson);
  }
  const schedules: Record<string, Canonical> = {};
  for (const [h, s] of Object.entries(w.schedules))
    schedules[h] = scheduleFromWire(s, [...path, 'schedules', h]);
  return {
    stage: nonEmpty(w.stageId, [...path, 'stageId']),
    start,
    end,
    params: params as Record<string, unknown>,
    schedules,
  };
}

// ------------------------------------------------------------------ engine -> worker

export function engineToWire(m: EngineToWorker): ConnectResponse {
  switch (m.kind) {
    case 'welcome':
      return {
        body: {
          $case: 'welcome',
          value: {
            checkpointDir: m.checkpointDir,
            heartbeatSeconds: m.heartbeatSeconds,
            workerId: m.workerId,
          },
        },
      };
    case 'run': {
      const t = m.task;
      const r = t.restore;
      return {
        body: {
          $case: 'run',
          value: {
            taskId: t.taskId,
            saveFirst: t.saveFirst ?? '',
            saveAfter: t.saveAfter ?? '',
            endKey: t.endKey,
            restore: {
              source:
                r.from === 'init'
                  ? { $case: 'init', value: true }
                  : r.from === 'memory'
                    ? { $case: 'memory', value: r.key }
                    : { $case: 'checkpoint', value: r.key },
            },
            runs: t.runs.map(stageRunToWire),
          },
        },
      };
    }
    case 'cancel':
      return { body: { $case: 'cancel', value: { taskId: m.taskId } } };
    case 'cut':
      return { body: { $case: 'cut', value: { taskId: m.taskId } } };
    case 'saveCut':
      return { body: { $case: 'saveCut', value: { taskId: m.taskId, key: m.key } } };
    case 'shutdown':
      return { body: { $case: 'shutdown', value: { reason: m.reason } } };
  }
}

export function engineFromWire(w: ConnectResponse): EngineToWorker {
  const b = w.body;
  if (!b)
    throw new ValidationError(
      'body',
      'one of welcome, run, cancel, cut, saveCut, shutdown',
      undefined,
    );
  switch (b.$case) {
    case 'welcome':
      return {
        kind: 'welcome',
        checkpointDir: nonEmpty(b.value.checkpointDir, ['welcome', 'checkpointDir']),
        heartbeatSeconds: finite(b.value.heartbeatSeconds, ['welcome', 'heartbeatSeconds']),
        workerId: b.value.workerId,
      };
    case 'run': {
      const v = b.value;
      const src = v.restore?.source;
      if (!src)
        throw new ValidationError(['run', 'restore'], 'memory, checkpoint or init', undefined);
      const restore =
        src.$case === 'init'
          ? ({ from: 'init' } as const)
          : { from: src.$case, key: nonEmpty(src.value, ['run', 'restore', src.$case]) };
      if (v.runs.length === 0)
        throw new ValidationError(['run', 'runs'], 'at least one stage', v.runs);
      return {
        kind: 'run',
        task: {
          taskId: taskId(v.taskId, ['run', 'taskId']),
          saveFirst: v.saveFirst === '' ? null : v.saveFirst,
          saveAfter: v.saveAfter === '' ? null : v.saveAfter,
          endKey: nonEmpty(v.endKey, ['run', 'endKey']),
          restore,
          runs: v.runs.map((r, i) => stageRunFromWire(r, ['run', 'runs', i])),
        } satisfies WireTask,
      };
    }
    case 'cancel':
      return { kind: 'cancel', taskId: taskId(b.value.taskId, ['cancel', 'taskId']) };
    case 'cut':
      return { kind: 'cut', taskId: taskId(b.value.taskId, ['cut', 'taskId']) };
    case 'saveCut':
      return {
        kind: 'saveCut',
        taskId: taskId(b.value.taskId, ['saveCut', 'taskId']),
        key: nonEmpty(b.value.key, ['saveCut', 'key']),
      };
    case 'shutdown':
      return { kind: 'shutdown', reason: b.value.reason };
  }
}

// ------------------------------------------------------------------ worker -> engine

export function workerToWire(m: WorkerToEngine): ConnectRequest {
  switch (m.kind) {
    case 'register':
      return {
        body: {
          $case: 'register',
          value: {
            workerId: m.workerId,
            language: m.language,
            protocol: m.protocol,
            pid: m.pid,
            gpus: [...m.gpus],
            gpuShare: m.gpuShare,
            holds: m.holds ?? '',
            secret: m.secret,
          },
        },
      };
    case 'heartbeat':
      return { body: { $case: 'heartbeat', value: { taskId: m.taskId ?? 0 } } };
    case 'progress':
      return { body: { $case: 'progress', value: { taskId: m.taskId, step: m.step } } };
    case 'cutAt':
      return { body: { $case: 'cutAt', value: { taskId: m.taskId, step: m.step } } };
    case 'done':
      return {
        body: {
          $case: 'done',
          value: { taskId: m.taskId, metrics: { ...m.metrics }, seconds: { ...m.seconds } },
        },
      };
    case 'failed':
      return {
        body: {
          $case: 'failed',
          value: {
            taskId: m.taskId,
            message: truncateText(m.message, MAX_ERROR_MESSAGE_CHARS),
            detail: truncateText(m.detail, MAX_ERROR_DETAIL_CHARS),
            reason: m.reason,
          },
        },
      };
  }
}

function numbers(
  x: Readonly<Record<string, number>>,
  path: Path,
  check: (v: number, p: Path) => number,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(x)) {
    if (k === '') throw new ValidationError([...path, k], 'a non-empty name', k);
    out[k] = check(v, [...path, k]);
  }
  return out;
}

/** Any double: NaN and infinities are valid metrics (a diverged trial is normal in tuning). */
const anyNumber = (x: number): number => x;

export function workerFromWire(w: ConnectRequest): WorkerToEngine {
  const b = w.body;
  if (!b)
    throw new ValidationError(
      'body',
      'one of register, heartbeat, progress, cutAt, done, failed',
      undefined,
    );
  switch (b.$case) {
    case 'register': {
      const v = b.value;
      if (v.language !== 'typescript' && v.language !== 'python') {
        throw new ValidationError(['register', 'language'], '"typescript" or "python"', v.language);
      }
      if (!(v.gpuShare > 0 && v.gpuShare <= 1)) {
        throw new ValidationError(['register', 'gpuShare'], 'a share in (0, 1]', v.gpuShare);
      }
      return {
        kind: 'register',
        workerId: nonEmpty(v.workerId, ['register', 'workerId']),
        language: v.language,
        protocol: nonEmpty(v.protocol, ['register', 'protocol']),
        pid: v.pid,
        gpus: [...v.gpus],
        gpuShare: v.gpuShare,
        holds: v.holds === '' ? null : v.holds,
        secret: v.secret,
      };
    }
    case 'heartbeat':
      return {
        kind: 'heartbeat',
        taskId: b.value.taskId === 0 ? null : taskId(b.value.taskId, ['heartbeat', 'taskId']),
      };
    case 'progress':
      return {
        kind: 'progress',
        taskId: taskId(b.value.taskId, ['progress', 'taskId']),
        step: step(b.value.step, ['progress', 'step']),
      };
    case 'cutAt':
      return {
        kind: 'cutAt',
        taskId: taskId(b.value.taskId, ['cutAt', 'taskId']),
        step: step(b.value.step, ['cutAt', 'step']),
      };
    case 'done':
      return {
        kind: 'done',
        taskId: taskId(b.value.taskId, ['done', 'taskId']),
        metrics: numbers(b.value.metrics, ['done', 'metrics'], anyNumber),
        seconds: numbers(b.value.seconds, ['done', 'seconds'], seconds),
      };
    case 'failed':
      return {
        kind: 'failed',
        taskId: taskId(b.value.taskId, ['failed', 'taskId']),
        message:
          b.value.message === ''
            ? '(the trainer gave no message)'
            : truncateText(b.value.message, MAX_ERROR_MESSAGE_CHARS),
        detail: truncateText(b.value.detail, MAX_ERROR_DETAIL_CHARS),
        reason:
          b.value.reason === 'checkpoint' ||
          b.value.reason === 'worker' ||
          b.value.reason === 'environment'
            ? b.value.reason
            : 'trainer',
      };
  }
}
