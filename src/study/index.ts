export * from './types.js';
export { hyperbandIterationSize, parseStudy, parseStudyText } from './parse.js';
export { gridConfigs, randomConfigs, sampleConfig } from './configs.js';
export type { TrialConfig } from './configs.js';
export { createRng } from './rng.js';
export type { Rng } from './rng.js';
export { isDomain, MAX_GRID_CONFIGS } from './domain.js';
export { STUDY_LIMITS } from './limits.js';
