export { planStudy, renderPlan, renderTree } from './plan.js';
export type { Plan, PlanSummary, RenderOptions } from './plan.js';
export { renderSimulation, simulateStudy, trainedSteps } from './simulate.js';
export type { Simulation, SimulateSummary } from './simulate.js';
export { buildReport, shortSchedule } from './report.js';
export type {
  Baseline,
  CostModel,
  MeasuredCosts,
  ReportInput,
  StudyReport,
  TrialReport,
} from './report.js';
export { fmt, rankedTrials, renderMarkdown, savingsLines, trialTable } from './render.js';
export { reportFromStore } from './from-store.js';
