import { describe, expect, test } from 'vitest';
import { lookupBy, parseStudy, parseStudyText } from '../../src/study/index.js';
import type { Study } from '../../src/study/index.js';
import { rejected, rejection, studyWith } from './fixtures.js';

/** A minimal study with `extra` fields. */
const study = (extra: Record<string, unknown> = {}): Record<string, unknown> =>
  studyWith({ lr: { choice: [0.1, 0.2] }, batchSize: { choice: [128, 256] } }, extra);

describe('name', () => {
  test.each(['resnet20-cifar10', 'a', 'A.b_c-1', '_x', '-x', 'x.', 'x'.repeat(100)])(
    'accepts %j',
    (name) => {
      expect(parseStudy(study({ name })).name).toBe(name);
    },
  );

  test.each([
    ['empty', ''],
    ['"."', '.'],
    ['".."', '..'],
    ['hidden', '.hidden'],
    ['a path', 'a/b'],
    ['a parent path', '../x'],
    ['a Windows path', 'a\\b'],
    ['a space', 'my study'],
    ['a NUL', 'a\u0000b'],
    ['non-ASCII', 'étude'],
    ['101 characters', 'x'.repeat(101)],
  ])('rejects %s', (_label, name) => {
    const e = rejection(study({ name }));
    expect(e.path).toBe('name');
    expect(e.expected).toBe(
      'a study name: 1 to 100 characters from A-Z, a-z, 0-9, ".", "_" and "-", not starting with "."',
    );
  });
});

describe('resources: CPU-only studies', () => {
  test('gpus 0 is a CPU-only study: no GPU claimed, cluster 0', () => {
    const s = parseStudy(study({ resources: { gpus: 0 }, workers: 8 }));
    expect(s.cpuOnly).toBe(true);
    expect(s.resources).toEqual({ gpus: 0, cluster: 0 });
    expect(lookupBy(s.resources.gpus, { batchSize: 128 })).toBe(0);
  });

  test('a table of zeros is CPU-only too; cluster 0 may be written', () => {
    const s = parseStudy(
      study({
        resources: { gpus: { by: 'batchSize', values: { '128': 0 }, default: 0 }, cluster: 0 },
      }),
    );
    expect(s.cpuOnly).toBe(true);
    expect(s.resources.cluster).toBe(0);
  });

  test('a GPU study is not CPU-only and keeps its cluster default', () => {
    const s = parseStudy(study({ resources: { gpus: 0.5 }, workers: 3 }));
    expect(s.cpuOnly).toBe(false);
    expect(s.resources.cluster).toBe(2);
    expect(parseStudy(study()).cpuOnly).toBe(false);
  });

  test('a table mixing 0 and shares > 0 is rejected at the zero share', () => {
    const mixed = (values: Record<string, number>, dflt: number) =>
      study({ resources: { gpus: { by: 'batchSize', values, default: dflt } } });
    const e = rejection(mixed({ '128': 0.5 }, 0));
    expect(e.path).toBe('resources.gpus.default');
    expect(e.message).toBe(
      'resources.gpus.default: expected a GPU share in (0, 1] like the others (0, CPU-only, ' +
        'only when every share is 0: a stage cannot claim no GPU while another claims one), ' +
        'got 0 (number)',
    );
    expect(rejection(mixed({ '128': 0, '256': 0 }, 1)).path).toBe('resources.gpus.values.128');
  });

  test('a CPU-only study with a cluster of GPUs is a contradiction', () => {
    const e = rejection(study({ resources: { gpus: 0, cluster: 4 } }));
    expect(e.message).toBe(
      'resources.cluster: expected no cluster, or 0: a CPU-only study (every GPU share 0) ' +
        'claims no GPU, got 4 (number)',
    );
    expect(rejection(study({ resources: { gpus: 1, cluster: 0 } })).path).toBe('resources.cluster');
  });

  test('negative and above-one shares are still rejected', () => {
    expect(rejection(study({ resources: { gpus: -1 } })).path).toBe('resources.gpus');
    expect(rejection(study({ resources: { gpus: 1.5 } })).path).toBe('resources.gpus');
    expect(
      rejection(
        study({ resources: { gpus: { by: 'batchSize', values: { '1': -1 }, default: 0 } } }),
      ).path,
    ).toBe('resources.gpus.values.1');
  });
});

describe('lookupBy reads own entries only', () => {
  const table = { by: 'opt', values: { sgd: 0.5 }, default: 1 };

  test('a value named like an Object.prototype member gives the default', () => {
    for (const opt of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
      expect(lookupBy(table, { opt })).toBe(1);
    }
    expect(lookupBy(table, { opt: 'sgd' })).toBe(0.5);
    // a hyperparameter named like a prototype member is absent unless it is an own value
    expect(lookupBy({ ...table, by: 'constructor' }, {})).toBe(1);
  });

  test('a "__proto__" entry of a table is data: kept and checked', () => {
    const text = JSON.stringify(study()).replace(
      '"name"',
      '"resources":{"gpus":{"by":"opt","values":{"__proto__":0.25,"sgd":0.5},"default":1}},"name"',
    );
    const s: Study = parseStudyText(text);
    expect(lookupBy(s.resources.gpus, { opt: '__proto__' })).toBe(0.25);
    expect(lookupBy(s.resources.gpus, { opt: 'sgd' })).toBe(0.5);
    const bad = text.replace('"__proto__":0.25', '"__proto__":"x"');
    expect(rejected(() => parseStudyText(bad)).message).toBe(
      'resources.gpus.values.__proto__: expected a number >= 0, got "x" (string)',
    );
    const stepScale = JSON.stringify(
      study({
        trainer: {
          kind: 'sim',
          stepSeconds: 1,
          stepScale: { by: 'opt', values: { a: 1 }, default: 1 },
        },
      }),
    ).replace('"values":{"a":1}', '"values":{"__proto__":-2}');
    expect(rejected(() => parseStudyText(stepScale)).path).toBe(
      'trainer.stepScale.values.__proto__',
    );
  });
});

describe('taskTimeout', () => {
  test('absent is null (automatic); seconds from 1 to 7 days are kept', () => {
    expect(parseStudy(study()).taskTimeout).toBeNull();
    expect(parseStudy(study({ taskTimeout: 1 })).taskTimeout).toBe(1);
    expect(parseStudy(study({ taskTimeout: 90.5 })).taskTimeout).toBe(90.5);
    expect(parseStudy(study({ taskTimeout: 604_800 })).taskTimeout).toBe(604_800);
  });

  test.each([0, 0.5, -1, 604_801, '60', null, 1e308])('rejects %j', (taskTimeout) => {
    const e = rejection(study({ taskTimeout }));
    expect(e.path).toBe('taskTimeout');
    expect(e.expected).toBe('a number of seconds from 1 to 604800 (7 days)');
  });
});

describe('trainer.version', () => {
  const node = { kind: 'node', module: './trainer.js' };
  const python = { kind: 'python', module: 'pkg.mod:Trainer' };

  test('absent is null; a declared version is kept (node and python)', () => {
    for (const trainer of [node, python]) {
      expect(parseStudy(study({ trainer })).trainer).toMatchObject({ version: null });
      const v = 'git:3f2a9c1 (2024-05-01)';
      expect(parseStudy(study({ trainer: { ...trainer, version: v } })).trainer).toMatchObject({
        version: v,
      });
      expect(
        parseStudy(study({ trainer: { ...trainer, version: 'v'.repeat(200) } })).trainer,
      ).toMatchObject({ version: 'v'.repeat(200) });
    }
  });

  test.each(['', 'v'.repeat(201), 3, null])('rejects %j', (version) => {
    for (const trainer of [node, python]) {
      const e = rejection(study({ trainer: { ...trainer, version } }));
      expect(e.path).toBe('trainer.version');
      expect(e.expected).toBe('a non-empty string of at most 200 characters');
    }
  });

  test('a sim trainer has no version', () => {
    expect(rejection(study({ trainer: { kind: 'sim', stepSeconds: 1, version: '1' } })).path).toBe(
      'trainer.version',
    );
  });
});

describe('parseStudyText', () => {
  const text = JSON.stringify(study(), null, 2);

  test('parses a study file, with or without one UTF-8 byte order mark', () => {
    expect(parseStudyText(text)).toEqual(parseStudy(study()));
    expect(parseStudyText(`\uFEFF${text}`)).toEqual(parseStudy(study()));
  });

  test('a second byte order mark is invalid JSON', () => {
    expect(rejected(() => parseStudyText(`\uFEFF\uFEFF${text}`)).path).toBe('(root)');
  });

  test('invalid JSON is a ValidationError at (root) with the parser’s message', () => {
    let message = '';
    try {
      JSON.parse('{"name": }');
    } catch (e) {
      message = (e as Error).message;
    }
    const e = rejected(() => parseStudyText('{"name": }'));
    expect(e.path).toBe('(root)');
    expect(e.message).toBe(
      `(root): expected valid JSON (${message}), got "{\\"name\\": }" (string)`,
    );
    expect(rejected(() => parseStudyText('')).path).toBe('(root)');
    // the excerpt of a long text is short
    const long = `{"name": "${'x'.repeat(100_000)}"`;
    expect(rejected(() => parseStudyText(long)).received.length).toBeLessThan(400);
  });

  test('valid JSON that is not a study is the usual ValidationError', () => {
    expect(rejected(() => parseStudyText('[1, 2]')).path).toBe('(root)');
    expect(rejected(() => parseStudyText(text.replace('"steps": 100', '"steps": 0'))).path).toBe(
      'steps',
    );
  });
});
