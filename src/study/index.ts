export * from './types.js';
export { parseStudy } from './parse.js';
export { gridConfigs, randomConfigs, sampleConfig } from './configs.js';
export type { TrialConfig } from './configs.js';
export { createRng } from './rng.js';
export type { Rng } from './rng.js';
export { isDomain, MAX_GRID_CONFIGS } from './domain.js';
