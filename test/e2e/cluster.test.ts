// End to end: how the master, agents and CLI behave at the edges — auth,
// duplicate ids, TLS, health, unreachable peers, bad config, PostgreSQL.
import { strict as assert } from 'node:assert';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { Client as PgClient } from 'pg';
import { testEnv, waitFor } from '../support/env';
import { det, ROOT, spawnDet, startAgent, startMaster, type DetProcess, type TestMaster } from '../support/processes';

const tmp = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));

function exampleConfig(image: string, entry = 'echo hello from $DET_TRIAL_ID'): string {
  const file = path.join(tmp('det-e2e-cfg-'), 'exp.yaml');
  fs.writeFileSync(file, `name: quick\nimage: ${image}\nentrypoint: ${entry}\nmax_restarts: 0\n`);
  return file;
}

describe('e2e: cluster edges', function () {
  this.timeout(120_000);
  const env = testEnv();
  const started: DetProcess[] = [];
  const track = <T extends DetProcess | TestMaster>(p: T): T => {
    started.push('proc' in p ? p.proc : p);
    return p;
  };
  afterEach(async () => {
    await Promise.all(started.splice(0).map((p) => p.stop()));
  });

  describe('agent authentication', () => {
    it('rejects an agent with a wrong token with UNAUTHENTICATED and one log line, without leaking the token', async () => {
      const master = track(await startMaster());
      const agent = track(await startAgent(master, env.dockerSocket, { env: { DET_AGENT_TOKEN: 'wrong-token-value-123' }, waitRegistered: false }));
      assert.equal(await agent.exited, 1);
      assert.match(agent.stderr, /rejected this agent: agent rejected: missing or wrong cluster join token/);
      await master.proc.waitForOutput(/rejected agent connection: wrong cluster join token/, 'master log line');
      assert.equal((master.proc.stderr.match(/rejected agent connection/g) ?? []).length, 1);
      assert.ok(!master.proc.stderr.includes('wrong-token-value-123'));
      assert.ok(!master.proc.stderr.includes(master.token), 'the real token is never logged');
      const list = await det(['-m', master.address, '--json', 'agent', 'list']);
      assert.deepEqual(JSON.parse(list.stdout), []);
    });

    it('rejects an agent without a token', async () => {
      const master = track(await startMaster());
      const agent = track(await startAgent(master, env.dockerSocket, { env: { DET_AGENT_TOKEN: '' }, waitRegistered: false }));
      assert.equal(await agent.exited, 1);
      await master.proc.waitForOutput(/rejected agent connection: no cluster join token/, 'master log line');
    });

    it('rejects a second agent claiming a connected agent’s id', async () => {
      const master = track(await startMaster());
      track(await startAgent(master, env.dockerSocket, { id: 'twin' }));
      const second = track(await startAgent(master, env.dockerSocket, { id: 'twin', waitRegistered: false }));
      await second.waitForOutput(/agent id 'twin' is already connected from/, 'second agent rejection');
      const list = JSON.parse((await det(['-m', master.address, '--json', 'agent', 'list'])).stdout);
      assert.equal(list.length, 1);
      assert.ok(!/registered with master/.test(second.stdout));
    });

    it('rejects an agent that names an unknown resource pool', async () => {
      const master = track(await startMaster());
      const agent = track(await startAgent(master, env.dockerSocket, { args: ['--resource-pool', 'gpu'], waitRegistered: false }));
      assert.equal(await agent.exited, 1);
      assert.match(agent.stderr, /resource pool 'gpu' does not exist on this master \(pools: default\)/);
    });
  });

  describe('TLS', () => {
    it('serves agents and the CLI over TLS; plaintext clients get a clear error', async () => {
      const dir = tmp('det-e2e-tls-');
      const key = path.join(dir, 'key.pem');
      const cert = path.join(dir, 'cert.pem');
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
      const master = track(await startMaster(['--tls-cert', cert, '--tls-key', key]));
      assert.match(master.proc.stdout, /\(TLS, sqlite/);
      track(await startAgent(master, env.dockerSocket, { args: ['--tls-ca-cert', cert, '--tls-server-name', 'localhost'] }));
      const m = ['-m', master.address, '--cert-file', cert, '--cert-name', 'localhost'];
      const info = await det([...m, 'master', 'info']);
      assert.equal(info.code, 0, info.stderr);
      assert.match(info.stdout, /TLS:\s+true/);
      const r = await det([...m, 'experiment', 'create', exampleConfig(env.image), '--follow']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /hello from \d+/);
      const plain = await det(['-m', master.address, 'master', 'info']);
      assert.equal(plain.code, 1);
      assert.equal(plain.stderr.trim().split('\n').length, 1, plain.stderr);
    });
  });

  describe('gRPC health and CLI errors', () => {
    it('answers the standard gRPC health check', async () => {
      const master = track(await startMaster());
      const def = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String });
      const Health = (grpc.loadPackageDefinition(def) as any).grpc.health.v1.Health;
      const client = new Health(master.address, grpc.credentials.createInsecure());
      const res = await new Promise<{ status: string }>((resolve, reject) => client.Check({ service: '' }, (err: Error | null, r: { status: string }) => (err ? reject(err) : resolve(r))));
      client.close();
      assert.equal(res.status, 'SERVING');
    });

    it('says in one line when the master is unreachable', async () => {
      const r = await det(['-m', '127.0.0.1:1', 'experiment', 'list']);
      assert.equal(r.code, 1);
      assert.equal(r.stderr.trim(), 'det: cannot reach the master at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1): is det-master running? Set -m/--master or DET_MASTER.');
      const viaEnv = await det(['agent', 'list'], { DET_MASTER: '127.0.0.1:1' });
      assert.match(viaEnv.stderr, /cannot reach the master at 127\.0\.0\.1:1/);
    });
  });

  describe('master start-up errors', () => {
    const runMaster = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const p = spawnDet('det-master', args, env);
      const code = await p.exited;
      return { code, stderr: p.stderr, stdout: p.stdout };
    };

    it('refuses an unwritable data dir', async () => {
      const r = await runMaster(['--port', '0', '--data-dir', '/etc/hostname/det']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /data dir \/etc\/hostname\/det is not writable \(ENOTDIR\): choose another with --data-dir/);
    });

    it('says when the PostgreSQL URL does not answer, without the password', async () => {
      const r = await runMaster(['--port', '0', '--data-dir', tmp('det-e2e-pg-'), '--db', 'postgres://det:supersecret@127.0.0.1:1/det']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /cannot connect to PostgreSQL at 127\.0\.0\.1:1\/det/);
      assert.ok(!r.stderr.includes('supersecret') && !r.stdout.includes('supersecret'));
    });

    it('lists every config problem at once, each naming its key', async () => {
      const file = path.join(tmp('det-e2e-conf-'), 'master.yaml');
      fs.writeFileSync(file, 'port: abc\nbogus_key: 1\nresource_pools: [{pool_name: a}, {pool_name: a}]\n');
      const r = await runMaster(['--config-file', file]);
      assert.equal(r.code, 1);
      for (const key of ['port:', 'bogus_key: unknown key', 'resource_pools.1.pool_name: duplicate pool a']) assert.ok(r.stderr.includes(key), `missing ${key} in ${r.stderr}`);
    });
  });

  describe('Docker unreachable', () => {
    it('det-agent exits with a clear error', async () => {
      const master = track(await startMaster());
      const agent = spawnDet('det-agent', ['--master-port', String(master.port), '--docker-socket', '/nonexistent/docker.sock'], { DET_AGENT_TOKEN: master.token });
      assert.equal(await agent.exited, 1);
      assert.match(agent.stderr, /cannot reach Docker at \/nonexistent\/docker\.sock/);
    });

    it('npm start says Docker is not reachable and how to fix it, and exits non-zero', async () => {
      const child = spawn(process.execPath, [path.join(ROOT, 'dist/scripts/start-local.js')], { env: { ...process.env, DOCKER_HOST: 'unix:///nonexistent/docker.sock', DET_DATA_DIR: tmp('det-e2e-start-') }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      const code = await new Promise((r) => child.on('exit', r));
      assert.equal(code, 1);
      assert.match(out, /cannot reach Docker at \/nonexistent\/docker\.sock/);
      assert.match(out, /Start Docker/);
    });
  });

  describe('PostgreSQL store', () => {
    it('runs an experiment with the master on PostgreSQL, and keeps it across a master restart', async () => {
      const db = `det_e2e_${process.pid}`;
      const admin = new PgClient({ connectionString: env.pgUrl });
      await admin.connect();
      await admin.query(`DROP DATABASE IF EXISTS ${db}`);
      await admin.query(`CREATE DATABASE ${db}`);
      try {
        const url = new URL(env.pgUrl);
        url.pathname = `/${db}`;
        let master = track(await startMaster(['--db', url.toString()], { DET_AGENT_TOKEN: 'e2e-postgres-token-0123' }));
        assert.match(master.proc.stdout, /postgres/);
        const agent = track(await startAgent(master, env.dockerSocket));
        const r = await det(['-m', master.address, 'experiment', 'create', exampleConfig(env.image), '--follow']);
        assert.equal(r.code, 0, r.stdout + r.stderr);
        await agent.stop();
        await master.proc.stop();
        master = track(await startMaster(['--db', url.toString()], { DET_AGENT_TOKEN: 'e2e-postgres-token-0123' }));
        const info = await det(['-m', master.address, 'master', 'info']);
        assert.match(info.stdout, /Database:\s+postgres/);
        const list = JSON.parse((await det(['-m', master.address, '--json', 'experiment', 'list'])).stdout);
        assert.equal(list.length, 1);
        assert.equal(list[0].state, 'COMPLETED');
        const logs = await det(['-m', master.address, 'trial', 'logs', '1']);
        assert.match(logs.stdout, /hello from 1/);
      } finally {
        await Promise.all(started.splice(0).map((p) => p.stop()));
        await admin.query(`DROP DATABASE IF EXISTS ${db}`).catch(() => undefined);
        await admin.end();
      }
    });
  });

  describe('agent reconnect', () => {
    it('an agent that loses the master reconnects and keeps running its trial', async () => {
      const token = 'e2e-reconnect-token-0123';
      const dataDir = tmp('det-e2e-reconnect-');
      let master = track(await startMaster(['--data-dir', dataDir], { DET_AGENT_TOKEN: token }));
      const port = master.port;
      const agent = track(await startAgent(master, env.dockerSocket));
      const cfg = exampleConfig(env.image, 'for i in $(seq 1 30); do echo "tick $i"; sleep 0.1; done');
      const r = await det(['-m', master.address, 'experiment', 'create', cfg]);
      assert.equal(r.code, 0, r.stderr);
      await waitFor(async () => /tick 3/.test((await det(['-m', master.address, 'trial', 'logs', '1'])).stdout), { what: 'trial running' });
      await master.proc.stop();
      master = track(await startMaster(['--data-dir', dataDir, '--port', String(port)], { DET_AGENT_TOKEN: token }));
      await agent.waitForOutput(/registered with master.*expected=1/, 'agent to re-register with its allocation expected');
      const logs = await det(['-m', master.address, 'trial', 'logs', '1', '--follow']);
      const ticks: string[] = logs.stdout.match(/^tick \d+$/gm) ?? [];
      const trial = JSON.parse((await det(['-m', master.address, '--json', 'trial', 'describe', '1'])).stdout);
      assert.equal(trial.state, 'COMPLETED', JSON.stringify(trial));
      assert.equal(trial.restarts, 0, 'the trial was not restarted');
      assert.ok(ticks.length >= 3 && ticks.includes('tick 30'), `ticks: ${ticks.join(',')}`);
    });
  });
});
