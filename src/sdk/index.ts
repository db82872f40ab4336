/**
 * The SDK: define a study in TypeScript (study.ts). See docs/sdk.md.
 */
export * from './study.js';
export { ValidationError } from '../errors.js';
export type { ByHyperparameter, JsonValue, MetricSpec, Study } from '../study/index.js';
export type { HyperparameterValues, Trainer, TrainSignal } from '../trainer/index.js';
