import { ValidationError } from '../errors.js';

/** A seeded pseudo-random number generator: same seed, same sequence, on every run. */
export interface Rng {
  /** A float in [0, 1) with 53 random bits. */
  next(): number;
  /** An integer in [lo, hi], both included. */
  int(lo: number, hi: number): number;
}

/** splitmix32's output function: a bijective 32-bit mixer. */
function mix32(x: number): number {
  let z = x | 0;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
  return (z ^ (z >>> 15)) >>> 0;
}

const GOLDEN = 0x9e3779b9;
const TWO_32 = 4294967296;
const TWO_53 = 9007199254740992;

/**
 * sfc32 (Chris Doty-Humphrey's small fast chaotic PRNG), seeded through splitmix32 from
 * both 32-bit halves of `seed` (any safe integer, negative included). Pure: no global
 * state, no clock.
 */
export function createRng(seed: number): Rng {
  if (!Number.isSafeInteger(seed)) throw new ValidationError('seed', 'a safe integer', seed);
  const low = seed >>> 0;
  const high = Math.floor(seed / TWO_32) | 0;
  let a = mix32(low + GOLDEN);
  let b = mix32(low + 2 * GOLDEN);
  let c = mix32(high ^ mix32(low + 3 * GOLDEN));
  let d = 1; // the counter

  const u32 = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 15; i++) u32();

  const next = (): number => ((u32() >>> 5) * 67108864 + (u32() >>> 6)) / TWO_53;
  return {
    next,
    int(lo: number, hi: number): number {
      if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || hi < lo) {
        throw new RangeError(`int(lo, hi) needs safe integers with lo <= hi, got ${lo}, ${hi}`);
      }
      return Math.min(hi, lo + Math.floor(next() * (hi - lo + 1)));
    },
  };
}
