import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import { Executor } from '../../src/executor/index.js';
import { smallStudy } from '../support/sim-study.js';

/** What `Executor.open` refuses before it touches the store. */
describe('Executor.open validates its studies first', () => {
  const dir = mkdtempSync(join(tmpdir(), 'stagetree-exec-val-'));
  const options = { db: join(dir, 'x.db'), checkpoints: join(dir, 'ck') };

  it('refuses no studies, two of one name, and studies of different metrics', async () => {
    const a = smallStudy({ name: 'a' });
    const b = smallStudy({ name: 'b', metric: { name: 'loss', mode: 'min' } });
    const cases: [Parameters<typeof Executor.open>[1], string][] = [
      [[], 'studies: expected at least one study, got [] (array)'],
      [
        [
          { study: a, file: 'a.json' },
          { study: a, file: 'a2.json' },
        ],
        'studies[1].name: expected a name no other study given has, got "a" (string)',
      ],
      [
        [
          { study: a, file: 'a.json' },
          { study: b, file: 'b.json' },
        ],
        `studies[1].metric.name: expected "${a.metric.name}", the metric of the executor's studies (a stage they share has one value), got "loss" (string)`,
      ],
    ];
    let checked = 0;
    for (const [sources, message] of cases) {
      const e = await Executor.open(options, sources).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ValidationError);
      expect((e as Error).message).toBe(message);
      checked++;
    }
    expect(checked).toBe(3);
    // Nothing was created.
    expect(existsSync(options.db)).toBe(false);
  });
});
