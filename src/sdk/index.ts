/**
 * The SDK: define a study in TypeScript (study.ts). See docs/sdk.md.
 */
export * from './study.js';
export {
  EngineAuthError,
  EngineCallError,
  EngineConflictError,
  EngineUnavailableError,
  InvalidRequestError,
  StagetreeError,
  ValidationError,
} from '../errors.js';
export type { ByHyperparameter, JsonValue, MetricSpec, Study } from '../study/index.js';
export type { HyperparameterValues, Trainer, TrainSignal } from '../trainer/index.js';
export { Client, connect, RemoteStudy } from './client.js';
export type { ConnectOptions, StudyInput, SubmitOptions } from './client.js';
export { runStudy } from './run.js';
export type { RunOptions } from './run.js';
export type { StudyEvent, StudyInfo, StudyState } from '../rpc/index.js';
