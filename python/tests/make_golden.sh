#!/usr/bin/env bash
# Regenerates python/tests/golden_schedules.json from the TypeScript implementation
# (src/schedule): canonical forms of varied schedules and their values at many steps,
# plus JavaScript's Number(x.toPrecision(12)) on many numbers, ties included.
# Run from anywhere, after `npm ci` in the repository root:  bash python/tests/make_golden.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
npx tsx -e "$(cat <<'TS'
import { writeFileSync } from 'node:fs';
import { canonicalize, parseSchedule, valueAt, roundValue } from './src/schedule/index.ts';
import { encodeCheckpoint } from './src/store/checkpoints.ts';

const schedules: Record<string, unknown> = {
  constant: 0.1,
  constantText: 'adam',
  piecewise: { kind: 'piecewise', values: [0.1, 0.01, 0.001], boundaries: [30, 60] },
  piecewiseText: { kind: 'piecewise', values: ['sgd', 'adam', 'sgd'], boundaries: [5, 17] },
  piecewiseTies: {
    kind: 'piecewise',
    values: [100000000000.5, -100000000000.5, 0.30000000000000004, 1e-320, 123456789012345680000],
    boundaries: [3, 6, 9, 12],
  },
  step: { kind: 'step', init: 0.1, factor: 0.5, every: 7 },
  stepLong: { kind: 'step', init: 0.3, factor: 0.9, every: 3 },
  stepGrowing: { kind: 'step', init: 0.001, factor: 1.7, every: 11 },
  multistep: { kind: 'multistep', init: 0.1, factor: 0.1, milestones: [50, 75] },
  exponential: { kind: 'exponential', init: 0.1, gamma: 0.97 },
  exponentialUp: { kind: 'exponential', init: 0.0123, gamma: 1.013 },
  exponentialFine: { kind: 'exponential', init: 3.3, gamma: 0.999123456789 },
  cosine: { kind: 'cosine', max: 0.1, min: 0.001, period: 100 },
  cosineShort: { kind: 'cosine', max: 1, min: 0, period: 7 },
  cosineOdd: { kind: 'cosine', max: 0.37, min: 0.0123, period: 997 },
  warmupCosine: {
    kind: 'warmup',
    steps: 5,
    from: 0,
    then: { kind: 'cosine', max: 0.2, min: 0.002, period: 60 },
  },
  warmupStep: {
    kind: 'warmup',
    steps: 13,
    from: 0.001,
    then: { kind: 'step', init: 0.05, factor: 0.3, every: 19 },
  },
  cyclic: { kind: 'cyclic', low: 0.001, high: 0.1, halfPeriod: 10 },
  cyclicOdd: { kind: 'cyclic', low: 0.13, high: 0.97, halfPeriod: 7 },
  concat: {
    kind: 'concat',
    parts: [
      { until: 10, schedule: 0.05 },
      { until: 50, schedule: { kind: 'exponential', init: 0.1, gamma: 0.95 } },
      { schedule: { kind: 'cosine', max: 0.02, min: 0.0001, period: 77 } },
    ],
  },
  concatMixed: {
    kind: 'concat',
    parts: [
      { until: 8, schedule: { kind: 'warmup', steps: 8, from: 0.0, then: 0.4 } },
      { until: 40, schedule: { kind: 'step', init: 0.4, factor: 0.77, every: 5 } },
      { until: 90, schedule: { kind: 'cyclic', low: 0.01, high: 0.3, halfPeriod: 9 } },
      { schedule: { kind: 'exponential', init: 0.2, gamma: 0.9 } },
    ],
  },
};

const steps: number[] = [];
for (let t = 0; t < 400; t++) steps.push(t);
for (const t of [401, 512, 999, 1000, 1001, 1234, 4096, 9999, 10007, 65536, 100000, 1234567]) steps.push(t);

const out: Record<string, unknown> = {};
const cases: Record<string, unknown> = {};
for (const [name, raw] of Object.entries(schedules)) {
  const c = canonicalize(parseSchedule(raw));
  // JSON has no Infinity: non-finite numbers travel as {nonFinite: 'Infinity'}.
  const values = steps.map((t) => {
    const v = valueAt(c, t);
    return typeof v === 'number' && !Number.isFinite(v) ? { nonFinite: String(v) } : v;
  });
  cases[name] = { input: raw, canonical: c, values };
}
out.steps = steps;
out.schedules = cases;

// roundValue on its own: ties (exact binary halves), random magnitudes, signs.
let seed = 20240601;
const rnd = (): number => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
};
const xs: number[] = [
  100000000000.5, -100000000000.5, 100000000001.5, 999999999999.5, -999999999999.5,
  0.1 + 0.2, 0.1 * 3, 1 / 3, 2 / 3, -2 / 3, 1e21, 1.23456789012345e-300, 5e-324,
  1.7976931348623157e308, 4503599627370495.5, 12345678901.25, 0.000123456789012345,
];
for (let i = 0; i < 3000; i++) {
  const e = Math.floor(rnd() * 60) - 30;
  xs.push((rnd() - 0.5) * 10 ** e);
}
for (let i = 0; i < 500; i++) {
  // 13 significant digits ending in 5, scaled by a power of two: many are exact ties.
  const m = Math.floor(rnd() * 9e11) + 1e11;
  xs.push(((m * 10 + 5) / 2 ** Math.floor(rnd() * 8)) * (rnd() < 0.5 ? -1 : 1));
}
out.rounding = xs.map((x) => [x, roundValue(x)]);

// V8's ** and Math.cos (fdlibm), as 64-bit patterns: the C library's differ in the last
// bit for about one pow in ten and one cos in thirty, so these pin python's _jsmath.
const view = new DataView(new ArrayBuffer(8));
const hex = (x: number): string => {
  view.setFloat64(0, x);
  return view.getBigUint64(0).toString(16).padStart(16, '0');
};
const pow: string[][] = [];
for (let i = 0; i < 1500; i++) {
  const r = rnd();
  const b =
    r < 0.6
      ? Number((rnd() * 2).toPrecision(1 + Math.floor(rnd() * 12)))
      : r < 0.8
        ? 1 + (rnd() - 0.5) * 2 ** -Math.floor(rnd() * 40)
        : (rnd() - 0.5) * 2 ** (Math.floor(rnd() * 80) - 40);
  const n = Math.floor(rnd() * 3000) - 500;
  pow.push([hex(b), hex(n), hex(b ** n)]);
}
const cos: string[][] = [];
for (let i = 0; i < 1500; i++) {
  const period = 1 + Math.floor(rnd() * 5000);
  const x = (Math.PI * Math.floor(rnd() * (period + 1))) / period;
  cos.push([hex(x), hex(Math.cos(x))]);
}
out.jsmath = { pow, cos };

// A checkpoint file (format 2: the digest covers the key) as the TypeScript store writes
// it: the Python side must read it under that key, refuse it under another, and write the
// same bytes.
const key = 'Kts';
const payload = Buffer.from('stagetree checkpoint golden payload \u0000\u0001\u00ff', 'latin1');
out.checkpoint = {
  key,
  payloadHex: payload.toString('hex'),
  fileHex: encodeCheckpoint(key, payload).toString('hex'),
};

writeFileSync('python/tests/golden_schedules.json', JSON.stringify(out) + '\n');
console.log(`wrote python/tests/golden_schedules.json (${Object.keys(cases).length} schedules)`);
TS
)"
# The repository's prettier checks JSON too.
npx prettier --log-level warn --write python/tests/golden_schedules.json
