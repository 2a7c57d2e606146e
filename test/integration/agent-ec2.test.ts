// det-agent --config-source ec2 against a fake IMDSv2 on 127.0.0.1 (never the
// real 169.254.169.254: every client here is given the fake's endpoint): the
// IMDS client (token flow, renewal, retries, unreachable), the config layer
// from user data through the agent's config pipeline, the spot watcher, the
// spot notice reaching a fake master through a real AgentSession, and the
// real det-agent binary failing cleanly (exit 78) on missing user data.
// No Docker needed.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ContainerManager } from '../../agent/containers/manager';
import { ec2ConfigLayer, MASTER_CA_FILE_NAME } from '../../agent/ec2/config-source';
import { ImdsClient, type ImdsClientOptions } from '../../agent/ec2/imds';
import { forwardSpotInterruption, spotInterruptionMessage, watchSpotInterruption } from '../../agent/ec2/spot-watcher';
import { EXIT_CONFIG_SOURCE_FAILED } from '../../agent/main';
import { loadAgentOptions } from '../../agent/options';
import { Outbox } from '../../agent/session/outbox';
import { AgentSession } from '../../agent/session/session';
import type { ConfigLayer } from '../../common/config/pipeline';
import { DetError } from '../../common/errors';
import type { LogFields, Logger } from '../../common/log';
import type { AgentToMaster, Device } from '../../common/types';
import { renderAgentUserData, USERDATA_HEADER, type AgentBootConfig } from '../../common/userdata';
import { waitFor } from '../support/env';
import { FakeAgentService } from '../support/fake-agent-service';
import { FakeImds, type FakeImdsOptions } from '../support/fake-imds';
import { FakeRuntime } from '../support/fake-runtime';
import { spawnDet, type DetProcess } from '../support/processes';
import { testTaskFiles } from '../support/task-files';

// ---- fixtures ---------------------------------------------------------------

const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIBfakeCAforTests0123456789abcdefghijklmnopqrstuvwxyz\n-----END CERTIFICATE-----\n';
const NOTICE = { action: 'terminate', time: '2017-09-18T08:22:00Z' };

function bootConfig(o: Partial<AgentBootConfig> = {}): AgentBootConfig {
  return {
    masterHost: 'det-master.internal',
    masterPort: 8443,
    resourcePool: 'gpu-spot',
    agentToken: 'join-token-from-user-data',
    tlsCaCertPem: CA_PEM,
    tlsServerName: 'master.det.example',
    agent: { slot_type: 'cpu', labels: { zone: 'us-east-1a' } },
    ...o,
  };
}

interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  fields: LogFields | undefined;
}

function captureLogger(entries: LogEntry[] = []): Logger & { entries: LogEntry[] } {
  const make = (): Logger => ({
    debug: (msg, fields) => void entries.push({ level: 'debug', msg, fields }),
    info: (msg, fields) => void entries.push({ level: 'info', msg, fields }),
    warn: (msg, fields) => void entries.push({ level: 'warn', msg, fields }),
    error: (msg, fields) => void entries.push({ level: 'error', msg, fields }),
    child: () => make(),
  });
  return Object.assign(make(), { entries });
}

const fakes: FakeImds[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

async function startImds(opts: FakeImdsOptions = {}): Promise<FakeImds> {
  const fake = await FakeImds.start(opts);
  fakes.push(fake);
  return fake;
}

/** A client of the fake with fast retries (tests should not wait out real backoff). */
function client(fake: FakeImds | string, o: ImdsClientOptions = {}): ImdsClient {
  return new ImdsClient({ endpoint: typeof fake === 'string' ? fake : fake.endpoint, timeoutMs: 2_000, backoff: { baseMs: 5, maxMs: 20, jitter: 0 }, ...o });
}

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-agent-ec2-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** An empty config file, so the tests never read /etc/determined/agent.yaml. */
function emptyConfigFile(): string {
  const file = path.join(tmpDir(), 'agent.yaml');
  fs.writeFileSync(file, '');
  return file;
}

/** A port nobody listens on (bound, then released). */
async function unusedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection, got a result');
}

function assertDetError(err: unknown, pattern: RegExp): asserts err is DetError {
  assert.ok(err instanceof DetError, `expected a DetError, got ${String(err)}`);
  assert.equal(err.code, 'DET_ERR_CONFIG_INVALID');
  assert.match(err.message, pattern);
}

afterEach(async () => {
  for (const f of fakes.splice(0)) await f.stop();
  for (const c of cleanups.splice(0).reverse()) await c();
});

// ---- the fake itself ---------------------------------------------------------

describe('fake IMDS (honesty checks)', () => {
  it('answers 401 to a GET without a token and 400 to a token PUT without a TTL', async () => {
    const fake = await startImds();
    const noToken = await fetch(`${fake.endpoint}/latest/meta-data/instance-id`);
    assert.equal(noToken.status, 401);
    const noTtl = await fetch(`${fake.endpoint}/latest/api/token`, { method: 'PUT' });
    assert.equal(noTtl.status, 400);
    const badToken = await fetch(`${fake.endpoint}/latest/meta-data/instance-id`, { headers: { 'x-aws-ec2-metadata-token': 'forged' } });
    assert.equal(badToken.status, 401);
    const tok = await fetch(`${fake.endpoint}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } });
    assert.equal(tok.status, 200);
    const ok = await fetch(`${fake.endpoint}/latest/meta-data/instance-id`, { headers: { 'x-aws-ec2-metadata-token': await tok.text() } });
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), 'i-0123456789abcdef0');
  });
});

// ---- IMDS client -----------------------------------------------------------

describe('ImdsClient', () => {
  it('gets a token with PUT and the TTL header, sends it on every GET, and reuses it', async () => {
    const fake = await startImds({ instanceId: 'i-0abc', instanceType: 'g5.xlarge' });
    const imds = client(fake);
    assert.equal(await imds.instanceId(), 'i-0abc');
    assert.equal(await imds.instanceType(), 'g5.xlarge');
    const puts = fake.requestsTo('/latest/api/token', 'PUT');
    assert.equal(puts.length, 1, 'one token for both reads');
    assert.equal(puts[0].ttl, '21600');
    const gets = fake.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 2);
    const token = await imds.token();
    for (const g of gets) assert.equal(g.token, token);
    assert.deepEqual(fake.requests.map((r) => r.status), [200, 200, 200]);
  });

  it('shares one token request between concurrent callers', async () => {
    const fake = await startImds();
    const imds = client(fake);
    await Promise.all([imds.instanceId(), imds.instanceType(), imds.userData(), imds.spotInstanceAction()]);
    assert.equal(fake.requestsTo('/latest/api/token').length, 1);
  });

  it('renews the token before it expires', async () => {
    const fake = await startImds();
    let now = 1_000_000;
    const imds = client(fake, { tokenTtlSeconds: 100, now: () => now });
    const first = await imds.token();
    assert.equal(fake.requestsTo('/latest/api/token')[0].ttl, '100');
    now += 89_000; // renewal is due 10 s (a tenth of the TTL) before expiry
    assert.equal(await imds.token(), first);
    assert.equal(fake.requestsTo('/latest/api/token').length, 1);
    now += 2_000;
    const second = await imds.token();
    assert.notEqual(second, first);
    assert.equal(fake.requestsTo('/latest/api/token').length, 2);
  });

  it('gets a new token when IMDS no longer accepts the cached one (401)', async () => {
    const fake = await startImds();
    const imds = client(fake);
    await imds.instanceId();
    fake.expireTokens();
    assert.equal(await imds.instanceType(), 'p5.48xlarge');
    assert.deepEqual(
      fake.requests.map((r) => `${r.method} ${r.path} ${r.status}`),
      ['PUT /latest/api/token 200', 'GET /latest/meta-data/instance-id 200', 'GET /latest/meta-data/instance-type 401', 'PUT /latest/api/token 200', 'GET /latest/meta-data/instance-type 200'],
    );
  });

  it('retries 500s with backoff and succeeds when IMDS recovers', async () => {
    const fake = await startImds();
    const imds = client(fake, { retries: 3 });
    fake.failNext(3);
    assert.equal(await imds.instanceId(), 'i-0123456789abcdef0');
    assert.deepEqual(
      fake.requests.map((r) => `${r.method} ${r.path} ${r.status}`),
      ['PUT /latest/api/token 500', 'PUT /latest/api/token 500', 'PUT /latest/api/token 500', 'PUT /latest/api/token 200', 'GET /latest/meta-data/instance-id 200'],
    );
  });

  it('gives up after a bounded number of retries with an error naming the endpoint', async () => {
    const fake = await startImds();
    const imds = client(fake, { retries: 2 });
    fake.failNext(100, 503);
    const err = await rejection(imds.instanceId());
    assertDetError(err, /cannot reach the EC2 instance metadata service at http:\/\/127\.0\.0\.1:\d+: PUT \/latest\/api\/token failed after 3 attempts \(last: HTTP 503/);
    assert.equal(fake.requests.length, 3);
  });

  it('fails quickly and clearly when nothing listens at the endpoint', async () => {
    const endpoint = `http://127.0.0.1:${await unusedPort()}`;
    const started = Date.now();
    const err = await rejection(new ImdsClient({ endpoint }).instanceId()); // default retries and backoff
    const tookMs = Date.now() - started;
    assertDetError(err, new RegExp(`^cannot reach the EC2 instance metadata service at ${endpoint.replace(/\./g, '\\.')}: .*ECONNREFUSED.*Is this an EC2 instance with IMDS enabled \\(and hop limit >= 2 in containers\\)\\?$`));
    assert.ok(tookMs < 5_000, `took ${tookMs} ms`);
  });

  it('times out a request IMDS never answers, and retries it', async () => {
    const hits: number[] = [];
    const silent = http.createServer(() => void hits.push(Date.now())); // accepts, never answers
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => { silent.closeAllConnections(); silent.close(() => r()); }));
    const imds = client(`http://127.0.0.1:${(silent.address() as AddressInfo).port}`, { timeoutMs: 150, retries: 1 });
    const err = await rejection(imds.instanceId());
    assertDetError(err, /failed after 2 attempts \(last: no answer within 150 ms\)/);
    assert.equal(hits.length, 2);
  });

  it('does not retry an answer that retrying cannot change (403: IMDS disabled)', async () => {
    const fake = await startImds();
    fake.failNext(1, 403);
    const err = await rejection(client(fake).instanceId());
    assertDetError(err, /refused a session token \(HTTP 403\): IMDS is disabled/);
    assert.equal(fake.requests.length, 1);
  });

  it('stops at once when its signal aborts', async () => {
    const fake = await startImds();
    fake.failNext(1000);
    const controller = new AbortController();
    const imds = client(fake, { retries: 50, backoff: { baseMs: 1_000, maxMs: 1_000, jitter: 0 } });
    const p = rejection(imds.instanceId(controller.signal));
    await waitFor(() => fake.requests.length >= 1, { what: 'the first token request', timeoutMs: 5_000, intervalMs: 5 });
    const started = Date.now();
    controller.abort(new Error('stop'));
    const err = await p;
    assert.equal(err.message, 'stop');
    assert.ok(Date.now() - started < 500);
  });

  it('returns undefined for absent user data and spot notice (404), and their values when set', async () => {
    const fake = await startImds();
    const imds = client(fake);
    assert.equal(await imds.userData(), undefined);
    assert.equal(await imds.spotInstanceAction(), undefined);
    fake.userData = 'hello\nworld\n';
    fake.spotNotice = NOTICE;
    assert.equal(await imds.userData(), 'hello\nworld\n');
    assert.deepEqual(await imds.spotInstanceAction(), { action: 'terminate', timeMs: Date.parse('2017-09-18T08:22:00Z') });
    fake.spotNoticeRaw = '{"action": "terminate"}';
    assertDetError(await rejection(imds.spotInstanceAction()), /spot\/instance-action with expected \{"action": "\.\.\.", "time": "<ISO 8601>"\}/);
  });

  it('takes its endpoint from AWS_EC2_METADATA_SERVICE_ENDPOINT, and rejects one that is not an http URL', () => {
    const saved = process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
    try {
      process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = 'http://127.0.0.1:1234/';
      assert.equal(new ImdsClient().endpoint, 'http://127.0.0.1:1234');
    } finally {
      if (saved === undefined) delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
      else process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = saved;
    }
    assert.throws(() => new ImdsClient({ endpoint: 'not a url' }), /EC2 instance metadata endpoint "not a url" is not a URL/);
    assert.throws(() => new ImdsClient({ endpoint: 'https://127.0.0.1' }), /must be an http:\/\/ URL/);
  });
});

// ---- config source ----------------------------------------------------------

describe('ec2ConfigLayer + loadAgentOptions', () => {
  async function optionsFrom(userData: string | undefined, flags: ConfigLayer = {}, env: NodeJS.ProcessEnv = {}, fileText = '') {
    const fake = await startImds({ instanceId: 'i-0fedcba9876543210', instanceType: 'c7i.4xlarge', userData });
    const runtimeDir = path.join(tmpDir(), 'run');
    const configFile = emptyConfigFile();
    fs.writeFileSync(configFile, fileText);
    const layer = await ec2ConfigLayer(client(fake), { runtimeDir });
    return { opts: loadAgentOptions({ configFile, layer: flags }, env, layer, 'EC2 user data'), runtimeDir, layer };
  }

  it('gives the master address, pool, token and TLS the master rendered; the agent id is the instance id', async () => {
    const { opts, runtimeDir } = await optionsFrom(renderAgentUserData(bootConfig()));
    const caFile = path.join(runtimeDir, MASTER_CA_FILE_NAME);
    assert.equal(opts.masterHost, 'det-master.internal');
    assert.equal(opts.masterPort, 8443);
    assert.equal(opts.resourcePool, 'gpu-spot');
    assert.equal(opts.agentToken, 'join-token-from-user-data');
    assert.deepEqual(opts.tls, { caCert: caFile, serverName: 'master.det.example' });
    assert.equal(fs.readFileSync(caFile, 'utf8'), CA_PEM);
    assert.equal(fs.statSync(caFile).mode & 0o777, 0o644);
    assert.equal(opts.agentId, 'i-0fedcba9876543210');
    assert.equal(opts.instanceId, 'i-0fedcba9876543210');
    assert.equal(opts.instanceType, 'c7i.4xlarge');
    assert.equal(opts.slotType, 'cpu', 'extra agent keys from the pool apply');
    assert.deepEqual(opts.labels, { zone: 'us-east-1a' });
  });

  it('without a CA in user data: no TLS, nothing written', async () => {
    const { opts, runtimeDir } = await optionsFrom(renderAgentUserData(bootConfig({ tlsCaCertPem: undefined, tlsServerName: undefined })));
    assert.equal(opts.tls, undefined);
    assert.equal(fs.existsSync(runtimeDir), false);
  });

  it('sits after the config file and before DET_* env and flags', async () => {
    const { opts } = await optionsFrom(
      renderAgentUserData(bootConfig()),
      { master_port: 9999 },
      { DET_RESOURCE_POOL: 'from-env' },
      'master_host: from-file\ndocker_socket: /from/file.sock\n',
    );
    assert.equal(opts.masterHost, 'det-master.internal', 'user data beats the file');
    assert.equal(opts.dockerSocket, '/from/file.sock', 'the file still sets what user data does not');
    assert.equal(opts.resourcePool, 'from-env', 'env beats user data');
    assert.equal(opts.masterPort, 9999, 'flags beat user data');
  });

  it('missing user data is one clear error', async () => {
    const err = await rejection(optionsFrom(undefined));
    assertDetError(err, /^EC2 user data is empty: launch the instance from the det-master/);
    const blank = await rejection(optionsFrom('  \n'));
    assertDetError(blank, /^EC2 user data is empty/);
  });

  it('user data that is not ours, not YAML, or lacks a key is an error naming the problem', async () => {
    assertDetError(await rejection(optionsFrom('#!/bin/bash\necho hi\n')), /EC2 user data is not a det agent config \(it must start with "#det-agent-config v1"\)/);
    assertDetError(await rejection(optionsFrom(`${USERDATA_HEADER}\nmaster_host: [unclosed\n`)), /^EC2 user data is not valid YAML: /);
    const missing = renderAgentUserData(bootConfig()).replace(/^agent_token:.*\n/m, '');
    assertDetError(await rejection(optionsFrom(missing)), /^invalid EC2 user data \(1 problem\):\n {2}- agent_token: Required$/);
  });

  it('an unknown key among the pool\'s agent settings is named by the pipeline, with the source', async () => {
    const err = await rejection(optionsFrom(renderAgentUserData(bootConfig({ agent: { slot_typo: 'cpu' } }))));
    assertDetError(err, /^invalid agent config \(.*EC2 user data\) \(1 problem\):\n {2}- slot_typo: unknown key$/);
  });

  it('a runtime directory it cannot write is a clear error', async () => {
    const fake = await startImds({ userData: renderAgentUserData(bootConfig()) });
    const notADir = path.join(tmpDir(), 'file');
    fs.writeFileSync(notADir, '');
    const err = await rejection(ec2ConfigLayer(client(fake), { runtimeDir: path.join(notADir, 'run') }));
    assertDetError(err, /^cannot write the master CA certificate from EC2 user data to .*master-ca\.pem: ENOTDIR/);
  });
});

// ---- spot watcher ------------------------------------------------------------

describe('spot interruption watcher', () => {
  const SPOT = '/latest/meta-data/spot/instance-action';

  it('no notice: keeps polling, never calls back; abort ends it', async () => {
    const fake = await startImds();
    const controller = new AbortController();
    const notices: unknown[] = [];
    const done = watchSpotInterruption({ imds: client(fake), log: captureLogger(), signal: controller.signal, intervalMs: 10, onNotice: (n) => notices.push(n) });
    await waitFor(() => fake.requestsTo(SPOT).length >= 5, { what: '5 polls', timeoutMs: 5_000, intervalMs: 5 });
    controller.abort();
    assert.equal(await done, undefined);
    assert.deepEqual(notices, []);
    assert.ok(fake.requestsTo(SPOT).every((r) => r.status === 404));
  });

  it('a notice: calls back once with the action and time, then stops polling', async () => {
    const fake = await startImds();
    const controller = new AbortController();
    cleanups.push(() => controller.abort());
    const notices: unknown[] = [];
    const done = watchSpotInterruption({ imds: client(fake), log: captureLogger(), signal: controller.signal, intervalMs: 10, onNotice: (n) => notices.push(n) });
    await waitFor(() => fake.requestsTo(SPOT).length >= 2, { what: 'two polls', timeoutMs: 5_000, intervalMs: 5 });
    fake.spotNotice = NOTICE;
    const result = await done; // resolves without an abort: the watcher ended by itself
    const expected = { action: 'terminate', timeMs: Date.parse('2017-09-18T08:22:00Z') };
    assert.deepEqual(result, expected);
    assert.deepEqual(notices, [expected]);
  });

  it('keeps polling through IMDS errors, logging them rate-limited, and still reports a later notice', async () => {
    const fake = await startImds();
    const controller = new AbortController();
    cleanups.push(() => controller.abort());
    const log = captureLogger();
    const notices: unknown[] = [];
    const done = watchSpotInterruption({
      imds: client(fake, { retries: 0 }),
      log,
      signal: controller.signal,
      intervalMs: 5,
      errorLogIntervalMs: 60_000,
      onNotice: (n) => notices.push(n),
    });
    fake.failNext(1_000);
    await waitFor(() => fake.requests.filter((r) => r.status === 500).length >= 10, { what: '10 failed polls', timeoutMs: 5_000, intervalMs: 5 });
    fake.failNext(0);
    fake.spotNotice = { action: 'stop', time: '2030-01-02T03:04:05Z' };
    await done;
    assert.deepEqual(notices, [{ action: 'stop', timeMs: Date.parse('2030-01-02T03:04:05Z') }]);
    const warns = log.entries.filter((e) => e.level === 'warn');
    assert.equal(warns.length, 1, `one warning in the interval, got ${warns.length}`);
    assert.match(warns[0].msg, /cannot check for a spot interruption notice; will keep trying/);
    assert.match(String(warns[0].fields?.error), /cannot reach the EC2 instance metadata service at .*HTTP 500/);
    assert.ok(log.entries.some((e) => e.level === 'info' && /works again/.test(e.msg)));
  });

  it('spotInterruptionMessage is the AgentToMaster message (the next test sends it over the wire)', () => {
    const msg = spotInterruptionMessage({ action: 'terminate', timeMs: Date.parse('2017-09-18T08:22:00Z') });
    assert.deepEqual(msg, { kind: 'spotInterruption', action: 'terminate', actionTimeMs: 1505722920000 });
  });

  it('reaches the master: config from user data, a real AgentSession, the notice sent through the outbox', async () => {
    const master = await FakeAgentService.start();
    cleanups.push(() => master.stop());
    const fake = await startImds({
      instanceId: 'i-0spot0000000000001',
      userData: renderAgentUserData(bootConfig({ masterHost: '127.0.0.1', masterPort: master.port, tlsCaCertPem: undefined, tlsServerName: undefined })),
    });
    const imds = client(fake);
    const opts = loadAgentOptions({ configFile: emptyConfigFile(), layer: {} }, {}, await ec2ConfigLayer(imds), 'EC2 user data');
    const log = captureLogger();
    const outbox = new Outbox();
    const devices: Device[] = [];
    const manager = new ContainerManager(new FakeRuntime(), { clusterId: '', agentId: opts.agentId, networkMode: opts.containerNetworkMode, devices }, outbox, log.child('containers'), testTaskFiles(log));
    const session = new AgentSession(opts, devices, manager, outbox, log.child('session'));
    const controller = new AbortController();
    const sessionDone = session.run(controller.signal);
    cleanups.push(async () => {
      controller.abort();
      await sessionDone.catch(() => undefined);
    });
    const spotDone = forwardSpotInterruption({ imds, outbox, log, signal: controller.signal, intervalMs: 10 });

    const c = await master.waitForRegister(1);
    assert.equal(c.metadata.get('x-det-agent-token')[0], 'join-token-from-user-data');
    const reg = master.registrations()[0];
    assert.equal(reg.agentId, 'i-0spot0000000000001');
    assert.equal(reg.instanceId, 'i-0spot0000000000001');
    assert.equal(reg.instanceType, 'p5.48xlarge');
    assert.equal(reg.resourcePool, 'gpu-spot');

    fake.spotNotice = NOTICE;
    await spotDone;
    await master.waitFor('the spot interruption message', () => master.allReceived().some((m) => m.kind === 'spotInterruption'));
    const spot = master.allReceived().filter((m): m is Extract<AgentToMaster, { kind: 'spotInterruption' }> => m.kind === 'spotInterruption');
    assert.deepEqual(spot, [{ kind: 'spotInterruption', action: 'terminate', actionTimeMs: Date.parse(NOTICE.time) }]);
    assert.ok(log.entries.some((e) => e.level === 'warn' && /spot interruption notice: EC2 will terminate this instance at 2017-09-18T08:22:00\.000Z/.test(e.msg)));
  });
});

// ---- the real binary ------------------------------------------------------

describe('det-agent --config-source ec2 (the real binary)', () => {
  const procs: DetProcess[] = [];
  afterEach(async () => {
    for (const p of procs.splice(0)) await p.stop();
  });

  async function runAgent(args: string[], env: NodeJS.ProcessEnv): Promise<DetProcess> {
    const p = spawnDet('det-agent', ['--config-file', emptyConfigFile(), ...args], env);
    procs.push(p);
    await Promise.race([p.exited, new Promise((_, reject) => setTimeout(() => reject(new Error(`det-agent did not exit: ${p.stderr}`)), 20_000))]);
    return p;
  }

  it(`exits ${EXIT_CONFIG_SOURCE_FAILED} (EX_CONFIG) with one clear line when the instance has no user data, before touching Docker`, async () => {
    const fake = await startImds();
    const p = await runAgent(['--config-source', 'ec2', '--docker-socket', '/nonexistent/docker.sock'], { AWS_EC2_METADATA_SERVICE_ENDPOINT: fake.endpoint });
    assert.equal(p.exitCode, 78, p.stderr);
    assert.equal(p.stdout, '');
    const lines = p.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, p.stderr);
    assert.match(lines[0], /^det-agent: EC2 user data is empty: launch the instance from the det-master/);
    assert.deepEqual(fake.requests.map((r) => r.path), ['/latest/api/token', '/latest/meta-data/instance-id', '/latest/meta-data/instance-type', '/latest/user-data']);
  });

  it(`exits ${EXIT_CONFIG_SOURCE_FAILED} with one clear line when IMDS is unreachable`, async () => {
    const endpoint = `http://127.0.0.1:${await unusedPort()}`;
    const p = await runAgent(['--config-source=ec2'], { AWS_EC2_METADATA_SERVICE_ENDPOINT: endpoint });
    assert.equal(p.exitCode, 78, p.stderr);
    const lines = p.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, p.stderr);
    assert.match(lines[0], new RegExp(`^det-agent: cannot reach the EC2 instance metadata service at ${endpoint.replace(/\./g, '\\.')}: .*Is this an EC2 instance with IMDS enabled`));
  });

  it('with good user data it takes its config from there and goes on to the Docker check', async () => {
    const fake = await startImds({ instanceId: 'i-0binary000000000001', userData: renderAgentUserData(bootConfig({ tlsCaCertPem: undefined, tlsServerName: undefined })) });
    const p = await runAgent(['--config-source', 'ec2', '--docker-socket', '/nonexistent/docker.sock'], { AWS_EC2_METADATA_SERVICE_ENDPOINT: fake.endpoint });
    assert.equal(p.exitCode, 1, p.stderr);
    assert.match(p.stderr, /\[agent\] config .*agentId=i-0binary000000000001/);
    assert.match(p.stderr, /masterHost=det-master\.internal masterPort=8443/);
    assert.match(p.stderr, /resourcePool=gpu-spot/);
    assert.doesNotMatch(p.stderr, /join-token-from-user-data/, 'the token is redacted');
    assert.match(p.stderr, /nonexistent\/docker\.sock/);
  });

  it('rejects an unknown --config-source, and lists the flag in --help', async () => {
    const bad = await runAgent(['--config-source', 'nfs'], {});
    assert.equal(bad.exitCode, 1);
    assert.match(bad.stderr, /^det-agent: --config-source must be "file" or "ec2", not "nfs"$/m);
    const help = await runAgent(['--help'], {});
    assert.equal(help.exitCode, 0);
    assert.match(help.stdout, /--config-source <source>/);
  });
});
