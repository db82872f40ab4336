export {
  clusterGpus,
  engineOptions,
  makespanLowerBound,
  precedenceLowerBound,
  simCosts,
  simulate,
  simulateStudies,
  trainerIdentity,
} from './simulate.js';
export type { SimulationResult, Submission } from './simulate.js';
export { SimPool } from './pool.js';
export type { SimCosts, SimOutcome } from './pool.js';
export { simEvaluate, simInit, simTrain } from './trainer.js';
export type { SimState } from './trainer.js';
export { SIM_PHASES, SimWorkerPool, simInventory } from './workers.js';
export type { SimWorkerFaults, SimWorkerPoolOptions } from './workers.js';
