import { readFileSync } from 'node:fs';
import { expect, test } from 'vitest';
import { gridConfigs, parseStudy } from '../../src/study/index.js';

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
