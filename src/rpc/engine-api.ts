/**
 * What the engine service exposes, in plain domain types (no generated code): the
 * executor of many studies implements `EngineApi`; `startEngineServer` serves one over
 * gRPC (proto/stagetree/v1/engine.proto) and `connectEngine` gives a client the same
 * calls, answered with the same types.
 */

export type StudyState = 'running' | 'paused' | 'finished' | 'cancelled' | 'stopped';

export interface StudyInfo {
  /** The study's name (unique per server). */
  readonly id: string;
  readonly state: StudyState;
  /** The best report so far; null before the first one. `value` may be NaN or infinite. */
  readonly best: { readonly trial: string; readonly step: number; readonly value: number } | null;
  readonly trials: {
    readonly total: number;
    readonly active: number;
    readonly stopped: number;
    readonly failed: number;
  };
  /** Steps of the tasks it was first to need (integers, sent as doubles). */
  readonly stepsTrained: number;
  /** Steps it needed that another study's tasks had trained already. */
  readonly stepsReused: number;
  readonly gpuSeconds: number;
  /** Why it stopped, if it did. */
  readonly problem: string | null;
  readonly metric: { readonly name: string; readonly mode: 'min' | 'max' };
}

export type StudyEvent =
  | {
      readonly kind: 'state';
      readonly study: string;
      readonly t: number;
      readonly state: StudyState;
    }
  | {
      readonly kind: 'trial';
      readonly study: string;
      readonly t: number;
      readonly trial: string;
      readonly status: 'proposed' | 'stopped' | 'failed';
      readonly message: string;
    }
  | {
      readonly kind: 'metric';
      readonly study: string;
      readonly t: number;
      readonly trial: string;
      readonly step: number;
      /** Any number: NaN and infinities are valid metrics. */
      readonly value: number;
    };

export interface SubmitRequest {
  /**
   * The study file's text (validated by the implementation with parseStudyText: a
   * ValidationError becomes INVALID_ARGUMENT).
   */
  readonly studyJson: string;
  /** Absolute folder a relative trainer module resolves against. */
  readonly baseDir: string;
  readonly priority: number | null;
}

export interface EngineApi {
  submit(request: SubmitRequest): Promise<StudyInfo>;
  /** NotFoundError for an unknown id. */
  get(id: string): StudyInfo;
  list(): StudyInfo[];
  cancel(id: string): StudyInfo;
  pause(id: string): StudyInfo;
  resume(id: string): StudyInfo;
  /**
   * Calls `listener` with every event of the study from now on; the returned function
   * unsubscribes. NotFoundError for an unknown id.
   */
  watch(id: string, listener: (event: StudyEvent) => void): () => void;
}
