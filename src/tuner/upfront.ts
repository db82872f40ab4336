import { ValidationError } from '../errors.js';
import { gridConfigs, randomConfigs } from '../study/index.js';
import type { Study, TrialConfig } from '../study/index.js';
import type { TrialInput } from '../tree/index.js';

/** Steps at which a trial of the study reports its metric: every `evalEvery`, and the end. */
export function reportSteps(study: Pick<Study, 'steps' | 'evalEvery'>): number[] {
  const out: number[] = [];
  for (let s = study.evalEvery; s < study.steps; s += study.evalEvery) out.push(s);
  out.push(study.steps);
  return out;
}

/** Trial ids sort in proposal order: t01, t02, ... t24. */
export function trialId(index: number, count: number): string {
  return `t${String(index + 1).padStart(String(count).length, '0')}`;
}

/** A study configuration as a stage-tree trial demanding all of the study's steps. */
export function toTrialInput(config: TrialConfig, count: number, study: Study): TrialInput {
  return {
    id: trialId(config.index, count),
    params: config.params,
    schedules: config.canonical,
    until: study.steps,
    reports: reportSteps(study),
  };
}

/**
 * The trials of a tuner whose trials are all known before anything runs (grid, random),
 * each demanding the study's full `steps`. Other tuners decide as metrics come in, so
 * their trials are not known up front: a `ValidationError` on `tuner.kind`.
 */
export function upfrontTrials(study: Study): TrialInput[] {
  const tuner = study.tuner;
  let configs: TrialConfig[];
  switch (tuner.kind) {
    case 'grid':
      configs = gridConfigs(study);
      break;
    case 'random':
      configs = randomConfigs(study, tuner.trials, tuner.seed);
      break;
    case 'sha':
    case 'asha':
    case 'hyperband':
    case 'median':
    case 'pbt':
      throw new ValidationError(
        'tuner.kind',
        '"grid" or "random" (only their trials are known before anything runs; ' +
          '`stagetree simulate` runs adaptive tuners)',
        tuner.kind,
      );
  }
  if (configs.length === 0)
    throw new ValidationError('space', 'at least one configuration', configs.length);
  return configs.map((c) => toTrialInput(c, configs.length, study));
}
