import { ExecutionMode } from '../../src/engine/index.js';
import type { Study } from '../../src/study/index.js';
import {
  engineOptions,
  simEvaluate,
  simInit,
  simTrain,
  simulate,
} from '../../src/workers/sim/index.js';
import { describeBackendConformance } from './conformance.js';

describeBackendConformance('sim', {
  trainer: { kind: 'sim', stepSeconds: 1, startSeconds: 2, saveSeconds: 0.1, loadSeconds: 0.1 },
  run: (study: Study) => {
    const r = simulate(study, ExecutionMode.stageTree);
    return Promise.resolve({ log: r.log, options: engineOptions(study, ExecutionMode.stageTree) });
  },
  alone: (study, spec, step) => {
    const state = simTrain(simInit(spec.params), {
      stage: 'alone',
      start: 0,
      end: step,
      params: spec.params,
      schedules: spec.schedules,
    });
    return Promise.resolve(simEvaluate(state, study.metric.mode));
  },
});
