import { ExecutionMode } from '../engine/index.js';
import type { Study } from '../study/index.js';
import { allStages, allTrials, trialProgress } from '../tree/index.js';
import type { StageTree } from '../tree/index.js';
import { makespanLowerBound, precedenceLowerBound, simulate } from '../workers/sim/index.js';
import type { SimulationResult } from '../workers/sim/index.js';

/** What `stagetree simulate --json` prints. */
export interface SimulateSummary {
  readonly stageTree: {
    readonly gpuHours: number;
    readonly makespanHours: number;
    readonly stagesRun: number;
    readonly checkpointsSaved: number;
    readonly checkpointsLoaded: number;
    readonly processStarts: number;
  };
  readonly trialBased: { readonly gpuHours: number; readonly makespanHours: number };
  /** trialBased.gpuHours / stageTree.gpuHours. */
  readonly savings: number;
  /** trialBased.makespanHours / stageTree.makespanHours. */
  readonly speedup: number;
  /** Steps the trials trained (each as far as it got) / unique steps of the stage tree that were trained. */
  readonly idealSavings: number;
  /** max(stage work / GPUs, longest trained chain) of the stage-tree run. */
  readonly makespanLowerBoundHours: number;
  /**
   * A tighter bound that respects precedence (branches cannot start before their shared
   * prefix ends): max over t of (t + work deeper than t / GPUs).
   */
  readonly makespanPrecedenceBoundHours: number;
  readonly best: { readonly trial: string; readonly metric: number } | null;
  readonly trials: number;
  readonly gpus: number;
}

const hours = (s: number): number => Number((s / 3600).toFixed(4));
const ratio = (a: number, b: number): number => (b === 0 ? 1 : Number((a / b).toFixed(4)));

/** Trial steps and unique tree steps of what a run actually trained. */
export function trainedSteps(tree: StageTree): { trialSteps: number; treeSteps: number } {
  let treeSteps = 0;
  for (const s of allStages(tree)) if (s.done) treeSteps += s.end - s.start;
  let trialSteps = 0;
  for (const t of allTrials(tree)) trialSteps += trialProgress(tree, t.id);
  return { trialSteps, treeSteps };
}

export interface Simulation {
  readonly summary: SimulateSummary;
  readonly stageTree: SimulationResult;
  readonly trialBased: SimulationResult;
}

/** Runs the study on simulated workers twice: as a stage tree and trial by trial. */
export function simulateStudy(study: Study): Simulation {
  const st = simulate(study, ExecutionMode.stageTree);
  const tb = simulate(study, ExecutionMode.trialBased);
  const steps = trainedSteps(st.tree);
  const summary: SimulateSummary = {
    stageTree: {
      gpuHours: hours(st.gpuSeconds),
      makespanHours: hours(st.makespanSeconds),
      stagesRun: st.stats.stagesRun,
      checkpointsSaved: st.stats.checkpointsSaved,
      checkpointsLoaded: st.stats.checkpointsLoaded,
      processStarts: st.stats.processStarts,
    },
    trialBased: { gpuHours: hours(tb.gpuSeconds), makespanHours: hours(tb.makespanSeconds) },
    savings: ratio(tb.gpuSeconds, st.gpuSeconds),
    speedup: ratio(tb.makespanSeconds, st.makespanSeconds),
    idealSavings: ratio(steps.trialSteps, steps.treeSteps),
    makespanLowerBoundHours: hours(makespanLowerBound(study, st.tree, st.gpus)),
    makespanPrecedenceBoundHours: hours(precedenceLowerBound(study, st.tree, st.gpus)),
    best: st.best ? { trial: st.best.trial, metric: Number(st.best.metric.toFixed(6)) } : null,
    trials: st.tree.counts.trials,
    gpus: st.gpus,
  };
  return { summary, stageTree: st, trialBased: tb };
}

/** The readable form of `stagetree simulate`. */
export function renderSimulation(study: Study, sim: Simulation): string {
  const s = sim.summary;
  const st = s.stageTree;
  return [
    `study ${study.name}: ${s.trials} trials (${study.tuner.kind}) on ${s.gpus} simulated GPU${s.gpus === 1 ? '' : 's'}`,
    '',
    `                 GPU-hours   makespan (h)`,
    `  stage tree  ${st.gpuHours.toFixed(3).padStart(11)} ${st.makespanHours.toFixed(3).padStart(14)}`,
    `  trial-based ${s.trialBased.gpuHours.toFixed(3).padStart(11)} ${s.trialBased.makespanHours.toFixed(3).padStart(14)}`,
    '',
    `  savings ${s.savings.toFixed(2)}x GPU-hours (ideal ${s.idealSavings.toFixed(2)}x), ${s.speedup.toFixed(2)}x end to end`,
    `  makespan ${st.makespanHours.toFixed(3)} h vs lower bounds ${s.makespanLowerBoundHours.toFixed(3)} h (work / GPUs, longest path) and ${s.makespanPrecedenceBoundHours.toFixed(3)} h (with precedence)`,
    `  stage tree ran ${st.stagesRun} stages, ${st.processStarts} process starts, ${st.checkpointsSaved} checkpoints saved, ${st.checkpointsLoaded} loaded`,
    s.best
      ? `  best: ${s.best.trial} with ${study.metric.name} = ${s.best.metric}`
      : '  best: no metric reported',
  ].join('\n');
}
