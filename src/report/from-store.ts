import { existsSync } from 'node:fs';
import { StudyStore } from '../store/index.js';
import type { Study } from '../study/index.js';
import { buildReport } from './report.js';
import type { StudyReport } from './report.js';

/**
 * Reads what the report needs from a study store (and the store of a trial-based run of
 * the same study beside it, when there is one) and builds the report.
 */
export function reportFromStore(db: string, study: Study, baselineDb: string | null): StudyReport {
  const store = StudyStore.open(db);
  try {
    const names = store.studyNames();
    const baseline =
      baselineDb !== null && existsSync(baselineDb) ? readBaseline(baselineDb, study.name) : null;
    return buildReport({
      study,
      log: store.events(),
      primary: names[0] ?? study.name,
      finished: store.status(study.name).finished,
      trials: store.trials(study.name),
      metrics: store.metrics({ study: study.name }),
      attempts: store.attempts(),
      baseline,
    });
  } finally {
    store.close();
  }
}

function readBaseline(
  db: string,
  name: string,
): NonNullable<Parameters<typeof buildReport>[0]['baseline']> | null {
  const store = StudyStore.open(db);
  try {
    if (!store.studyNames().includes(name)) return null;
    return { log: store.events(), finished: store.status(name).finished };
  } finally {
    store.close();
  }
}
