import { isAbsolute, join, resolve } from 'node:path';
import { ConflictError, NotFoundError, ValidationError } from '../errors.js';
import { entryStudy } from '../engine/index.js';
import type { LogEntry } from '../engine/index.js';
import type { EngineApi, StudyEvent, StudyInfo, SubmitRequest } from '../rpc/index.js';
import { parseStudyText } from '../study/index.js';
import type { Study } from '../study/index.js';
import type { Executor } from './executor.js';

/** A study submitted under a name the engine already has. */
export class StudyExistsError extends ConflictError {
  readonly study: string;

  constructor(study: string, state: string) {
    super(
      `a study named ${JSON.stringify(study)} is on this engine already (${state}); ` +
        'submit it under another name, or watch the one there',
    );
    this.study = study;
  }
}

/**
 * A study as the engine server stores it: trainer paths made absolute against the
 * submitter's folder, so the stored study is self-contained (a restarted server resumes
 * it without its file).
 */
export function anchorStudy(study: Study, baseDir: string): Study {
  if (!isAbsolute(baseDir)) {
    throw new ValidationError('baseDir', 'an absolute folder', baseDir);
  }
  const t = study.trainer;
  switch (t.kind) {
    case 'node':
      return {
        ...study,
        trainer: { ...t, module: t.module.startsWith('.') ? resolve(baseDir, t.module) : t.module },
      };
    case 'python':
      return { ...study, trainer: { ...t, path: t.path.map((p) => resolve(baseDir, p)) } };
    case 'sim':
      return study;
  }
}

/** What watchers of a study hear of a log entry of it. */
function toEvent(e: LogEntry, study: string): StudyEvent | null {
  switch (e.kind) {
    case 'propose':
    case 'fork':
      return { kind: 'trial', study, t: e.t, trial: e.trial, status: 'proposed', message: '' };
    case 'stop':
      return { kind: 'trial', study, t: e.t, trial: e.trial, status: 'stopped', message: '' };
    case 'trialFailed':
      return { kind: 'trial', study, t: e.t, trial: e.trial, status: 'failed', message: e.message };
    case 'metric':
      return { kind: 'metric', study, t: e.t, trial: e.trial, step: e.step, value: e.value };
    case 'pause':
      return { kind: 'state', study, t: e.t, state: 'paused' };
    case 'resume':
    case 'submit':
      return { kind: 'state', study, t: e.t, state: 'running' };
    case 'finish':
      return { kind: 'state', study, t: e.t, state: e.cancelled ? 'cancelled' : 'finished' };
    case 'extend':
    case 'task':
    case 'done':
    case 'cancel':
    case 'cut':
    case 'fail':
    case 'lost':
    case 'reuse':
      return null;
  }
}

/**
 * The engine server's API on an executor: what `stagetree serve` exposes over gRPC.
 * Study ids are study names (unique on one engine); a study is parsed and checked at
 * `submit` (a `ValidationError` names the field), its trainer paths anchored to the
 * submitter's folder.
 */
export class ExecutorService implements EngineApi {
  private readonly watchers = new Map<string, Set<(e: StudyEvent) => void>>();
  private readonly unsubscribe: () => void;

  constructor(private readonly executor: Executor) {
    this.unsubscribe = executor.subscribe((entries) => this.publish(entries));
  }

  /** Stops publishing (the executor is closing). */
  close(): void {
    this.unsubscribe();
    this.watchers.clear();
  }

  async submit(request: SubmitRequest): Promise<StudyInfo> {
    const study = anchorStudy(parseStudyText(request.studyJson), request.baseDir);
    if (this.executor.studyNames.includes(study.name)) {
      throw new StudyExistsError(study.name, this.executor.state(study.name));
    }
    await this.executor.submit({
      study,
      file: join(request.baseDir, `${study.name}.json`),
      ...(request.priority !== null ? { priority: request.priority } : {}),
    });
    return this.get(study.name);
  }

  get(id: string): StudyInfo {
    if (!this.executor.studyNames.includes(id)) {
      throw new NotFoundError('study', id, 'no study of that name was submitted to this engine');
    }
    const status = this.executor.status(id);
    const steps = this.executor.steps(id);
    const state = this.executor.state(id);
    return {
      id,
      state,
      best: status.best,
      trials: status.trials,
      stepsTrained: steps.trained,
      stepsReused: steps.reused,
      gpuSeconds: status.gpuSeconds,
      problem: state === 'stopped' || state === 'running' ? status.problem : null,
      metric: status.metric,
    };
  }

  list(): StudyInfo[] {
    return this.executor.studyNames.map((n) => this.get(n));
  }

  cancel(id: string): StudyInfo {
    this.get(id);
    this.executor.cancel(id);
    return this.get(id);
  }

  pause(id: string): StudyInfo {
    this.get(id);
    this.executor.pause(id);
    return this.get(id);
  }

  resume(id: string): StudyInfo {
    this.get(id);
    this.executor.resume(id);
    return this.get(id);
  }

  watch(id: string, listener: (event: StudyEvent) => void): () => void {
    this.get(id);
    let set = this.watchers.get(id);
    if (!set) this.watchers.set(id, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  private publish(entries: readonly LogEntry[]): void {
    if (this.watchers.size === 0) return;
    const primary = this.executor.studyNames[0] ?? '';
    for (const e of entries) {
      const study = entryStudy(e, primary);
      if (study === null) continue;
      const set = this.watchers.get(study);
      if (!set || set.size === 0) continue;
      const event = toEvent(e, study);
      if (event === null) continue;
      for (const l of [...set]) l(event);
    }
  }
}
