export { Executor, localProcessPool, trainerIdentity } from './executor.js';
export type {
  Checkpoints,
  ExecutorOptions,
  ExecutorOutcome,
  PoolEnvironment,
  PoolFactory,
  PoolHandle,
  StudyEnd,
  StudyHandle,
  StudyOutcome,
  StudySource,
} from './executor.js';
export { AttemptLog } from './attempts.js';
export { baselinePaths, checkTrainer, defaultPaths, gpusPresent, workerCommand } from './local.js';
export type { RunPaths } from './local.js';
export { anchorStudy, ExecutorService, StudyExistsError } from './service.js';
