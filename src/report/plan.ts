import type { Value } from '../schedule/index.js';
import type { Study } from '../study/index.js';
import {
  childrenOf,
  emptyTree,
  getStage,
  getTrial,
  insertTrials,
  rootIds,
  stageValues,
  trialsThrough,
  treeStats,
} from '../tree/index.js';
import type { Stage, StageTree } from '../tree/index.js';
import { upfrontTrials } from '../tuner/index.js';

/** What `stagetree plan --json` prints. */
export interface PlanSummary {
  readonly trials: number;
  /** Steps the trials would train if each ran alone (trials x steps). */
  readonly trialSteps: number;
  /** Unique steps of the stage tree: what stagetree trains. */
  readonly treeSteps: number;
  readonly stages: number;
  /** trialSteps / treeSteps. */
  readonly idealSavings: number;
}

export interface Plan {
  readonly summary: PlanSummary;
  readonly tree: StageTree;
}

/** Merges a study's up-front trials (grid, random) into a stage tree. */
export function planStudy(study: Study): Plan {
  const tree = insertTrials(emptyTree(), upfrontTrials(study));
  const stats = treeStats(tree);
  return {
    summary: {
      trials: stats.trials,
      trialSteps: stats.trialSteps,
      treeSteps: stats.treeSteps,
      stages: stats.stages,
      idealSavings: Number(stats.idealSavings.toFixed(4)),
    },
    tree,
  };
}

/** Values for reading: numbers to 4 significant digits. */
function fmt(v: Value): string {
  return typeof v === 'number' ? String(Number(v.toPrecision(4))) : JSON.stringify(v);
}

/**
 * "lr=0.1 bs=128" for the values at `from`, with "lr=0.1..0.0012" for a value that
 * differs at `to - 1`; values equal to the parent's last ones are left out.
 */
function describe(
  tree: StageTree,
  first: Stage,
  last: Stage,
  parentEnd: Readonly<Record<string, Value>> | null,
): string {
  const a = stageValues(tree, first.id, first.start);
  const b = stageValues(tree, last.id, last.end - 1);
  const parts: string[] = [];
  for (const [h, v] of Object.entries(a)) {
    const end = b[h] as Value;
    const moved = end !== v;
    if (!moved && parentEnd && parentEnd[h] === v) continue;
    parts.push(moved ? `${h}=${fmt(v)}..${fmt(end)}` : `${h}=${fmt(v)}`);
  }
  return parts.length > 0 ? parts.join(' ') : '(same values)';
}

export interface RenderOptions {
  /** Levels of branching to show below each root (default 3). */
  readonly depth?: number;
  /** Branches shown per fork before "... and N more" (default 6). */
  readonly width?: number;
}

/** Follows single-child stages down to where the path branches or ends. */
function chainEnd(tree: StageTree, s: Stage): { last: Stage; stages: number } {
  let last = s;
  let stages = 1;
  for (;;) {
    const kids = childrenOf(tree, last.id);
    if (kids.length !== 1) return { last, stages };
    last = kids[0] as Stage;
    stages++;
  }
}

/**
 * The top of the tree as text. Each line is a branch: a run of stages with no fork
 * inside, its step range, the hyperparameter values that are new there, how many
 * trials pass through it and how many stages (evaluation points cut stages) it holds.
 */
export function renderTree(tree: StageTree, options: RenderOptions = {}): string {
  const depth = options.depth ?? 3;
  const width = options.width ?? 6;
  const lines: string[] = [];
  for (const rootId of rootIds(tree)) {
    const root = getStage(tree, rootId);
    const params = getTrial(tree, root.rep).params;
    lines.push(`params ${JSON.stringify(params)}: ${trialsThrough(tree, rootId).length} trials`);
    const visit = (parent: Stage, prefix: string, level: number): void => {
      const parentEnd =
        parent.parent === null ? null : stageValues(tree, parent.id, parent.end - 1);
      const branches = childrenOf(tree, parent.id)
        .map((first) => {
          const { last, stages } = chainEnd(tree, first);
          return { first, last, stages, text: describe(tree, first, last, parentEnd) };
        })
        .sort((x, y) => (x.text < y.text ? -1 : x.text > y.text ? 1 : 0));
      const shown = branches.slice(0, width);
      shown.forEach((br, i) => {
        const lastLine = i === shown.length - 1 && branches.length <= width;
        const n = trialsThrough(tree, br.first.id).length;
        const stages = br.stages > 1 ? `, ${br.stages} stages` : '';
        lines.push(
          `${prefix}${lastLine ? '└─' : '├─'} [${br.first.start}, ${br.last.end}) ${br.text}  (${n} trial${n === 1 ? '' : 's'}${stages})`,
        );
        const inner = prefix + (lastLine ? '   ' : '│  ');
        if (level + 1 < depth) visit(br.last, inner, level + 1);
        else if (childrenOf(tree, br.last.id).length > 0) lines.push(`${inner}└─ ...`);
      });
      if (branches.length > width)
        lines.push(`${prefix}└─ ... and ${branches.length - width} more`);
    };
    visit(root, '  ', 0);
  }
  return lines.join('\n');
}

/** The readable form of `stagetree plan`. */
export function renderPlan(study: Study, plan: Plan, options: RenderOptions = {}): string {
  const s = plan.summary;
  return [
    `study ${study.name}: ${s.trials} trials (${study.tuner.kind}), ${s.stages} stages`,
    `  trial steps ${s.trialSteps} (each trial alone), tree steps ${s.treeSteps} (stagetree)`,
    `  ideal savings ${s.idealSavings.toFixed(2)}x`,
    '',
    renderTree(plan.tree, options),
  ].join('\n');
}
