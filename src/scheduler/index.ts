export { EPS, place } from './placement.js';
export type {
  GpuView,
  Placement,
  PlacementLimits,
  PlacementRequest,
  WorkerView,
} from './placement.js';
export { criticalPath, orderReady } from './priority.js';
