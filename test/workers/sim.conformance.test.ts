import { ExecutionMode } from '../../src/engine/index.js';
import type { Study } from '../../src/study/index.js';
import { engineOptions, simulate } from '../../src/workers/sim/index.js';
import { simAlone } from '../support/sim-study.js';
import { describeBackendConformance } from './conformance.js';

describeBackendConformance('sim', {
  trainer: { kind: 'sim', stepSeconds: 1, startSeconds: 2, saveSeconds: 0.1, loadSeconds: 0.1 },
  run: (study: Study) => {
    const r = simulate(study, ExecutionMode.stageTree);
    return Promise.resolve({ log: r.log, options: engineOptions(study, ExecutionMode.stageTree) });
  },
  alone: (study, spec, step) => Promise.resolve(simAlone(spec, step, study.metric.mode)),
});
