import stringify from 'fast-json-stable-stringify';
import { freeze, produce } from 'immer';
import type { Draft } from 'immer';
import {
  InternalError,
  MarkDoneError,
  NotFoundError,
  TrialExistsError,
  TrialStoppedError,
  ValidationError,
} from '../errors.js';
import { firstDiff, hashText, prefixKey, splice, valueAt } from '../schedule/index.js';
import type { Canonical, Value } from '../schedule/index.js';
import {
  emptyShards,
  shardDelete,
  shardGet,
  shardKeyList,
  shardSet,
  shardValues,
} from './shards.js';
import type { Shards } from './shards.js';
import type {
  ForkInput,
  Stage,
  StageId,
  StageTree,
  TrialId,
  TrialInput,
  TrialRecord,
} from './types.js';

/**
 * The stage tree: a trie, per merge key, of trials by their per-step hyperparameter
 * values. Every operation returns a new immutable tree (immer); nothing here does I/O
 * or reads a clock.
 *
 * Stage ids are hashes of (merge key, start, end, the path's schedules restricted to
 * [0, end)), so the same set of trials gives the same ids in any insertion order.
 */

export function emptyTree(): StageTree {
  return Object.freeze({
    roots: emptyShards<StageId>(),
    stages: emptyShards<Stage>(),
    trials: emptyShards<TrialRecord>(),
    ready: emptyShards<true>(),
    counts: Object.freeze({ stages: 0, trials: 0, splits: 0 }),
  });
}

/** The merge key: trials share stages only if their static params and hyperparameter names agree. */
export function mergeKeyOf(
  params: Readonly<Record<string, unknown>>,
  hps: readonly string[],
): string {
  return stringify({ hps: [...hps].sort(), params });
}

// prefixKey is pure but costs a clip, a normalisation and a hash; grid studies ask for
// the same (schedule, end) pairs over and over.
const prefixKeyMemo = new Map<string, string>();
function memoPrefixKey(c: Canonical, end: number): string {
  const k = `${c.hash}:${end}`;
  let v = prefixKeyMemo.get(k);
  if (v === undefined) {
    if (prefixKeyMemo.size > 1_000_000) prefixKeyMemo.clear();
    v = prefixKey(c, end);
    prefixKeyMemo.set(k, v);
  }
  return v;
}

type Schedules = Pick<TrialRecord, 'schedules' | 'hps' | 'mergeKey'>;

/** The prefix keys of a trial's schedules on [0, end): what identifies its path there. */
function pathKeys(t: Schedules, end: number): string[] {
  return t.hps.map((h) => memoPrefixKey(t.schedules[h] as Canonical, end));
}

function stageIdOf(t: Schedules, start: number, end: number): StageId {
  return 'S' + hashText(JSON.stringify([t.mergeKey, start, end, pathKeys(t, end)]));
}

/**
 * The identity of the state at the end of a stage: the same path to the same step gives
 * the same key, whatever stages it is cut into (a stage's id changes when it is split;
 * the state at its end does not). Checkpoints are stored under it.
 */
export function stateKey(tree: StageTree, id: StageId): string {
  const s = getStage(tree, id);
  if (s.parent === null) return 'K' + id;
  return (
    'K' + hashText(JSON.stringify([s.mergeKey, s.end, pathKeys(getTrial(tree, s.rep), s.end)]))
  );
}

function rootIdOf(mergeKey: string): StageId {
  return 'R' + hashText(mergeKey);
}

/** The hyperparameter values of a trial at step t, as a record. */
export function valuesAt(
  t: Pick<TrialRecord, 'schedules' | 'hps'>,
  step: number,
): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const h of t.hps) out[h] = valueAt(t.schedules[h] as Canonical, step);
  return out;
}

function valuesKey(t: Pick<TrialRecord, 'schedules' | 'hps'>, step: number): string {
  return JSON.stringify(t.hps.map((h) => valueAt(t.schedules[h] as Canonical, step)));
}

/** First step in [from, to) where the two trials' values differ; `to` if none. */
function divergence(a: Schedules, b: Schedules, from: number, to: number): number {
  let best = to;
  for (const h of a.hps) {
    const d = firstDiff(a.schedules[h] as Canonical, b.schedules[h] as Canonical, from, best);
    if (d !== null) best = d;
  }
  return best;
}

function checkSteps(
  until: unknown,
  reports: readonly unknown[] | undefined,
  path: string,
  after: number,
): { until: number; reports: number[] } {
  if (typeof until !== 'number' || !Number.isSafeInteger(until) || until <= after) {
    throw new ValidationError(`${path}.until`, `an integer > ${after}`, until);
  }
  const set = new Set<number>([until]);
  (reports ?? []).forEach((r, i) => {
    if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= after || r > until) {
      throw new ValidationError(`${path}.reports[${i}]`, `an integer in (${after}, ${until}]`, r);
    }
    set.add(r);
  });
  return { until, reports: [...set].sort((x, y) => x - y) };
}

/**
 * All edits of one operation go through an Editor. It holds the tree's persistent maps,
 * replaces records in them (each record edit is an immer `produce`, so records stay
 * frozen and share what did not change), and hands back a new tree at the end.
 */
class Editor {
  private stages: Shards<Stage>;
  private trials: Shards<TrialRecord>;
  private ready: Shards<true>;
  private roots: StageTree['roots'];
  private stageCount: number;
  private trialCount: number;
  private splitCount: number;

  constructor(base: StageTree) {
    this.stages = base.stages;
    this.trials = base.trials;
    this.ready = base.ready;
    this.roots = base.roots;
    this.stageCount = base.counts.stages;
    this.trialCount = base.counts.trials;
    this.splitCount = base.counts.splits;
  }

  result(): StageTree {
    return Object.freeze({
      roots: this.roots,
      stages: this.stages,
      trials: this.trials,
      ready: this.ready,
      counts: Object.freeze({
        stages: this.stageCount,
        trials: this.trialCount,
        splits: this.splitCount,
      }),
    });
  }

  stage(id: StageId): Stage {
    const s = shardGet(this.stages, id);
    if (!s) throw new NotFoundError('stage', id);
    return s;
  }

  trial(id: TrialId): TrialRecord {
    const t = shardGet(this.trials, id);
    if (!t) throw new NotFoundError('trial', id, 'insert it first');
    return t;
  }

  private putStage(s: Stage): void {
    this.stages = shardSet(this.stages, s.id, s);
  }

  /**
   * Replaces fields of a stage. Stages are small flat records updated on every demand
   * change, so this is a frozen spread rather than an immer draft (about 13 us against 1 us,
   * measured once in a profile of the tree benchmark during development).
   */
  private updateStage(id: StageId, patch: Partial<Stage>): void {
    this.putStage(Object.freeze({ ...this.stage(id), ...patch }));
  }

  private updateTrial(id: TrialId, recipe: (d: Draft<TrialRecord>) => void): void {
    this.trials = shardSet(this.trials, id, produce(this.trial(id), recipe));
  }

  private addChild(parentId: StageId, key: string, childId: StageId): void {
    this.updateStage(parentId, { children: shardSet(this.stage(parentId).children, key, childId) });
  }

  private refresh(id: StageId): void {
    const s = this.stage(id);
    const parentDone = s.parent !== null && this.stage(s.parent).done;
    if (parentDone && s.refs > 0 && !s.done) this.ready = shardSet(this.ready, id, true);
    else this.ready = shardDelete(this.ready, id);
  }

  private newStage(parentId: StageId, start: number, end: number, t: TrialRecord): StageId {
    const id = stageIdOf(t, start, end);
    if (shardGet(this.stages, id)) throw new InternalError(`stage ${id} exists twice`);
    this.putStage(
      freeze<Stage>({
        id,
        mergeKey: t.mergeKey,
        parent: parentId,
        start,
        end,
        rep: t.id,
        children: emptyShards(),
        refs: 0,
        done: false,
        ends: [],
      }),
    );
    this.addChild(parentId, valuesKey(t, start), id);
    this.stageCount++;
    return id;
  }

  /**
   * Splits stage [s, e) at m into a top [s, m) and a bottom [m, e). The bottom keeps the
   * stage's children, results and done flag; the top's end state was never
   * materialised, so the top is not done (a trial branching at m needs it re-run).
   */
  split(id: StageId, m: number): StageId {
    const old = this.stage(id);
    if (!(old.start < m && m < old.end))
      throw new InternalError(`split of ${id} at ${m}, outside its range`);
    const rep = this.trial(old.rep);
    const topId = stageIdOf(rep, old.start, m);
    const bottomId = stageIdOf(rep, m, old.end);
    const parentId = old.parent as StageId;
    this.putStage(freeze<Stage>({ ...old, id: bottomId, parent: topId, start: m }));
    this.putStage(
      freeze<Stage>({
        ...old,
        id: topId,
        end: m,
        children: shardSet(emptyShards<StageId>(), valuesKey(rep, m), bottomId),
        done: false,
        ends: [],
      }),
    );
    this.stages = shardDelete(this.stages, id);
    this.ready = shardDelete(this.ready, id);
    for (const child of shardValues(old.children)) {
      this.updateStage(child, { parent: bottomId });
    }
    for (const t of old.ends) {
      this.updateTrial(t, (d) => {
        d.leaf = bottomId;
      });
    }
    this.addChild(parentId, valuesKey(rep, old.start), topId);
    this.stageCount++;
    this.splitCount++;
    this.refresh(topId);
    this.refresh(bottomId);
    return topId;
  }

  /**
   * Follows (and grows) the trial's path from stage `fromId` to step `until`, splitting
   * stages where the trial diverges or needs a boundary. Returns the stages passed.
   */
  private walk(t: TrialRecord, fromId: StageId, until: number): StageId[] {
    const path: StageId[] = [];
    let cur = fromId;
    let step = this.stage(cur).end;
    let ci = 0;
    while (step < until) {
      while ((t.cuts[ci] as number) <= step) ci++;
      const nextCut = t.cuts[ci] ?? until;
      const childId = shardGet(this.stage(cur).children, valuesKey(t, step));
      if (childId === undefined) {
        cur = this.newStage(cur, step, nextCut, t);
        path.push(cur);
        step = nextCut;
        continue;
      }
      const child = this.stage(childId);
      const limit = Math.min(child.end, nextCut);
      const d = child.rep === t.id ? limit : divergence(t, this.trial(child.rep), step, limit);
      if (d <= step) throw new InternalError(`divergence at ${d} <= ${step}`);
      if (d < child.end) {
        cur = this.split(childId, d);
        step = d;
      } else {
        cur = childId;
        step = child.end;
      }
      path.push(cur);
    }
    return path;
  }

  /** Adds the demand and the leaf mark of trial `t` to the stages of `path`. */
  private claim(t: TrialRecord, path: readonly StageId[]): void {
    const leaf = path[path.length - 1];
    for (const id of path) {
      const s = this.stage(id);
      this.updateStage(
        id,
        id === leaf ? { refs: s.refs + 1, ends: [...s.ends, t.id] } : { refs: s.refs + 1 },
      );
    }
    for (const id of path) this.refresh(id);
  }

  insert(input: TrialInput, forkOf: TrialRecord['forkOf'] = null, extraCut?: number): TrialId {
    const path = `trial ${JSON.stringify(input.id)}`;
    if (typeof input.id !== 'string' || input.id === '') {
      throw new ValidationError('trial.id', 'a non-empty string', input.id);
    }
    if (shardGet(this.trials, input.id)) {
      throw new TrialExistsError(input.id);
    }
    const { until, reports } = checkSteps(input.until, input.reports, path, 0);
    const hps = Object.keys(input.schedules).sort();
    const mergeKey = mergeKeyOf(input.params, hps);
    const cuts =
      extraCut !== undefined && extraCut > 0 ? [...new Set([...reports, extraCut])] : reports;
    cuts.sort((x, y) => x - y);
    let rootId = shardGet(this.roots, mergeKey);
    if (rootId === undefined) {
      rootId = rootIdOf(mergeKey);
      this.roots = shardSet(this.roots, mergeKey, rootId);
      this.putStage(
        freeze<Stage>({
          id: rootId,
          mergeKey,
          parent: null,
          start: 0,
          end: 0,
          rep: input.id,
          children: emptyShards(),
          refs: 0,
          done: true,
          ends: [],
        }),
      );
    }
    const record: TrialRecord = freeze(
      {
        id: input.id,
        mergeKey,
        params: input.params,
        schedules: input.schedules,
        hps,
        until,
        reports,
        cuts,
        leaf: rootId,
        status: 'active',
        forkOf,
      },
      true,
    );
    // The record is visible (as the rep of new stages) while its path is built.
    this.trials = shardSet(this.trials, record.id, record);
    const stages = this.walk(record, rootId, until);
    const leaf = stages[stages.length - 1] as StageId;
    this.trials = shardSet(this.trials, record.id, freeze({ ...record, leaf }));
    this.trialCount++;
    this.updateStage(rootId, { refs: this.stage(rootId).refs + 1 });
    this.claim(record, stages);
    return record.id;
  }

  extend(id: TrialId, until: number, reports: readonly number[] = []): void {
    const t = this.trial(id);
    if (t.status !== 'active') {
      throw new TrialStoppedError(id);
    }
    const checked = checkSteps(until, reports, `extend(${JSON.stringify(id)})`, t.until);
    const path = this.walk({ ...t, cuts: checked.reports }, t.leaf, checked.until);
    const newLeaf = path[path.length - 1] as StageId;
    this.updateStage(t.leaf, { ends: this.stage(t.leaf).ends.filter((x) => x !== id) });
    this.updateTrial(id, (d) => {
      d.until = checked.until;
      d.reports.push(...checked.reports);
      d.cuts.push(...checked.reports);
      d.leaf = newLeaf;
    });
    this.claim(t, path);
  }

  stop(id: TrialId): void {
    const t = this.trial(id);
    if (t.status === 'stopped') return;
    this.updateTrial(id, (d) => {
      d.status = 'stopped';
    });
    for (let cur: StageId | null = t.leaf; cur !== null;) {
      this.updateStage(cur, { refs: this.stage(cur).refs - 1 });
      this.refresh(cur);
      cur = this.stage(cur).parent;
    }
  }

  fork(input: ForkInput): TrialId {
    const source = this.trial(input.source);
    const at = input.at;
    if (typeof at !== 'number' || !Number.isSafeInteger(at) || at < 0 || at > source.until) {
      throw new ValidationError(
        'fork.at',
        `an integer step in [0, ${source.until}] (the source's demand)`,
        at,
      );
    }
    const schedules: Record<string, Canonical> = {};
    for (const h of Object.keys(input.schedules)) {
      if (!source.hps.includes(h)) {
        throw new ValidationError(
          `fork.schedules.${h}`,
          `a hyperparameter of the source trial (${source.hps.join(', ')})`,
          h,
        );
      }
    }
    for (const h of source.hps) {
      const own = source.schedules[h] as Canonical;
      const next = input.schedules[h];
      schedules[h] = next === undefined ? own : splice(own, next, at);
    }
    const inputTrial: TrialInput = {
      id: input.id,
      params: source.params,
      schedules,
      until: input.until,
      ...(input.reports ? { reports: input.reports } : {}),
    };
    if (input.until <= at)
      throw new ValidationError('fork.until', `an integer > ${at} (fork.at)`, input.until);
    return this.insert(inputTrial, { trial: source.id, at }, at);
  }

  markDone(id: StageId, force: boolean): void {
    const s = this.stage(id);
    if (s.parent === null) throw new MarkDoneError(id, 'root', null);
    if (s.done) throw new MarkDoneError(id, 'done', s.parent);
    if (!force && !this.stage(s.parent).done)
      throw new MarkDoneError(id, 'parentNotDone', s.parent);
    this.updateStage(id, { done: true });
    this.refresh(id);
    for (const child of shardValues(s.children)) this.refresh(child);
  }
}

function edit(tree: StageTree, fn: (e: Editor) => void): StageTree {
  const e = new Editor(tree);
  fn(e);
  return e.result();
}

/** Adds a trial; its path is merged with every trial of the same merge key. */
export function insertTrial(tree: StageTree, trial: TrialInput): StageTree {
  return edit(tree, (e) => e.insert(trial));
}

/** Adds many trials in one immutable update (much faster than one at a time). */
export function insertTrials(tree: StageTree, trials: Iterable<TrialInput>): StageTree {
  return edit(tree, (e) => {
    for (const t of trials) e.insert(t);
  });
}

/** Extends an active trial's demand to `until`, reporting there and at `reports`. */
export function extendTrial(
  tree: StageTree,
  id: TrialId,
  until: number,
  reports: readonly number[] = [],
): StageTree {
  return edit(tree, (e) => e.extend(id, until, reports));
}

/** Withdraws a trial's demand; stages nobody else demands stop being ready. */
export function stopTrial(tree: StageTree, id: TrialId): StageTree {
  return edit(tree, (e) => e.stop(id));
}

/** Adds a trial continuing another trial's state from a step, with new schedules from there. */
export function forkTrial(tree: StageTree, fork: ForkInput): StageTree {
  return edit(tree, (e) => e.fork(fork));
}

/**
 * Records that a stage has been trained. Its parent must be done, unless `force`: a
 * worker trained a stage that a new trial split while it ran, so the lower piece is
 * trained while the upper piece's end state was never kept.
 */
/**
 * Splits stage `id` at step `m` (strictly inside it) into [start, m), returned as `top`,
 * and [m, end), which keeps its children, demand and done flag. A task cut short at `m`
 * (a paused study) trained the top piece.
 */
export function splitStage(
  tree: StageTree,
  id: StageId,
  m: number,
): { readonly tree: StageTree; readonly top: StageId } {
  let top = '';
  const out = edit(tree, (e) => {
    top = e.split(id, m);
  });
  return { tree: out, top };
}

export function markDone(
  tree: StageTree,
  id: StageId,
  options: { force?: boolean } = {},
): StageTree {
  return edit(tree, (e) => e.markDone(id, options.force ?? false));
}

// ---------------------------------------------------------------- queries

export function getStage(tree: StageTree, id: StageId): Stage {
  const s = shardGet(tree.stages, id);
  if (!s) throw new NotFoundError('stage', id);
  return s;
}

export function getTrial(tree: StageTree, id: TrialId): TrialRecord {
  const t = shardGet(tree.trials, id);
  if (!t) throw new NotFoundError('trial', id);
  return t;
}

export function hasStage(tree: StageTree, id: StageId): boolean {
  return shardGet(tree.stages, id) !== undefined;
}

export function hasTrial(tree: StageTree, id: TrialId): boolean {
  return shardGet(tree.trials, id) !== undefined;
}

/** Every stage except the roots. */
export function* allStages(tree: StageTree): Generator<Stage> {
  for (const s of shardValues(tree.stages)) if (s.parent !== null) yield s;
}

export function* allTrials(tree: StageTree): Generator<TrialRecord> {
  yield* shardValues(tree.trials);
}

export function rootIds(tree: StageTree): StageId[] {
  return shardKeyList(tree.roots)
    .map((k) => shardGet(tree.roots, k) as StageId)
    .sort();
}

/** Stages that are demanded, not done, and whose parent is done; sorted by id unless `sorted: false`. */
export function readyStages(tree: StageTree, options: { sorted?: boolean } = {}): Stage[] {
  const out: Stage[] = [];
  for (const id of shardKeyList(tree.ready)) out.push(getStage(tree, id));
  return options.sorted === false
    ? out
    : out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

export function isDemanded(tree: StageTree, id: StageId): boolean {
  return getStage(tree, id).refs > 0;
}

/** The stages of a trial's path from the first one after the root to its leaf. */
export function pathOf(tree: StageTree, id: TrialId): Stage[] {
  const out: Stage[] = [];
  for (
    let s = getStage(tree, getTrial(tree, id).leaf);
    s.parent !== null;
    s = getStage(tree, s.parent)
  ) {
    out.push(s);
  }
  return out.reverse();
}

/** The children of a stage, sorted by id (an order that does not depend on insertion order). */
export function childrenOf(tree: StageTree, id: StageId): Stage[] {
  return [...shardValues(getStage(tree, id).children)]
    .map((c) => getStage(tree, c))
    .sort((a, b) => (a.id < b.id ? -1 : 1));
}

function* subtree(tree: StageTree, id: StageId): Generator<Stage> {
  const stack = [id];
  while (stack.length > 0) {
    const s = getStage(tree, stack.pop() as StageId);
    yield s;
    for (const c of shardValues(s.children)) stack.push(c);
  }
}

/** Every trial whose path passes through the stage (active or stopped), sorted. */
export function trialsThrough(tree: StageTree, id: StageId): TrialId[] {
  const out: TrialId[] = [];
  for (const s of subtree(tree, id)) out.push(...s.ends);
  return out.sort();
}

/** Active trials through the stage that asked for a metric at its end, sorted. */
export function reportsAt(tree: StageTree, id: StageId): TrialId[] {
  const end = getStage(tree, id).end;
  return trialsThrough(tree, id).filter((t) => {
    const trial = getTrial(tree, t);
    return trial.status === 'active' && trial.reports.includes(end);
  });
}

/** The hyperparameter values of a stage at one of its steps. */
export function stageValues(tree: StageTree, id: StageId, step?: number): Record<string, Value> {
  const s = getStage(tree, id);
  return valuesAt(getTrial(tree, s.rep), step ?? s.start);
}

/** Unique steps of the tree: the length of every stage that is demanded or done. */
export function treeSteps(tree: StageTree): number {
  let sum = 0;
  for (const s of allStages(tree)) if (s.refs > 0 || s.done) sum += s.end - s.start;
  return sum;
}

/** How far a trial has got: the end of the deepest done stage on its path. */
export function trialProgress(tree: StageTree, id: TrialId): number {
  for (
    let s = getStage(tree, getTrial(tree, id).leaf);
    s.parent !== null;
    s = getStage(tree, s.parent)
  ) {
    if (s.done) return s.end;
  }
  return 0;
}

/**
 * Steps the trials would train if each ran alone: an active trial its demand, a stopped
 * trial as far as it got.
 */
export function trialSteps(tree: StageTree): number {
  let sum = 0;
  for (const t of allTrials(tree))
    sum += t.status === 'active' ? t.until : trialProgress(tree, t.id);
  return sum;
}

export interface TreeStats {
  readonly trials: number;
  readonly stages: number;
  readonly treeSteps: number;
  readonly trialSteps: number;
  /** trialSteps / treeSteps (1 when the tree is empty). */
  readonly idealSavings: number;
}

export function treeStats(tree: StageTree): TreeStats {
  const tree_ = treeSteps(tree);
  const trial = trialSteps(tree);
  return {
    trials: tree.counts.trials,
    stages: tree.counts.stages,
    treeSteps: tree_,
    trialSteps: trial,
    idealSavings: tree_ === 0 ? 1 : trial / tree_,
  };
}
