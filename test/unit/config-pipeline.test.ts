import { strict as assert } from 'node:assert';
import { poolScaling } from '../../master/provisioner/config';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { envLayer, mergeLayers, setPath, type ConfigLayer } from '../../common/config/pipeline';
import { loadMasterConfig } from '../../master/config';
import { loadAgentOptions } from '../../agent/options';
import { DetError } from '../../common/errors';

let dir: string;
let n = 0;
/** Writes a temp config file and returns its path. */
const file = (text: string): string => {
  const p = path.join(dir, `config-${n++}.yaml`);
  fs.writeFileSync(p, text);
  return p;
};

/** Runs fn expecting DET_ERR_CONFIG_INVALID; returns the message. */
function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof DetError, `expected DetError, got ${err}`);
    assert.equal(err.code, 'DET_ERR_CONFIG_INVALID');
    return err.message;
  }
  assert.fail('expected DET_ERR_CONFIG_INVALID');
}

/** The key paths named by "  - key: problem" lines. */
const problemKeys = (message: string): string[] =>
  message
    .split('\n')
    .filter((l) => l.startsWith('  - '))
    .map((l) => l.slice(4, l.indexOf(':', 4)));

/** Paths inside value that are objects but not frozen. */
function unfrozen(value: unknown, at = '(root)'): string[] {
  if (value === null || typeof value !== 'object') return [];
  const here = Object.isFrozen(value) ? [] : [at];
  return here.concat(...Object.entries(value).map(([k, v]) => unfrozen(v, `${at}.${k}`)));
}

describe('config pipeline', () => {
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-config-test-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('envLayer', () => {
    const mapping = {
      DET_NUM: { key: 'num', type: 'number' as const }, DET_BOOL: { key: 'flag', type: 'boolean' as const }, DET_STR: 'str', DET_NESTED: 'a.b', DET_EMPTY: 'empty', DET_LIST: 'list', DET_NULL: 'nul',
    };
    const cases: { name: string; env: NodeJS.ProcessEnv; want: ConfigLayer }[] = [
      { name: 'numbers', env: { DET_NUM: '8081' }, want: { num: 8081 } },
      { name: 'booleans', env: { DET_BOOL: 'false' }, want: { flag: false } },
      { name: 'strings', env: { DET_STR: 'hello world' }, want: { str: 'hello world' } },
      { name: 'dotted paths', env: { DET_NESTED: 'x' }, want: { a: { b: 'x' } } },
      { name: 'empty values are unset', env: { DET_EMPTY: '' }, want: {} },
      { name: 'strings that look like numbers stay strings', env: { DET_STR: '0123' }, want: { str: '0123' } },
      { name: 'a bad number stays a string for validation to name', env: { DET_NUM: 'abc' }, want: { num: 'abc' } },
      { name: 'YAML collections stay raw strings', env: { DET_LIST: '[1, 2]' }, want: { list: '[1, 2]' } },
      { name: 'null stays a raw string', env: { DET_NULL: 'null' }, want: { nul: 'null' } },
      { name: 'unmapped variables are ignored', env: { DET_OTHER: '1', HOME: '/root' }, want: {} },
    ];
    for (const tc of cases) {
      it(tc.name, () => {
        assert.deepEqual(envLayer(tc.env, mapping), tc.want);
      });
    }
  });

  describe('mergeLayers', () => {
    it('later layers win, objects merge deeply, arrays are replaced', () => {
      const merged = mergeLayers({ a: 1, o: { x: 1, y: 1 }, arr: [1, 2] }, { a: 2, o: { y: 2 }, arr: [3] }, { o: { z: 3 }, u: undefined });
      assert.deepEqual(merged, { a: 2, o: { x: 1, y: 2, z: 3 }, arr: [3] });
    });
    it('does not alias its inputs', () => {
      const src = { o: { x: 1 } };
      const merged = mergeLayers(src);
      (merged.o as { x: number }).x = 2;
      assert.equal(src.o.x, 1);
    });
    it('setPath creates intermediate objects', () => {
      const layer: ConfigLayer = { a: 'scalar' };
      setPath(layer, 'a.b.c', 1);
      assert.deepEqual(layer, { a: { b: { c: 1 } } });
    });
  });

  describe('master config', () => {
    it('has defaults', () => {
      const c = loadMasterConfig({ configFile: file(''), layer: {} }, {});
      assert.deepEqual(
        { ...c },
        {
          host: '127.0.0.1',
          port: 8080,
          dataDir: path.resolve('.det'),
          db: path.join(path.resolve('.det'), 'determined.db'),
          clusterName: 'determined',
          agentToken: undefined,
          tls: undefined,
          resourcePools: [{ name: 'default', description: '', provider: undefined, scheduler: { fitting: 'best', preemption: false, maxZeroSlotTasksPerAgent: 100 } }],
          defaultResourcePool: 'default',
          agentReconnectGraceMs: 30_000,
          logLevel: 'info',
          checkpointStorage: { type: 'shared_fs', host_path: path.join(path.resolve('.det'), 'checkpoints') },
        },
      );
    });

    it('applies defaults < YAML file < DET_* env < flags', () => {
      const cfg = file('port: 9000\ncluster_name: from-file\nlog_level: warn\nhost: 0.0.0.0\n');
      const c = loadMasterConfig({ configFile: cfg, layer: { port: 9002 } }, { DET_PORT: '9001', DET_CLUSTER_NAME: 'from-env', DET_LOG_LEVEL: 'debug' });
      assert.equal(c.port, 9002, 'flag beats env and file');
      assert.equal(c.clusterName, 'from-env', 'env beats file');
      assert.equal(c.logLevel, 'debug', 'env beats file');
      assert.equal(c.host, '0.0.0.0', 'file beats default');
      assert.equal(c.dataDir, path.resolve('.det'), 'default when nobody sets it');
    });

    it('merges nested keys across layers', () => {
      const c = loadMasterConfig({ configFile: file('tls:\n  cert: /file/cert.pem\n'), layer: {} }, { DET_TLS_KEY: '/env/key.pem' });
      assert.deepEqual(c.tls, { cert: '/file/cert.pem', key: '/env/key.pem' });
    });

    it('parses env values: numbers and durations', () => {
      const c = loadMasterConfig({ configFile: file(''), layer: {} }, { DET_PORT: '18080', DET_AGENT_RECONNECT_GRACE: '2m' });
      assert.equal(c.port, 18080);
      assert.equal(c.agentReconnectGraceMs, 120_000);
    });

    const stringEnv: { name: string; env: NodeJS.ProcessEnv; get: (c: ReturnType<typeof loadMasterConfig>) => unknown; want: string }[] = [
      { name: 'an all-digit cluster name', env: { DET_CLUSTER_NAME: '2024' }, get: (c) => c.clusterName, want: '2024' },
      { name: 'an all-digit agent token', env: { DET_AGENT_TOKEN: '0123456789012345' }, get: (c) => c.agentToken, want: '0123456789012345' },
    ];
    for (const tc of stringEnv) {
      it(`keeps ${tc.name} from the environment as a string`, () => {
        assert.equal(tc.get(loadMasterConfig({ configFile: file(''), layer: {} }, tc.env)), tc.want);
      });
    }

    it('keeps postgres URLs and resolves SQLite paths', () => {
      assert.equal(loadMasterConfig({ configFile: file(''), layer: {} }, { DET_DB: 'postgres://det:pw@db:5432/det' }).db, 'postgres://det:pw@db:5432/det');
      assert.equal(loadMasterConfig({ configFile: file(''), layer: { db: 'x/y.db' } }, {}).db, path.resolve('x/y.db'));
    });

    it('defaults default_resource_pool to the first pool', () => {
      const c = loadMasterConfig({ configFile: file('resource_pools:\n  - pool_name: gpu\n  - pool_name: cpu\n'), layer: {} }, {});
      assert.deepEqual(c.resourcePools.map((p) => p.name), ['gpu', 'cpu']);
      assert.equal(c.defaultResourcePool, 'gpu');
    });

    const rejects: { name: string; yaml: string; env?: NodeJS.ProcessEnv; keys: string[] }[] = [
      { name: 'unknown top-level key', yaml: 'prot: 8080\n', keys: ['prot'] },
      { name: 'unknown nested key', yaml: 'tls:\n  cert: a\n  key: b\n  ca: c\n', keys: ['tls.ca'] },
      { name: 'unknown key inside a list item', yaml: 'resource_pools:\n  - pool_name: a\n    size: 3\n', keys: ['resource_pools.0.size'] },
      { name: 'bad env number', yaml: '', env: { DET_PORT: 'abc' }, keys: ['port'] },
      { name: 'port out of range', yaml: 'port: 70000\n', keys: ['port'] },
      { name: 'short agent token', yaml: 'agent_token: short\n', keys: ['agent_token'] },
      { name: 'bad duration', yaml: 'agent_reconnect_grace: soon\n', keys: ['agent_reconnect_grace'] },
      { name: 'empty pool list', yaml: 'resource_pools: []\n', keys: ['resource_pools'] },
      { name: 'duplicate pools', yaml: 'resource_pools:\n  - pool_name: a\n  - pool_name: a\n', keys: ['resource_pools.1.pool_name'] },
      { name: 'default pool not in pools', yaml: 'resource_pools:\n  - pool_name: a\ndefault_resource_pool: b\n', keys: ['default_resource_pool'] },
    ];
    for (const tc of rejects) {
      it(`rejects ${tc.name}, naming the key`, () => {
        const msg = configError(() => loadMasterConfig({ configFile: file(tc.yaml), layer: {} }, tc.env ?? {}));
        assert.deepEqual(problemKeys(msg), tc.keys, msg);
      });
    }

    it('reports ALL problems at once, each naming its key', () => {
      const cfg = file('port: abc\nbogus: 1\nresource_pools:\n  - pool_name: "has space"\ndefault_resource_pool: nope\n');
      const msg = configError(() => loadMasterConfig({ configFile: cfg, layer: {} }, {}));
      assert.ok(msg.includes(cfg), 'names the file');
      assert.deepEqual(problemKeys(msg).sort(), ['bogus', 'default_resource_pool', 'port', 'resource_pools.0.pool_name'], msg);
    });

    it('reports an unreadable config file by name', () => {
      const missing = path.join(dir, 'missing.yaml');
      assert.match(configError(() => loadMasterConfig({ configFile: missing, layer: {} }, {})), new RegExp(`cannot read config file ${escape(missing)}: ENOENT`));
      assert.match(configError(() => loadMasterConfig({ configFile: dir, layer: {} }, {})), new RegExp(`cannot read config file ${escape(dir)}: EISDIR`));
    });

    it('reports a YAML syntax error in the file', () => {
      const cfg = file('port: 8080\nport: 8081\n');
      const msg = configError(() => loadMasterConfig({ configFile: cfg, layer: {} }, {}));
      assert.match(msg, new RegExp(`config file ${escape(cfg)} is not valid YAML`));
      assert.match(msg, /unique/);
    });

    it('rejects a file that is not a mapping', () => {
      const cfg = file('- port: 1\n');
      assert.match(configError(() => loadMasterConfig({ configFile: cfg, layer: {} }, {})), /must hold a mapping/);
    });

    it('returns a deeply frozen config', () => {
      const c = loadMasterConfig({ configFile: file('tls: {cert: c, key: k}\n'), layer: {} }, {});
      assert.throws(() => {
        (c as { port: number }).port = 1;
      }, TypeError);
      assert.deepEqual(unfrozen(c), []);
    });
  });

  describe('agent options', () => {
    it('takes the work dir and data cache bound from DET_* env and rejects a relative work dir', () => {
      const o = loadAgentOptions({ configFile: file(''), layer: {} }, { DET_AGENT_WORK_DIR: '/srv/det', DET_DATA_CACHE_MAX_BYTES: '1024' });
      assert.equal(o.workDir, '/srv/det');
      assert.equal(o.dataCacheMaxBytes, 1024);
      assert.match(configError(() => loadAgentOptions({ configFile: file('work_dir: rel/dir\n'), layer: {} }, {})), /work_dir: must be an absolute path/);
    });

    it('master config takes a pool scheduler policy and rejects unknown ones', () => {
      const c = loadMasterConfig({ configFile: file('resource_pools:\n  - pool_name: gpu\n    scheduler: {fitting_policy: worst, preemption: true}\n'), layer: {} }, {});
      assert.deepEqual(c.resourcePools[0].scheduler, { fitting: 'worst', preemption: true, maxZeroSlotTasksPerAgent: 100 });
      assert.match(configError(() => loadMasterConfig({ configFile: file('resource_pools:\n  - pool_name: gpu\n    scheduler: {fitting_policy: tight}\n'), layer: {} }, {})), /resource_pools\.0\.scheduler\.fitting_policy/);
    });

    it('master config takes a provider consolidation block with defaults and rejects bad values', () => {
      const yaml = (c: string) => file(`resource_pools:\n  - pool_name: gpu\n    provider: {type: local${c}}\n`);
      const dflt = loadMasterConfig({ configFile: yaml(''), layer: {} }, {});
      assert.deepEqual(poolScaling('gpu', dflt.resourcePools[0].provider!).consolidation, { enabled: false, maxCheckpointAgeMs: 120_000, minUnderusedPeriodMs: 0 });
      const on = loadMasterConfig({ configFile: yaml(', consolidation: {enabled: true, max_checkpoint_age: 5m, min_underused_period: 90s}'), layer: {} }, {});
      assert.deepEqual(poolScaling('gpu', on.resourcePools[0].provider!).consolidation, { enabled: true, maxCheckpointAgeMs: 300_000, minUnderusedPeriodMs: 90_000 });
      const bad = configError(() => loadMasterConfig({ configFile: yaml(', consolidation: {enabled: yes-please, max_checkpoint_age: soon, moves: 3}'), layer: {} }, {}));
      assert.match(bad, /resource_pools\.0\.provider\.consolidation\.enabled/);
      assert.match(bad, /consolidation\.max_checkpoint_age: cannot parse "soon" as a duration/);
      assert.match(bad, /moves/);
    });

    it('master config takes checkpoint_storage and rejects a bad one', () => {
      const c = loadMasterConfig({ configFile: file('checkpoint_storage: {type: s3, bucket: my-ckpts, prefix: team-a}\n'), layer: {} }, {});
      assert.deepEqual(c.checkpointStorage, { type: 's3', bucket: 'my-ckpts', prefix: 'team-a' });
      assert.match(configError(() => loadMasterConfig({ configFile: file('checkpoint_storage: {type: s3, bucket: B}\n'), layer: {} }, {})), /checkpoint_storage\.bucket/);
    });

    it('has defaults', () => {
      const o = loadAgentOptions({ configFile: file(''), layer: {} }, {});
      assert.deepEqual(
        { ...o },
        {
          masterHost: '127.0.0.1',
          masterPort: 8080,
          agentId: os.hostname(),
          resourcePool: 'default',
          agentToken: '',
          tls: undefined,
          dockerSocket: '/var/run/docker.sock',
          slotType: 'auto',
          cpuSlots: os.availableParallelism(),
          containerNetworkMode: 'host',
          labels: {},
          instanceId: '',
          instanceType: '',
          logLevel: 'info',
          workDir: process.getuid?.() === 0 ? '/var/lib/det-agent' : path.join(os.homedir(), '.local', 'share', 'det-agent'),
          dataCacheMaxBytes: 50 * 2 ** 30,
        },
      );
    });

    it('applies defaults < YAML file < DET_* env < flags', () => {
      const cfg = file('master_host: file-host\nmaster_port: 9000\nresource_pool: file-pool\nlabels: {zone: a}\n');
      const o = loadAgentOptions({ configFile: cfg, layer: { master_port: 9002 } }, { DET_MASTER_PORT: '9001', DET_RESOURCE_POOL: 'env-pool' });
      assert.equal(o.masterPort, 9002);
      assert.equal(o.resourcePool, 'env-pool');
      assert.equal(o.masterHost, 'file-host');
      assert.deepEqual(o.labels, { zone: 'a' });
    });

    it('parses env numbers', () => {
      assert.equal(loadAgentOptions({ configFile: file(''), layer: {} }, { DET_CPU_SLOTS: '4' }).cpuSlots, 4);
    });

    const stringEnv: { name: string; env: NodeJS.ProcessEnv; get: (o: ReturnType<typeof loadAgentOptions>) => unknown; want: string }[] = [
      { name: 'an all-digit agent token', env: { DET_AGENT_TOKEN: '0123' }, get: (o) => o.agentToken, want: '0123' },
      { name: 'a boolean-looking agent token', env: { DET_AGENT_TOKEN: 'true' }, get: (o) => o.agentToken, want: 'true' },
      { name: 'an all-digit agent id', env: { DET_AGENT_ID: '42' }, get: (o) => o.agentId, want: '42' },
    ];
    for (const tc of stringEnv) {
      it(`keeps ${tc.name} from the environment as a string`, () => {
        assert.equal(tc.get(loadAgentOptions({ configFile: file(''), layer: {} }, tc.env)), tc.want);
      });
    }

    const sockets: { name: string; yaml: string; env: NodeJS.ProcessEnv; want: string }[] = [
      { name: 'DOCKER_HOST unix:// sets docker_socket', yaml: '', env: { DOCKER_HOST: 'unix:///x' }, want: '/x' },
      { name: 'DOCKER_HOST tcp:// is ignored', yaml: '', env: { DOCKER_HOST: 'tcp://h:2375' }, want: '/var/run/docker.sock' },
      { name: 'the file beats DOCKER_HOST', yaml: 'docker_socket: /file.sock\n', env: { DOCKER_HOST: 'unix:///x' }, want: '/file.sock' },
      { name: 'DET_DOCKER_SOCKET beats DOCKER_HOST', yaml: '', env: { DOCKER_HOST: 'unix:///x', DET_DOCKER_SOCKET: '/det.sock' }, want: '/det.sock' },
    ];
    for (const tc of sockets) {
      it(tc.name, () => {
        assert.equal(loadAgentOptions({ configFile: file(tc.yaml), layer: {} }, tc.env).dockerSocket, tc.want);
      });
    }

    const tls: { name: string; yaml: string; env: NodeJS.ProcessEnv; want: unknown }[] = [
      { name: 'off by default', yaml: '', env: {}, want: undefined },
      { name: 'DET_MASTER_CERT_FILE enables it', yaml: '', env: { DET_MASTER_CERT_FILE: '/ca.pem' }, want: { caCert: '/ca.pem', serverName: undefined } },
      { name: 'DET_MASTER_CERT_NAME sets the server name', yaml: '', env: { DET_MASTER_CERT_FILE: '/ca.pem', DET_MASTER_CERT_NAME: 'master.internal' }, want: { caCert: '/ca.pem', serverName: 'master.internal' } },
      { name: 'tls.enabled false in the file wins over the env cert', yaml: 'tls: {enabled: false}\n', env: { DET_MASTER_CERT_FILE: '/ca.pem' }, want: undefined },
      { name: 'tls.enabled alone uses system roots', yaml: 'tls: {enabled: true}\n', env: {}, want: { caCert: undefined, serverName: undefined } },
    ];
    for (const tc of tls) {
      it(`TLS: ${tc.name}`, () => {
        assert.deepEqual(loadAgentOptions({ configFile: file(tc.yaml), layer: {} }, tc.env).tls, tc.want);
      });
    }

    it('reports ALL problems at once, including nested unknown keys', () => {
      const cfg = file('master_port: 0\nbogus: 1\ntls:\n  ca: x\nslot_type: tpu\nlabels: {a: 1}\n');
      const msg = configError(() => loadAgentOptions({ configFile: cfg, layer: {} }, { DET_CPU_SLOTS: 'many' }));
      assert.deepEqual(problemKeys(msg).sort(), ['bogus', 'cpu_slots', 'labels.a', 'master_port', 'slot_type', 'tls.ca'], msg);
    });

    it('reports an unreadable config file by name', () => {
      const missing = path.join(dir, 'nope', 'agent.yaml');
      assert.match(configError(() => loadAgentOptions({ configFile: missing, layer: {} }, {})), new RegExp(`cannot read config file ${escape(missing)}`));
    });

    it('returns a deeply frozen config', () => {
      const o = loadAgentOptions({ configFile: file('labels: {a: b}\n'), layer: {} }, { DET_MASTER_CERT_FILE: '/ca.pem' });
      assert.throws(() => {
        (o as { masterPort: number }).masterPort = 1;
      }, TypeError);
      assert.deepEqual(unfrozen(o), []);
    });
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
