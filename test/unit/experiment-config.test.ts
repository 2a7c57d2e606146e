import { strict as assert } from 'node:assert';
import { parseExperimentConfig, withDefaultCheckpointStorage, type ExperimentConfig } from '../../master/experiment/config';
import { parseBytes, parseDurationMs } from '../../master/experiment/units';
import { DetError } from '../../common/errors';

const label = (v: string | number): string => (typeof v === 'string' ? JSON.stringify(v) : String(v));
const MINIMAL = 'name: exp\nimage: busybox:1.36\n';

/** Parses, expecting DET_ERR_EXPERIMENT_CONFIG_INVALID; returns the message. */
function invalid(yaml: string): string {
  try {
    parseExperimentConfig(yaml);
  } catch (err) {
    assert.ok(err instanceof DetError, `expected DetError, got ${err}`);
    assert.equal(err.code, 'DET_ERR_EXPERIMENT_CONFIG_INVALID');
    return err.message;
  }
  assert.fail(`expected the config to be rejected:\n${yaml}`);
}

/** The "  - key: problem" lines of an error message. */
const problems = (message: string): string[] => message.split('\n').filter((l) => l.startsWith('  - ')).map((l) => l.slice(4));

describe('experiment config', () => {
  it('fills defaults for a minimal config', () => {
    const c = parseExperimentConfig(MINIMAL);
    const expected: ExperimentConfig = {
      name: 'exp',
      description: '',
      image: 'busybox:1.36',
      pullPolicy: 'missing',
      entrypoint: [],
      command: [],
      environmentVariables: {},
      resources: { slotsPerTrial: 1, resourcePool: undefined, priority: 42, memoryLimitBytes: 0 },
      hyperparameters: {},
      searcher: { name: 'single', maxTrials: undefined, seed: undefined },
      maxRestarts: 5,
      killGracePeriodMs: 10_000,
      checkpointStorage: undefined,
      data: [],
    };
    assert.deepEqual(c, expected);
  });

  it('turns a string entrypoint into sh -c and keeps a list as given', () => {
    assert.deepEqual(parseExperimentConfig(MINIMAL + 'entrypoint: python train.py --lr 0.1\n').entrypoint, ['sh', '-c', 'python train.py --lr 0.1']);
    assert.deepEqual(parseExperimentConfig(MINIMAL + 'entrypoint: [python, train.py]\n').entrypoint, ['python', 'train.py']);
  });

  const envCases: { name: string; yaml: string; want: Record<string, string> }[] = [
    { name: 'a map (values stringified)', yaml: 'environment_variables:\n  A: "1"\n  B: 2\n  C: true\n', want: { A: '1', B: '2', C: 'true' } },
    { name: 'a NAME=value list (value may hold =)', yaml: 'environment_variables: [A=1, B=x=y, C=]\n', want: { A: '1', B: 'x=y', C: '' } },
  ];
  for (const tc of envCases) {
    it(`reads environment_variables as ${tc.name}`, () => {
      assert.deepEqual(parseExperimentConfig(MINIMAL + tc.yaml).environmentVariables, tc.want);
    });
  }

  it('rejects an environment_variables list entry without NAME=', () => {
    assert.deepEqual(problems(invalid(MINIMAL + 'environment_variables: [A=1, justtext]\n')), ['environment_variables.1: must look like NAME=value']);
  });

  const memCases: { given: string; want: number }[] = [
    { given: '512Mi', want: 512 * 2 ** 20 },
    { given: '2G', want: 2e9 },
    { given: '1048576', want: 1048576 },
  ];
  for (const tc of memCases) {
    it(`parses memory_limit ${tc.given}`, () => {
      assert.equal(parseExperimentConfig(MINIMAL + `resources:\n  memory_limit: ${tc.given}\n`).resources.memoryLimitBytes, tc.want);
    });
  }

  it('rejects an unparseable memory_limit naming its key', () => {
    assert.deepEqual(problems(invalid(MINIMAL + 'resources:\n  memory_limit: lots\n')), ['resources.memory_limit: cannot parse "lots": use bytes or a size like 512Mi or 2G']);
  });

  it('reads kill_grace_period as a duration or seconds', () => {
    assert.equal(parseExperimentConfig(MINIMAL + 'kill_grace_period: 1m30s\n').killGracePeriodMs, 90_000);
    assert.equal(parseExperimentConfig(MINIMAL + 'kill_grace_period: 3\n').killGracePeriodMs, 3_000);
  });

  for (const bad of ['10x', '-1', '"1h 30m"']) {
    it(`rejects kill_grace_period ${bad}`, () => {
      const p = problems(invalid(MINIMAL + `kill_grace_period: ${bad}\n`));
      assert.equal(p.length, 1);
      assert.match(p[0], /^kill_grace_period: cannot parse /);
    });
  }

  const yamlErrors: { name: string; yaml: string; want: RegExp }[] = [
    { name: 'duplicate key', yaml: 'name: a\nimage: b\nname: c\n', want: /line 3, column 1: Map keys must be unique/ },
    { name: 'unterminated quote', yaml: 'name: a\nimage: "busybox\n', want: /line 3, column 1: Missing closing "quote/ },
  ];
  for (const tc of yamlErrors) {
    it(`names line and column of a YAML syntax error (${tc.name})`, () => {
      const msg = invalid(tc.yaml);
      assert.match(msg, /is not valid YAML/);
      assert.match(msg, tc.want);
    });
  }

  const nonMappings: { name: string; yaml: string }[] = [
    { name: 'a list', yaml: '- name: a\n- image: b\n' },
    { name: 'a scalar', yaml: '42\n' },
    { name: 'a string', yaml: 'just some text\n' },
    { name: 'an empty document', yaml: '' },
    { name: 'only a comment', yaml: '# nothing here\n' },
    { name: 'null', yaml: 'null\n' },
  ];
  for (const tc of nonMappings) {
    it(`rejects ${tc.name} as not a mapping`, () => {
      assert.match(invalid(tc.yaml), /must be a YAML mapping/);
    });
  }

  it('lists EVERY schema problem in one error, each by key path', () => {
    const yaml = [
      'priority_typo: 1',
      'resources:',
      '  priority: 0',
      '  gpus: 2',
      'hyperparameters:',
      '  lr:',
      '    type: double',
      '    minval: 2',
      '    maxval: 1',
      '',
    ].join('\n');
    const msg = invalid(yaml);
    const p = problems(msg);
    const keys = p.map((l) => l.slice(0, l.indexOf(':')));
    for (const key of ['name', 'image', 'resources.priority', 'priority_typo', 'resources.gpus', 'hyperparameters.lr.maxval']) {
      assert.ok(keys.includes(key), `problem for ${key} missing from:\n${msg}`);
    }
    assert.match(msg, /priority_typo: unknown key/);
    assert.match(msg, /resources\.gpus: unknown key/);
    assert.match(msg, new RegExp(`\\(${p.length} problems\\)`));
  });

  it('reports several cross-field problems together', () => {
    const yaml = MINIMAL + [
      'searcher: {name: random}',
      'resources: {memory_limit: lots}',
      'kill_grace_period: soon',
      'hyperparameters:',
      '  lr: {type: log, minval: -1, maxval: -3}',
      '',
    ].join('\n');
    const keys = problems(invalid(yaml)).map((l) => l.slice(0, l.indexOf(':'))).sort();
    assert.deepEqual(keys, ['hyperparameters.lr.maxval', 'kill_grace_period', 'resources.memory_limit', 'searcher.max_trials']);
  });

  it('requires max_trials for the random searcher', () => {
    assert.deepEqual(problems(invalid(MINIMAL + 'searcher: {name: random}\n')), ['searcher.max_trials: required for the random searcher']);
    assert.equal(parseExperimentConfig(MINIMAL + 'searcher: {name: random, max_trials: 3, seed: 7}\n').searcher.maxTrials, 3);
  });

  it('requires count for double and log hyperparameters under grid search', () => {
    const yaml = MINIMAL + 'searcher: {name: grid}\nhyperparameters:\n  d: {type: double, minval: 0, maxval: 1}\n  l: {type: log, minval: -3, maxval: -1}\n  i: {type: int, minval: 1, maxval: 4}\n';
    assert.deepEqual(problems(invalid(yaml)).sort(), [
      'hyperparameters.d.count: grid search needs count for double and log hyperparameters',
      'hyperparameters.l.count: grid search needs count for double and log hyperparameters',
    ]);
  });

  it('requires count for a grid over more than 1000 integers', () => {
    const yaml = MINIMAL + 'searcher: {name: grid}\nhyperparameters:\n  i: {type: int, minval: 0, maxval: 1000}\n';
    assert.deepEqual(problems(invalid(yaml)), ['hyperparameters.i.count: grid search over a range of more than 1000 integers needs count']);
  });

  it('normalises hyperparameters: bare scalars become const, log gets base 10', () => {
    const c = parseExperimentConfig(MINIMAL + 'hyperparameters:\n  lr: 0.1\n  opt: {type: categorical, vals: [sgd, adam]}\n  wd: {type: log, minval: -4, maxval: -2}\n');
    assert.deepEqual(c.hyperparameters, {
      lr: { type: 'const', val: 0.1 },
      opt: { type: 'categorical', vals: ['sgd', 'adam'] },
      wd: { type: 'log', minval: -4, maxval: -2, base: 10 },
    });
  });
});

describe('units', () => {
  const bytes: { given: string | number; want: number | undefined }[] = [
    { given: '512Mi', want: 536870912 },
    { given: '2G', want: 2_000_000_000 },
    { given: '1.5GiB', want: 1610612736 },
    { given: '10 kb', want: 10_000 },
    { given: '1Ki', want: 1024 },
    { given: '1T', want: 1e12 },
    { given: '0', want: 0 },
    { given: '4096', want: 4096 },
    { given: 4096, want: 4096 },
    { given: 1.7, want: 1 },
    { given: '', want: undefined },
    { given: '   ', want: undefined },
    { given: 'abc', want: undefined },
    { given: 'Mi', want: undefined },
    { given: '12XB', want: undefined },
    { given: '-1', want: undefined },
    { given: '1e3', want: undefined },
    { given: '1..5G', want: undefined },
    { given: -1, want: undefined },
    { given: Number.NaN, want: undefined },
    { given: Number.POSITIVE_INFINITY, want: undefined },
  ];
  for (const tc of bytes) {
    it(`parseBytes(${label(tc.given)}) = ${tc.want}`, () => {
      assert.equal(parseBytes(tc.given), tc.want);
    });
  }

  const durations: { given: string | number; want: number | undefined }[] = [
    { given: '30s', want: 30_000 },
    { given: '5m', want: 300_000 },
    { given: '1h30m', want: 5_400_000 },
    { given: '250ms', want: 250 },
    { given: '1.5s', want: 1500 },
    { given: ' 2m ', want: 120_000 },
    { given: '0s', want: 0 },
    { given: 2.5, want: 2500 },
    { given: 0, want: 0 },
    { given: '', want: undefined },
    { given: 's', want: undefined },
    { given: '10', want: undefined },
    { given: '10x', want: undefined },
    { given: 'x10s', want: undefined },
    { given: '10s x', want: undefined },
    { given: '1h 30m', want: undefined },
    { given: '10S', want: undefined },
    { given: '-1s', want: undefined },
    { given: -1, want: undefined },
    { given: Number.NaN, want: undefined },
  ];
  for (const tc of durations) {
    it(`parseDurationMs(${label(tc.given)}) = ${tc.want}`, () => {
      assert.equal(parseDurationMs(tc.given), tc.want);
    });
  }
});

describe('experiment config: checkpoint_storage and data', () => {
  it('takes s3 checkpoint storage and data inputs', () => {
    const c = parseExperimentConfig(
      MINIMAL +
        'checkpoint_storage: {type: s3, bucket: my-ckpts, prefix: team-a, endpoint_url: "http://127.0.0.1:4569", force_path_style: true}\n' +
        'data:\n  - {source: "s3://datasets/mnist/", target: /data/mnist}\n  - {source: "s3://bkt", target: /data/all, region: eu-west-1}\n',
    );
    assert.deepEqual(c.checkpointStorage, { type: 's3', bucket: 'my-ckpts', prefix: 'team-a', endpoint_url: 'http://127.0.0.1:4569', force_path_style: true });
    assert.deepEqual(c.data, [{ source: 's3://datasets/mnist/', target: '/data/mnist' }, { source: 's3://bkt', target: '/data/all', region: 'eu-west-1' }]);
  });

  it('lists every data and storage problem at once, each naming its key', () => {
    const msg = invalid(
      MINIMAL +
        'checkpoint_storage: {type: shared_fs, host_path: relative/dir}\n' +
        'data:\n' +
        '  - {source: "http://x/y", target: /data/a}\n' +
        '  - {source: "s3://bkt/p", target: data/rel}\n' +
        '  - {source: "s3://bkt/p", target: /det/checkpoints}\n' +
        '  - {source: "s3://bkt/q", target: /data/a/inner}\n' +
        '  - {source: "s3://bkt/../x", target: /data/z}\n',
    );
    const lines = problems(msg);
    assert.ok(lines.some((l) => /^checkpoint_storage\.host_path: must be an absolute path/.test(l)), msg);
    assert.ok(lines.some((l) => /^data\.0\.source: invalid S3 URL "http:\/\/x\/y"/.test(l)), msg);
    assert.ok(lines.some((l) => /^data\.1\.target: must be an absolute path/.test(l)), msg);
    assert.ok(lines.some((l) => /^data\.2\.target: \/det is reserved/.test(l)), msg);
    assert.ok(lines.some((l) => /^data\.3\.target: overlaps data\[0\]\.target/.test(l)), msg);
    assert.ok(lines.some((l) => /^data\.4\.source: invalid S3 URL/.test(l)), msg);
  });

  it('fills in the master default storage only when the config names none, keeping comments', () => {
    const fallback = { type: 'shared_fs' as const, host_path: '/srv/ckpts' };
    const filled = withDefaultCheckpointStorage('# my experiment\n' + MINIMAL, fallback);
    assert.match(filled, /^# my experiment/);
    assert.deepEqual(parseExperimentConfig(filled).checkpointStorage, fallback);
    const own = MINIMAL + 'checkpoint_storage: {type: s3, bucket: mine}\n';
    assert.equal(withDefaultCheckpointStorage(own, fallback), own);
  });
});
