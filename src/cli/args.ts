import { InvalidArgumentError } from 'commander';

/** Command-line parsers shared by the commands: a bad value is a usage error (exit 2). */

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError(`expected an integer >= 1, got ${value}`);
  }
  return n;
}

export function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) {
    throw new InvalidArgumentError(`expected a number > 0, got ${value}`);
  }
  return n;
}

/** Which checkpoints outlive the studies (`ExecutorOptions.retain`). */
export function retainChoice(value: string): 'best' | 'all' {
  if (value !== 'best' && value !== 'all') {
    throw new InvalidArgumentError(`expected "best" or "all", got ${value}`);
  }
  return value;
}

export function baselineChoice(value: string): 'trial-based' {
  if (value !== 'trial-based') {
    throw new InvalidArgumentError(`expected "trial-based", got ${value}`);
  }
  return value;
}
