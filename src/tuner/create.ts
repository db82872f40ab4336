import type { Study } from '../study/index.js';
import { AshaTuner } from './asha.js';
import { GridTuner } from './grid.js';
import { AsyncHyperbandTuner, HyperbandTuner } from './hyperband.js';
import { MedianStoppingTuner } from './median.js';
import { PbtTuner } from './pbt.js';
import { RandomTuner } from './random.js';
import { ShaTuner } from './sha.js';
import type { Tuner } from './types.js';

/**
 * The tuner of a study (`study.tuner.kind`), fresh: a tuner keeps state, so a study run
 * (or a replay of its event log) needs its own. The engine must give it a context whose
 * `rng` is `createRng(tunerSeed(study.tuner))`.
 */
export function createTuner(study: Study): Tuner {
  const spec = study.tuner;
  switch (spec.kind) {
    case 'grid':
      return new GridTuner(spec);
    case 'random':
      return new RandomTuner(spec);
    case 'sha':
      return new ShaTuner(spec);
    case 'asha':
      return AshaTuner.of(spec);
    case 'hyperband':
      return spec.async ? new AsyncHyperbandTuner(spec) : new HyperbandTuner(spec);
    case 'median':
      return new MedianStoppingTuner(spec);
    case 'pbt':
      return new PbtTuner(spec);
  }
}
