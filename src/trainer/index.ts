export type { HyperparameterValues, Trainer, TrainerFactory, TrainSignal } from './types.js';
export { QuadraticTrainer } from './quadratic.js';
