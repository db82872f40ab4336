/**
 * Child process for the crash test: appends batches of log entries to the study store
 * given as argv[2] forever, printing the number of committed events after each batch,
 * until the parent kills it (SIGKILL, mid-write).
 */
import { StudyStore } from '../../src/store/index.js';
import { BATCH, metric, propose } from './helpers.js';

const file = process.argv[2];
if (file === undefined) throw new Error('usage: writer.ts <store file>');
const store = StudyStore.open(file);
store.initStudy('crash', { name: 'crash', metric: { name: 'loss', mode: 'min' } }, 0);
for (let batch = 0; ; batch++) {
  const entries = [];
  for (let i = 0; i < BATCH / 2; i++) {
    const trial = `t${batch * (BATCH / 2) + i + 1}`;
    entries.push(propose(batch, trial, 10), metric(batch, trial, 10, batch + i / 100));
  }
  store.append(entries, batch);
  process.stdout.write(`${store.eventCount()}\n`);
}
