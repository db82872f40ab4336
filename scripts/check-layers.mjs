#!/usr/bin/env node
// Checks that src/ layers import only from layers listed before them (docs/architecture.md)
// and that there are no import cycles between files. Exits non-zero with one line per problem.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

/** Layer order: a file may import its own layer or an earlier one. */
const LAYERS = [
  ['errors.ts'],
  ['schedule'],
  ['study'],
  ['tree'],
  ['tuner'],
  ['scheduler'],
  ['engine'],
  ['workers'],
  ['agent', 'trainer'],
  ['store'],
  ['gen'],
  ['rpc'],
  ['executor'],
  ['sdk', 'report', 'cli'],
];
const root = resolve(import.meta.dirname, '..', 'src');

function layerOf(file) {
  const top = relative(root, file).split('/')[0];
  const i = LAYERS.findIndex((names) => names.includes(top));
  return { top, index: i };
}

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.ts') ? [p] : [];
  });
}

const problems = [];
const graph = new Map();
const importRe =
  /(?:^|\n)\s*(?:import|export)\s[^'"`;]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;
for (const file of walk(root)) {
  const src = readFileSync(file, 'utf8');
  const from = layerOf(file);
  if (from.index < 0)
    problems.push(`${relative(root, file)}: folder "${from.top}" is not a known layer`);
  const deps = [];
  for (const m of src.matchAll(importRe)) {
    const spec = m[1] ?? m[2];
    if (!spec.startsWith('.')) continue;
    const target = resolve(dirname(file), spec.replace(/\.js$/, '.ts'));
    deps.push(target);
    const to = layerOf(target);
    if (to.top === 'gen' && from.top !== 'rpc' && from.top !== 'gen') {
      problems.push(`${relative(root, file)} imports generated code (${spec}); only src/rpc/ may`);
    } else if (to.index > from.index) {
      problems.push(
        `${relative(root, file)} (layer ${from.top}) imports ${spec} from a later layer (${to.top})`,
      );
    }
  }
  graph.set(file, deps);
}

// Cycle detection (iterative colouring DFS).
const state = new Map();
for (const start of graph.keys()) {
  if (state.get(start)) continue;
  const stack = [[start, 0]];
  const trail = [];
  state.set(start, 1);
  trail.push(start);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const deps = graph.get(top[0]) ?? [];
    if (top[1] < deps.length) {
      const next = deps[top[1]++];
      if (!graph.has(next)) continue;
      const s = state.get(next);
      if (s === 1) {
        const cycle = trail
          .slice(trail.indexOf(next))
          .concat(next)
          .map((f) => relative(root, f));
        problems.push(`import cycle: ${cycle.join(' -> ')}`);
      } else if (!s) {
        state.set(next, 1);
        trail.push(next);
        stack.push([next, 0]);
      }
    } else {
      state.set(top[0], 2);
      trail.pop();
      stack.pop();
    }
  }
}

if (problems.length > 0) {
  for (const p of problems) console.error(`check-layers: ${p}`);
  process.exit(1);
}
console.log(`check-layers: ${graph.size} files, layers and cycles ok`);
