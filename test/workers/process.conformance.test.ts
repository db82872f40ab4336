import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runStudy } from '../../src/cli/run.js';
import { StudyStore } from '../../src/store/index.js';
import { quadraticAlone } from '../support/real-run.js';
import { describeBackendConformance } from './conformance.js';

const TRAINER = join(resolve(import.meta.dirname, '../..'), 'dist', 'trainer', 'quadratic.js');

describeBackendConformance('process', {
  trainer: { kind: 'node', module: TRAINER, export: 'QuadraticTrainer' },
  run: async (study) => {
    const dir = mkdtempSync(join(tmpdir(), 'stagetree-conf-'));
    const file = join(dir, 'study.json');
    writeFileSync(file, JSON.stringify({ name: study.name }));
    const out = await runStudy(file, study, { db: join(dir, 'c.db') }, { log: () => undefined });
    const store = StudyStore.open(out.paths.db);
    try {
      return {
        log: store.events(),
        options: out.engineOptions,
      };
    } finally {
      store.close();
    }
  },
  alone: (_study, spec, step) => quadraticAlone(spec, step),
});
