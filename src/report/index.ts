export { planStudy, renderPlan, renderTree } from './plan.js';
export type { Plan, PlanSummary, RenderOptions } from './plan.js';
export { renderSimulation, simulateStudy, trainedSteps } from './simulate.js';
export type { Simulation, SimulateSummary } from './simulate.js';
