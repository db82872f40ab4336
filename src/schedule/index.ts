export * from './types.js';
export { parseSchedule, parseNumber, parseStepInt } from './parse.js';
export { evaluate, roundValue, SIGNIFICANT_DIGITS } from './evaluate.js';
export {
  canonicalize,
  constant,
  clip,
  firstDiff,
  fromSegments,
  hashText,
  normalize,
  pieceAt,
  prefixKey,
  segmentIndex,
  splice,
  valueAt,
} from './canonical.js';
export type { Canonical, Piece, Segment } from './canonical.js';
