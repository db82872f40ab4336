export {
  StudyStore,
  AttemptOutcome,
  TrialRowStatus,
  MAX_DETAIL_CHARS,
  MAX_ERROR_CHARS,
  MAX_TASK_STUDIES,
} from './study-store.js';
export type {
  AttemptEnd,
  AttemptRow,
  AttemptStart,
  MetricRow,
  StageRow,
  StoredStudy,
  StoreOwner,
  StudyStatus,
  StudySummary,
  TrialRow,
} from './study-store.js';
export {
  CheckpointStore,
  CorruptCheckpointError,
  CHECKPOINT_DIGEST_PREFIX,
  CHECKPOINT_HEADER_BYTES,
  CHECKPOINT_KEY_PATTERN,
  CHECKPOINT_MAGIC,
  CHECKPOINT_SUFFIX,
  OLD_CHECKPOINT_MAGIC,
  TEMP_PREFIX,
  checkCheckpointKey,
  checkpointDigest,
  decodeCheckpoint,
  encodeCheckpoint,
} from './checkpoints.js';
export type { CheckpointHealth, Collected } from './checkpoints.js';
export { MIGRATIONS, APPLICATION_ID } from './schema.js';
export { canonicalJson } from './json.js';
