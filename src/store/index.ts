export { StudyStore, AttemptOutcome, TrialRowStatus } from './study-store.js';
export type {
  AttemptEnd,
  AttemptRow,
  AttemptStart,
  MetricRow,
  StageRow,
  StoredStudy,
  StudyStatus,
  TrialRow,
} from './study-store.js';
export {
  CheckpointStore,
  CorruptCheckpointError,
  CHECKPOINT_HEADER_BYTES,
  CHECKPOINT_KEY_PATTERN,
  CHECKPOINT_MAGIC,
  CHECKPOINT_SUFFIX,
  TEMP_PREFIX,
  checkCheckpointKey,
  decodeCheckpoint,
  encodeCheckpoint,
} from './checkpoints.js';
export type { CheckpointHealth, Collected } from './checkpoints.js';
export { MIGRATIONS, APPLICATION_ID } from './schema.js';
export { canonicalJson } from './json.js';
