import { readFileSync } from 'node:fs';
import { expect, test } from 'vitest';
import { gridConfigs, parseStudy, STUDY_LIMITS } from '../../src/study/index.js';

test('the example in docs/study-format.md parses and gives 24 configurations', () => {
  const doc = readFileSync(new URL('../../docs/study-format.md', import.meta.url), 'utf8');
  const json = /```json\n([\s\S]*?)\n```/.exec(doc)?.[1];
  expect(json).toBeDefined();
  const study = parseStudy(JSON.parse(json ?? ''));
  const configs = gridConfigs(study);
  expect(configs).toHaveLength(24);
  // 6 distinct prefixes over the first 80 epochs: (lr.init, weightDecay)
  const prefixes = new Set(
    configs.map((c) => {
      const lr = c.schedules.lr;
      return lr?.kind === 'multistep' ? `${lr.init}|${c.canonical.weightDecay?.hash}` : '';
    }),
  );
  expect(prefixes.size).toBe(6);
});

const doc = readFileSync(new URL('../../docs/study-format.md', import.meta.url), 'utf8');

/** The text of the section under `## title`, up to the next `## `. */
function section(title: string): string {
  const start = doc.indexOf(`## ${title}\n`);
  expect(start).toBeGreaterThanOrEqual(0);
  const end = doc.indexOf('\n## ', start + 1);
  return doc.slice(start, end < 0 ? undefined : end);
}

/** The fields a strict object allows, read from the error for an unknown field there. */
function allowedFields(input: Record<string, unknown>): string[] {
  try {
    parseStudy(input);
  } catch (e) {
    const list = /takes ([^)]*)\)/.exec((e as Error).message)?.[1];
    if (list) return list.split(', ');
  }
  throw new Error('expected an unknown-field error');
}

const base = {
  name: 'x',
  space: { lr: 0.1 },
  steps: 10,
  tuner: { kind: 'grid' },
  metric: { name: 'm', mode: 'min' },
  trainer: { kind: 'sim', stepSeconds: 1 },
};

test('the Limits section gives every STUDY_LIMITS value, and nothing else', () => {
  const rows = [...section('Limits').matchAll(/^\| `(\w+)` +\| ([\d,]+) +\|/gm)];
  const documented = Object.fromEntries(
    rows.map((m): [string, number] => [m[1] ?? '', Number(m[2]?.replace(/,/g, ''))]),
  );
  expect(documented).toEqual({ ...STUDY_LIMITS });
});

test('the Fields table names every study field', () => {
  const fields = allowedFields({ ...base, unknownField: 1 });
  expect(fields).toContain('taskTimeout');
  const table = section('Fields');
  for (const f of fields) expect(table).toContain(`| \`${f}\``);
});

test('every node and python trainer field is documented', () => {
  const trainers = section('Fields');
  for (const kind of ['node', 'python']) {
    const fields = allowedFields({ ...base, trainer: { kind, unknownField: 1 } });
    expect(fields).toContain('version');
    for (const f of fields.filter((x) => x !== 'kind')) expect(trainers).toContain(`\`${f}\``);
  }
  expect(doc).not.toMatch(/come later/);
});
