/**
 * Child process for the lock tests: opens the study store given as argv[2], acquires it
 * at time argv[3], prints "acquired <pid>" and waits until the parent kills it.
 */
import { StudyStore } from '../../src/store/index.js';

const [file, since] = process.argv.slice(2);
if (file === undefined || since === undefined) {
  throw new Error('usage: owner-child.ts <store file> <since>');
}
const store = StudyStore.open(file);
store.acquire(Number(since));
process.stdout.write(`acquired ${process.pid}\n`);
setInterval(() => undefined, 60_000);
