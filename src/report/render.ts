import type { Baseline, StudyReport, TrialReport } from './report.js';

/** A number for people: up to 4 significant digits, integers as they are. */
export function fmt(x: number | null): string {
  if (x === null) return '-';
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Number.isInteger(x)) return String(x);
  return Number(x.toPrecision(4)).toString();
}

const times = (x: number): string => `${x.toFixed(2)}x`;
const gpuH = (h: number): string => `${fmt(h)} GPU-h`;
const label = (b: Baseline): string => (b.estimated ? 'estimated' : 'measured');

/** The savings in two lines: what `run` prints at its end. */
export function savingsLines(r: StudyReport): [string, string] {
  const tb = r.baselines.trialBased;
  const st = r.baselines.strongest;
  const best = r.best
    ? `best ${r.best.trial} ${r.metric.name} ${fmt(r.best.value)} at step ${r.best.step}`
    : 'no metric yet';
  return [
    `savings: ${times(r.savings)} fewer GPU-hours than one GPU per trial (${gpuH(r.stageTree.gpuHours)} against ${gpuH(tb.gpuHours)}, ${label(tb)}); ` +
      `${times(r.savingsVsStrongest)} against the strongest trial-based execution (${label(st)})`,
    `trained ${r.stageTree.treeSteps} unique steps for ${r.trials.length} trials that train ${r.trialSteps} alone (ideal ${times(r.idealSavings)}); ${best}`,
  ];
}

/** The trials, best first (by their best metric; trials without one last). */
export function rankedTrials(r: StudyReport): TrialReport[] {
  const sign = r.metric.mode === 'max' ? -1 : 1;
  const key = (t: TrialReport): number => {
    const v = t.best?.value;
    return v === undefined || Number.isNaN(v) ? Number.POSITIVE_INFINITY : sign * v;
  };
  return [...r.trials].sort((a, b) => key(a) - key(b) || a.id.localeCompare(b.id));
}

const cell = (s: string): string => s.replace(/\|/g, '\\|');

/** The per-trial table (markdown), the best `limit` rows (all by default). */
export function trialTable(r: StudyReport, limit = Number.POSITIVE_INFINITY): string {
  const hps = [...new Set(r.trials.flatMap((t) => Object.keys(t.params)))].sort();
  const head = ['trial', ...hps, 'status', 'steps', r.metric.name, `best ${r.metric.name}`, 'at'];
  const rows = rankedTrials(r)
    .slice(0, limit)
    .map((t) => [
      t.id,
      ...hps.map((h) => String(t.params[h] ?? '')),
      t.status,
      String(t.steps),
      fmt(t.metric),
      fmt(t.best?.value ?? null),
      t.best ? String(t.best.step) : '-',
    ]);
  const line = (xs: readonly string[]): string => `| ${xs.map(cell).join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

/** The whole report as markdown. */
export function renderMarkdown(r: StudyReport): string {
  const tb = r.baselines.trialBased;
  const st = r.baselines.strongest;
  const wall = (s: number | null): string => (s === null ? '-' : `${fmt(s)} s`);
  const [a, b] = savingsLines(r);
  const s = r.sources;
  return [
    `# ${r.study}: ${r.finished ? 'finished' : 'not finished'}`,
    '',
    a,
    '',
    b,
    '',
    '## GPU-hours',
    '',
    '| execution | GPU-hours | wall time | savings | how |',
    '| --- | --- | --- | --- | --- |',
    `| stage tree (this run) | ${fmt(r.stageTree.gpuHours)} | ${wall(r.stageTree.wallSeconds)} | 1.00x | measured: ${r.stageTree.tasks} tasks, ${r.stageTree.stepsTrained} steps trained, ${r.stageTree.processStarts} process starts |`,
    `| one GPU per trial | ${fmt(tb.gpuHours)} | ${wall(tb.wallSeconds)} | ${times(r.savings)} | ${cell(tb.how)}${tb.modelGpuHours !== undefined ? ` (the cost model estimated ${fmt(tb.modelGpuHours)})` : ''} |`,
    `| strongest trial-based | ${fmt(st.gpuHours)} | ${wall(st.wallSeconds)} | ${times(r.savingsVsStrongest)} | ${cell(st.how)} |`,
    '',
    `Ideal savings of the tree (trial steps / unique steps): ${times(r.idealSavings)} (${r.trialSteps} / ${r.stageTree.treeSteps}).`,
    '',
    '## Where the savings came from (estimated GPU-hours)',
    '',
    '| source | GPU-hours |',
    '| --- | --- |',
    `| shared prefixes trained once | ${fmt(s.sharedPrefixes)} |`,
    `| stages reused from other studies or earlier runs (${r.stageTree.stepsReused} steps) | ${fmt(s.otherStudies)} |`,
    `| process reuse (starts saved) | ${fmt(s.processReuse)} |`,
    `| packing (GPU shares) | ${fmt(s.packing)} |`,
    `| right-sizing | ${fmt(s.rightSizing)} |`,
    `| not explained by the estimate | ${fmt(s.other)} |`,
    '',
    '## Trials',
    '',
    trialTable(r),
    '',
  ].join('\n');
}
