import { createHash } from 'node:crypto';
import stringify from 'fast-json-stable-stringify';
import { cosineAt, evaluate, mod, roundValue, triangleAt } from './evaluate.js';
import type { Schedule, Value } from './types.js';

/**
 * The canonical form of a schedule: contiguous segments covering [0, infinity), each a
 * closed-form piece. Pieces carry an `origin`: the step at which their own time is 0, so
 * a piece evaluates exactly the formula of the kind it came from. Parameters are rounded
 * to 12 significant digits; the value used while training step t is
 * `roundValue(piece(t))`. Canonical forms are plain JSON (`end: null` is open) so they
 * can travel to trainers as they are.
 */
export type Piece =
  | { readonly f: 'const'; readonly v: Value }
  | {
      readonly f: 'stair';
      readonly init: number;
      readonly factor: number;
      readonly every: number;
      readonly origin: number;
    }
  | { readonly f: 'exp'; readonly init: number; readonly gamma: number; readonly origin: number }
  | {
      readonly f: 'cos';
      readonly max: number;
      readonly min: number;
      readonly period: number;
      readonly origin: number;
    }
  | {
      readonly f: 'lin';
      readonly from: number;
      readonly to: number;
      readonly w: number;
      readonly origin: number;
    }
  | {
      readonly f: 'tri';
      readonly low: number;
      readonly high: number;
      readonly h: number;
      readonly origin: number;
    };

export interface Segment {
  readonly start: number;
  /** Exclusive; `null` means the segment never ends. */
  readonly end: number | null;
  readonly piece: Piece;
}

export interface Canonical {
  readonly segments: readonly Segment[];
  /** Hash of the segments: equal hashes mean equal schedules. */
  readonly hash: string;
}

/** Expand a finite staircase into constant runs when it has at most this many. */
const MAX_EXPANDED_RUNS = 64;

const r = roundValue;

/** The unrounded value of a piece at step t. */
export function rawPieceAt(p: Piece, t: number): Value {
  switch (p.f) {
    case 'const':
      return p.v;
    case 'stair':
      return p.init * p.factor ** Math.floor((t - p.origin) / p.every);
    case 'exp':
      return p.init * p.gamma ** (t - p.origin);
    case 'cos':
      return cosineAt(p.max, p.min, p.period, t - p.origin);
    case 'lin':
      return p.from + ((p.to - p.from) * (t - p.origin)) / p.w;
    case 'tri':
      return triangleAt(p.low, p.high, p.h, t - p.origin);
  }
}

/** The value used while training step t under this piece (rounded to 12 digits). */
export function pieceAt(p: Piece, t: number): Value {
  return roundValue(rawPieceAt(p, t));
}

const INF = Number.POSITIVE_INFINITY;
const endOf = (s: Segment): number => s.end ?? INF;

/** Index of the segment containing step t (segments are contiguous from 0). */
export function segmentIndex(segments: readonly Segment[], t: number): number {
  let lo = 0;
  let hi = segments.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if ((segments[mid] as Segment).start <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** The value used while training step t. */
export function valueAt(c: Canonical | readonly Segment[], t: number): Value {
  const segments = 'segments' in c ? c.segments : c;
  const seg = segments[segmentIndex(segments, t)] as Segment;
  return pieceAt(seg.piece, t);
}

function shiftPiece(p: Piece, d: number): Piece {
  return p.f === 'const' ? p : { ...p, origin: p.origin + d };
}

/** Moves segments d steps later (their pieces' time moves with them). */
export function shift(segments: readonly Segment[], d: number): Segment[] {
  return segments.map((s) => ({
    start: s.start + d,
    end: s.end === null ? null : s.end + d,
    piece: shiftPiece(s.piece, d),
  }));
}

/** The part of the segments inside [from, to). */
export function clip(segments: readonly Segment[], from: number, to: number | null): Segment[] {
  const out: Segment[] = [];
  const hi = to ?? INF;
  for (const s of segments) {
    const start = Math.max(s.start, from);
    const end = Math.min(endOf(s), hi);
    if (start < end) out.push({ start, end: end === INF ? null : end, piece: s.piece });
  }
  return out;
}

/** Whether a non-constant piece is monotone on the whole of [start, end). */
function monotoneOn(p: Piece, start: number, end: number): boolean {
  switch (p.f) {
    case 'exp':
    case 'lin':
      return true;
    case 'cos':
      return start >= p.origin && end - 1 <= p.origin + p.period;
    case 'tri': {
      const a = mod(start - p.origin, 2 * p.h);
      // Monotone while the local phase does not cross a turning point (h or 2h).
      return a < p.h ? a + (end - 1 - start) <= p.h : a + (end - 1 - start) <= 2 * p.h;
    }
    case 'const':
    case 'stair':
      return false;
  }
}

/** Constant runs of a staircase over [start, end), or null if there are too many. */
function stairRuns(
  p: Extract<Piece, { f: 'stair' }>,
  start: number,
  end: number,
): Segment[] | null {
  const first = Math.floor((start - p.origin) / p.every);
  const last = Math.floor((end - 1 - p.origin) / p.every);
  if (last - first + 1 > MAX_EXPANDED_RUNS) return null;
  const runs: Segment[] = [];
  for (let k = first; k <= last; k++) {
    const a = Math.max(start, p.origin + k * p.every);
    const b = Math.min(end, p.origin + (k + 1) * p.every);
    runs.push({ start: a, end: b, piece: { f: 'const', v: pieceAt(p, a) } });
  }
  return runs;
}

/** Simplifies a piece that is constant in disguise; keeps it otherwise. */
function simplifyPiece(p: Piece): Piece {
  switch (p.f) {
    case 'const':
      return { f: 'const', v: r(p.v) };
    case 'stair':
      return p.factor === 1 || p.init === 0 ? { f: 'const', v: r(p.init) } : p;
    case 'exp':
      return p.gamma === 1 || p.init === 0 ? { f: 'const', v: r(p.init) } : p;
    case 'cos':
      return p.max === p.min ? { f: 'const', v: r(p.min) } : p;
    case 'lin':
      return p.from === p.to ? { f: 'const', v: r(p.from) } : p;
    case 'tri':
      return p.low === p.high ? { f: 'const', v: r(p.low) } : p;
  }
}

/**
 * Normal form of a segment list: pieces that are constant on their segment become
 * constants (including a monotone piece whose rounded values do not change there, and a
 * finite staircase of few runs), and adjacent equal constants merge.
 */
export function normalize(segments: readonly Segment[]): Segment[] {
  const expanded: Segment[] = [];
  for (const s of segments) {
    if (s.end !== null && s.end <= s.start) continue;
    const piece = simplifyPiece(s.piece);
    if (piece.f !== 'const' && s.end !== null) {
      if (s.end - s.start === 1) {
        expanded.push({
          start: s.start,
          end: s.end,
          piece: { f: 'const', v: pieceAt(piece, s.start) },
        });
        continue;
      }
      if (piece.f === 'stair') {
        const runs = stairRuns(piece, s.start, s.end);
        if (runs) {
          expanded.push(...runs);
          continue;
        }
      } else if (monotoneOn(piece, s.start, s.end)) {
        const a = pieceAt(piece, s.start);
        if (a === pieceAt(piece, s.end - 1)) {
          expanded.push({ start: s.start, end: s.end, piece: { f: 'const', v: a } });
          continue;
        }
      }
    }
    expanded.push({ start: s.start, end: s.end, piece });
  }
  const out: Segment[] = [];
  for (const s of expanded) {
    const prev = out[out.length - 1];
    if (prev && prev.piece.f === 'const' && s.piece.f === 'const' && prev.piece.v === s.piece.v) {
      out[out.length - 1] = { start: prev.start, end: s.end, piece: prev.piece };
    } else {
      out.push(s);
    }
  }
  return out;
}

/** A short, stable hash of a string (sha1, 120 bits, base64url). */
export function hashText(text: string): string {
  return createHash('sha1').update(text).digest('base64url').slice(0, 20);
}

export function hashSegments(segments: readonly Segment[]): string {
  return hashText(stringify(segments));
}

export function fromSegments(segments: readonly Segment[]): Canonical {
  const normal = normalize(segments);
  return { segments: normal, hash: hashSegments(normal) };
}

function segmentsOf(s: Schedule): Segment[] {
  switch (s.kind) {
    case 'constant':
      return [{ start: 0, end: null, piece: { f: 'const', v: s.value } }];
    case 'piecewise':
      return s.values.map((v, k) => ({
        start: k === 0 ? 0 : (s.boundaries[k - 1] as number),
        end: k === s.boundaries.length ? null : (s.boundaries[k] as number),
        piece: { f: 'const', v },
      }));
    case 'step':
      return [
        {
          start: 0,
          end: null,
          piece: { f: 'stair', init: r(s.init), factor: r(s.factor), every: s.every, origin: 0 },
        },
      ];
    case 'multistep': {
      const init = r(s.init);
      const factor = r(s.factor);
      const bounds = [0, ...s.milestones];
      return bounds.map((start, k) => ({
        start,
        end: s.milestones[k] ?? null,
        piece: { f: 'const', v: init * factor ** k },
      }));
    }
    case 'exponential':
      return [
        { start: 0, end: null, piece: { f: 'exp', init: r(s.init), gamma: r(s.gamma), origin: 0 } },
      ];
    case 'cosine': {
      const max = r(s.max);
      const min = r(s.min);
      return [
        { start: 0, end: s.period, piece: { f: 'cos', max, min, period: s.period, origin: 0 } },
        { start: s.period, end: null, piece: { f: 'const', v: min } },
      ];
    }
    case 'warmup': {
      const then = segmentsOf(s.then);
      if (s.steps === 0) return then;
      const to = r(evaluate(s.then, 0) as number);
      return [
        { start: 0, end: s.steps, piece: { f: 'lin', from: r(s.from), to, w: s.steps, origin: 0 } },
        ...shift(then, s.steps),
      ];
    }
    case 'cyclic':
      return [
        {
          start: 0,
          end: null,
          piece: { f: 'tri', low: r(s.low), high: r(s.high), h: s.halfPeriod, origin: 0 },
        },
      ];
    case 'concat': {
      const out: Segment[] = [];
      let begin = 0;
      for (const part of s.parts) {
        const until = part.until ?? null;
        out.push(...clip(shift(segmentsOf(part.schedule), begin), begin, until));
        if (until !== null) begin = until;
      }
      return out;
    }
  }
}

/** The canonical form of a validated schedule. */
export function canonicalize(s: Schedule): Canonical {
  return fromSegments(segmentsOf(s));
}

/** A constant schedule's canonical form. */
export function constant(v: Value): Canonical {
  return fromSegments([{ start: 0, end: null, piece: { f: 'const', v } }]);
}

/**
 * `a` before step `at`, then `b` from `at` on (b keeps its own time: b's value at
 * step t >= at is b(t)). This is how a forked trial continues its source.
 */
export function splice(a: Canonical, b: Canonical, at: number): Canonical {
  return fromSegments([...clip(a.segments, 0, at), ...clip(b.segments, at, null)]);
}

/**
 * A piece described relative to the start of its segment, so that the same function
 * written with other parameters (a warmup ramp clipped by a concat, an exponential with
 * another origin) gets the same description. Used for keys only, never to evaluate.
 */
function keyOf(s: Segment): unknown {
  const p = s.piece;
  const at = (t: number): number => rawPieceAt(p, t) as number;
  switch (p.f) {
    case 'const':
      return [s.start, s.end, p.v];
    case 'lin':
      return [s.start, s.end, 'lin', r(at(s.start)), r((p.to - p.from) / p.w)];
    case 'exp':
      return [s.start, s.end, 'exp', r(at(s.start)), p.gamma];
    case 'stair':
      return [
        s.start,
        s.end,
        'stair',
        r(at(s.start)),
        p.factor,
        p.every,
        mod(s.start - p.origin, p.every),
      ];
    case 'cos':
      return [s.start, s.end, 'cos', p.max, p.min, p.period, s.start - p.origin];
    case 'tri':
      return [s.start, s.end, 'tri', p.low, p.high, p.h, mod(s.start - p.origin, 2 * p.h)];
  }
}

/**
 * A hash of the schedule restricted to [0, end): two schedules whose values agree on
 * [0, end) get the same key (up to contrived cases where two different closed forms
 * agree to 12 digits on a stretch of steps). Stage ids are built from it.
 */
export function prefixKey(c: Canonical, end: number): string {
  return hashText(stringify(absorb(normalize(clip(c.segments, 0, end))).map(keyOf)));
}

/**
 * Merges a segment into its neighbour when the neighbour's closed form gives the same
 * values over it: a warmup ramp of 5 steps followed by a value that lies on the ramp's
 * line is the same function, on those steps, as a longer ramp. Forward (a piece extends
 * over the next segment), then backward (a piece extends over the previous one).
 * Segments must be finite. For keys only.
 */
function absorb(segments: readonly Segment[]): Segment[] {
  const forward: Segment[] = [];
  for (const s of segments) {
    const prev = forward[forward.length - 1];
    if (prev && s.end !== null && pieceDiff(prev.piece, s.piece, s.start, s.end) === null) {
      forward[forward.length - 1] = { start: prev.start, end: s.end, piece: prev.piece };
    } else {
      forward.push(s);
    }
  }
  const backward: Segment[] = [];
  for (let i = forward.length - 1; i >= 0; i--) {
    const s = forward[i] as Segment;
    const next = backward[backward.length - 1];
    if (next && s.end !== null && pieceDiff(next.piece, s.piece, s.start, s.end) === null) {
      backward[backward.length - 1] = { start: s.start, end: next.end, piece: next.piece };
    } else {
      backward.push(s);
    }
  }
  return backward.reverse();
}

/** Whether two pieces are the same closed form with the same parameters. */
function samePiece(a: Piece, b: Piece): boolean {
  if (a === b) return true;
  switch (a.f) {
    case 'const':
      return b.f === 'const' && a.v === b.v;
    case 'stair':
      return (
        b.f === 'stair' &&
        a.init === b.init &&
        a.factor === b.factor &&
        a.every === b.every &&
        a.origin === b.origin
      );
    case 'exp':
      return b.f === 'exp' && a.init === b.init && a.gamma === b.gamma && a.origin === b.origin;
    case 'cos':
      return (
        b.f === 'cos' &&
        a.max === b.max &&
        a.min === b.min &&
        a.period === b.period &&
        a.origin === b.origin
      );
    case 'lin':
      return (
        b.f === 'lin' && a.from === b.from && a.to === b.to && a.w === b.w && a.origin === b.origin
      );
    case 'tri':
      return (
        b.f === 'tri' &&
        a.low === b.low &&
        a.high === b.high &&
        a.h === b.h &&
        a.origin === b.origin
      );
  }
}

function isStepwise(p: Piece): p is Extract<Piece, { f: 'const' | 'stair' }> {
  return p.f === 'const' || p.f === 'stair';
}

/** First step > t at which a stepwise piece may change value. */
function nextChange(p: Extract<Piece, { f: 'const' | 'stair' }>, t: number): number {
  if (p.f === 'const') return INF;
  return p.origin + (Math.floor((t - p.origin) / p.every) + 1) * p.every;
}

/** First t in [lo, hi) where a monotone piece's value differs from `v`, given it equals at lo. */
function firstAwayFrom(p: Piece, v: Value, lo: number, hi: number): number | null {
  // Rounded values of a monotone function are monotone, so the steps equal to v form a
  // prefix of [lo, hi): gallop to bracket its end, then bisect.
  let good = lo;
  let step = 1;
  let bad = -1;
  while (good + step < hi) {
    if (pieceAt(p, good + step) !== v) {
      bad = good + step;
      break;
    }
    good += step;
    step *= 2;
  }
  if (bad < 0) {
    if (hi - 1 > good && pieceAt(p, hi - 1) !== v) bad = hi - 1;
    else return null;
  }
  while (bad - good > 1) {
    const mid = Math.floor((good + bad) / 2);
    if (pieceAt(p, mid) === v) good = mid;
    else bad = mid;
  }
  return bad;
}

/** First step in [lo, hi) (hi finite) at which two pieces give different values. */
function pieceDiff(a: Piece, b: Piece, lo: number, hi: number): number | null {
  if (samePiece(a, b)) return null;
  if (pieceAt(a, lo) !== pieceAt(b, lo)) return lo;
  if (isStepwise(a) && isStepwise(b)) {
    let t = lo;
    for (;;) {
      t = Math.min(nextChange(a, t), nextChange(b, t));
      if (t >= hi) return null;
      if (pieceAt(a, t) !== pieceAt(b, t)) return t;
    }
  }
  if (a.f === 'const' || b.f === 'const') {
    const [c, other] = a.f === 'const' ? [a, b] : [b, a];
    if (other.f === 'tri') {
      // Split at turning points into monotone runs.
      let t = lo;
      while (t < hi) {
        const phase = mod(t - other.origin, 2 * other.h);
        const runEnd = Math.min(
          hi,
          t + (phase < other.h ? other.h - phase : 2 * other.h - phase) + 1,
        );
        if (pieceAt(other, t) !== (c as { v: Value }).v) return t;
        const d = firstAwayFrom(other, (c as { v: Value }).v, t, runEnd);
        if (d !== null) return d;
        t = runEnd;
      }
      return null;
    }
    if (other.f !== 'stair' && other.f !== 'const' && monotoneOn(other, lo, hi)) {
      return firstAwayFrom(other, (c as { v: Value }).v, lo, hi);
    }
  }
  // Two different closed forms that agree at lo: they part within a few steps in any
  // real study; scan (bounded by hi).
  for (let t = lo + 1; t < hi; t++) {
    if (pieceAt(a, t) !== pieceAt(b, t)) return t;
  }
  return null;
}

/**
 * The first step t in [from, to) at which the two schedules' values differ, or null if
 * they agree on all of it. Exact (it compares the rounded values the trainer will use),
 * and cheap: identical pieces are skipped whole, stepwise pieces are compared only at
 * their change points, monotone pieces against constants by bisection.
 */
export function firstDiff(a: Canonical, b: Canonical, from: number, to: number): number | null {
  if (!Number.isFinite(to)) throw new RangeError(`firstDiff needs a finite horizon, got ${to}`);
  if (from >= to || a.hash === b.hash) return null;
  let i = segmentIndex(a.segments, from);
  let j = segmentIndex(b.segments, from);
  let lo = from;
  for (;;) {
    const sa = a.segments[i] as Segment;
    const sb = b.segments[j] as Segment;
    const hi = Math.min(endOf(sa), endOf(sb), to);
    const d = pieceDiff(sa.piece, sb.piece, lo, hi);
    if (d !== null) return d;
    if (hi >= to) return null;
    if (endOf(sa) === hi) i++;
    if (endOf(sb) === hi) j++;
    lo = hi;
  }
}
