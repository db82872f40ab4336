export { planStudy, renderPlan, renderTree } from './plan.js';
export type { Plan, PlanSummary, RenderOptions } from './plan.js';
