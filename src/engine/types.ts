import type { Canonical } from '../schedule/index.js';
import type { StageId, TrialId } from '../tree/index.js';
import type { TrialSpec } from '../tuner/types.js';

/**
 * How a study executes: `stage-tree` merges trials and shares prefixes; `trial-based`
 * runs every trial in its own process lineage from step 0 (each trial its own merge
 * key, no process reuse across trials, a paused trial resumes from its own checkpoint):
 * the way today's systems run, and the baseline every savings figure is measured against.
 */
export const ExecutionMode = { stageTree: 'stage-tree', trialBased: 'trial-based' } as const;
export type ExecutionMode = (typeof ExecutionMode)[keyof typeof ExecutionMode];

export type WorkerId = string;
export type TaskId = number;
/** Where a checkpoint is stored: the identity of a state (`stateKey`), stable across stage splits. */
export type CheckpointKey = string;

/** Where a task's starting state comes from. */
export type Restore =
  | { readonly from: 'memory'; readonly key: CheckpointKey }
  | { readonly from: 'checkpoint'; readonly stage: StageId; readonly key: CheckpointKey }
  | { readonly from: 'init' };

/** One stage to train: [start, end) with the schedules of its path. */
export interface StageRun {
  readonly stage: StageId;
  readonly start: number;
  readonly end: number;
  /** Static params of the stage's merge key (the trainer's init input, seed included). */
  readonly params: Readonly<Record<string, unknown>>;
  /** The canonical schedules the trainer evaluates per step. */
  readonly schedules: Readonly<Record<string, Canonical>>;
}

/**
 * A command to a worker: optionally save what it holds, restore a starting state, train
 * one or more consecutive stages (all but the last are re-computations of done stages
 * whose end state was lost), and optionally save the end state.
 */
export interface Task {
  readonly id: TaskId;
  readonly worker: WorkerId;
  readonly gpu: number;
  /** The worker process is new: pay its start. */
  readonly startProcess: boolean;
  /** Save the state the worker holds, under this key, before anything else. */
  readonly saveFirst: CheckpointKey | null;
  readonly restore: Restore;
  readonly runs: readonly StageRun[];
  /** Save the state at the end of the last run, under this key. */
  readonly saveAfter: CheckpointKey | null;
  /** The key of the state at the end of the last run (what the worker then holds). */
  readonly endKey: CheckpointKey;
  /** GPU share the task occupies while it runs. */
  readonly share: number;
  /**
   * The trainer identity (engine option `identity`) the worker must run: set only on an
   * executor of several studies, where a process runs one trainer's stages.
   */
  readonly runtime?: string;
}

/** What a worker reports when a task finishes. */
export interface TaskResult {
  /** The study's metric at the end of the task's last stage. */
  readonly metric: number;
}

/** The event log: everything the engine decided, in order, with virtual or real time. */
export type LogEntry =
  | {
      readonly t: number;
      readonly kind: 'propose';
      readonly trial: TrialId;
      readonly spec: TrialSpec;
    }
  | {
      readonly t: number;
      readonly kind: 'fork';
      readonly trial: TrialId;
      readonly source: TrialId;
      readonly at: number;
      readonly schedules: Readonly<Record<string, Canonical>>;
      readonly until: number;
      readonly reports: readonly number[];
    }
  | {
      readonly t: number;
      readonly kind: 'extend';
      readonly trial: TrialId;
      readonly until: number;
      readonly reports: readonly number[];
    }
  | { readonly t: number; readonly kind: 'stop'; readonly trial: TrialId }
  | {
      readonly t: number;
      readonly kind: 'task';
      readonly task: Task;
      /** With several studies: the studies that demanded it when it started (GPU-time credit). */
      readonly studies?: readonly string[];
    }
  | { readonly t: number; readonly kind: 'done'; readonly task: TaskId; readonly metric: number }
  | { readonly t: number; readonly kind: 'cancel'; readonly task: TaskId }
  | {
      /**
       * A running task was cut short (`Engine.cutTask`, an input replay gives again): its
       * worker stopped at `step`, inside its last stage, which was split there; the task
       * now ends with the upper piece `stage` and saves its end state under `key`.
       */
      readonly t: number;
      readonly kind: 'cut';
      readonly task: TaskId;
      readonly step: number;
      readonly stage: StageId;
      readonly key: CheckpointKey;
    }
  | {
      /**
       * A stage marked done without training it: its end state was trained before (a
       * checkpoint an earlier run left, offered to the engine with its metric).
       */
      readonly t: number;
      readonly kind: 'reuse';
      readonly stage: StageId;
      readonly key: CheckpointKey;
      readonly metric: number;
    }
  | {
      readonly t: number;
      readonly kind: 'metric';
      readonly trial: TrialId;
      readonly step: number;
      readonly value: number;
    }
  | {
      readonly t: number;
      readonly kind: 'fail';
      readonly task: TaskId;
      readonly message: string;
      readonly reason: 'trainer' | 'checkpoint' | 'worker';
    }
  | {
      readonly t: number;
      readonly kind: 'lost';
      readonly worker: WorkerId;
      readonly reason: string;
    }
  | {
      readonly t: number;
      readonly kind: 'trialFailed';
      readonly trial: TrialId;
      readonly message: string;
    }
  | {
      /** A study ended; `study` names it unless it is the engine's first study. */
      readonly t: number;
      readonly kind: 'finish';
      readonly study?: string;
      /** The study was cancelled (`Engine.cancelStudy`: an input replay gives again). */
      readonly cancelled?: true;
    }
  | {
      /** A study was paused (`Engine.pauseStudy`) or resumed: inputs replay gives again. */
      readonly t: number;
      readonly kind: 'pause' | 'resume';
      readonly study: string;
    }
  | {
      /** A study joined the engine (`Engine.submit`); its trials are `study/t1`, ... */
      readonly t: number;
      readonly kind: 'submit';
      readonly study: string;
      /** Its weight in fair share. */
      readonly priority: number;
    };

/** Costs the engine uses to estimate stage durations for critical-path priority. */
export interface CostModel {
  /** Seconds to train one step with these hyperparameter values, alone on a GPU. */
  stepSeconds(values: Readonly<Record<string, unknown>>): number;
}
