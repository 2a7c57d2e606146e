// The agent tarball of the AMI (npm run bundle:agent), unpacked in a clean temp dir with no
// node_modules and run with a PATH that has no Node: its layout, `det-agent --version` (version and
// commit), a real registration and a trial against a master on 127.0.0.1 with the test Docker,
// and the boot-time join from EC2 user data (IMDSv2 fake) the way the AMI's unit starts it.
import { strict as assert } from 'node:assert';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EXIT_CONFIG_SOURCE_FAILED } from '../../agent/main';
import type { Agent__Output } from '../../common/proto-gen/determined/api/v1/Agent';
import { renderAgentUserData } from '../../common/userdata';
import type { AgentBundle } from '../../scripts/bundle-agent';
import { createExperiment, getTrial, rpc, singleTrialYaml } from '../support/admin-api';
import { agentBundle, listFiles, unpackBundle } from '../support/agent-bundle';
import { testEnv, waitFor } from '../support/env';
import { FakeImds } from '../support/fake-imds';
import { startInProcessMaster, type InProcessMaster } from '../support/in-process-master';
import { DetProcess, ROOT } from '../support/processes';

const TOKEN = 'bundle-test-join-token-7c2e';
const PKG_VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const tmp = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));

describe('agent bundle (the AMI tarball)', function () {
  this.timeout(120_000);
  const env = testEnv();
  let bundle: AgentBundle;
  let prefix: string;
  /** An empty directory: the whole PATH of the bundled agent, so there is no node on it. */
  let noNodePath: string;
  const agents: DetProcess[] = [];
  const masters: InProcessMaster[] = [];
  const imdss: FakeImds[] = [];

  before(async function () {
    this.timeout(300_000);
    bundle = await agentBundle();
    prefix = unpackBundle(bundle);
    noNodePath = tmp('det-bundle-path-');
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) await a.stop();
    for (const m of masters.splice(0)) await m.stop();
    for (const f of imdss.splice(0)) await f.stop();
  });

  /** Runs the unpacked bin/det-agent with only `env` (PATH without Node unless given). */
  function runAgent(args: string[], extraEnv: NodeJS.ProcessEnv = {}): DetProcess {
    const child = spawn(path.join(prefix, 'bin', 'det-agent'), args, {
      env: { PATH: noNodePath, HOME: tmp('det-bundle-home-'), ...extraEnv },
      cwd: tmp('det-bundle-cwd-'),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const p = new DetProcess('det-agent (bundle)', child);
    agents.push(p);
    return p;
  }

  async function startMaster(): Promise<InProcessMaster> {
    const m = await startInProcessMaster({ dbFile: path.join(tmp('det-bundle-master-'), 'master.db'), token: TOKEN, clusterName: 'bundle-test', pools: [{ name: 'default', description: '' }] });
    masters.push(m);
    return m;
  }

  const listAgents = async (m: InProcessMaster) => (await rpc<{ agents: Agent__Output[] }>((cb) => m.api.ListAgents({}, cb))).agents;

  it('holds the launcher, one JS file and the Node runtime of this repo, and nothing master-only or native', () => {
    const files = listFiles(prefix);
    for (const f of ['bin/det-agent', 'lib/det-agent.js', 'lib/node']) assert.ok(files.includes(f), `${f} in ${files.join(', ')}`);
    assert.deepEqual(files.filter((f) => !['bin/det-agent', 'lib/det-agent.js', 'lib/node', 'lib/node.LICENSE'].includes(f)), [], 'nothing else in the tarball');
    assert.equal(execFileSync(path.join(prefix, 'lib', 'node'), ['--version'], { env: {} }).toString().trim(), process.version, 'the Node that runs this repo');
    // No node_modules anywhere it could resolve modules from.
    for (let d = prefix; ; d = path.dirname(d)) {
      assert.ok(!fs.existsSync(path.join(d, 'node_modules')), `${d}/node_modules exists`);
      if (d === path.dirname(d)) break;
    }
    const js = fs.readFileSync(path.join(prefix, 'lib', 'det-agent.js'), 'utf8');
    // esbuild marks each bundled module with a "// <path>" comment.
    const modules = [...js.matchAll(/^\/\/ ((?:node_modules\/)?[^\s]+\.(?:[cm]?js|ts|json))$/gm)].map((m) => m[1]);
    assert.ok(modules.some((m) => m.startsWith('agent/')) && modules.some((m) => m.startsWith('node_modules/dockerode/')), 'the agent and dockerode are bundled');
    const unwanted = modules.filter((m) => /^master\/|node_modules\/(better-sqlite3|bindings|ssh2|cpu-features)\//.test(m));
    assert.deepEqual(unwanted, [], 'no master code, SQLite, ssh2 or native modules');
    const sc = spawnSync('shellcheck', [path.join(prefix, 'bin', 'det-agent')], { encoding: 'utf8' });
    assert.equal(sc.error, undefined, 'shellcheck must be installed (test/env/setup.sh)');
    assert.equal(sc.status, 0, sc.stdout + sc.stderr);
  });

  it('det-agent --version works without Node on PATH and prints the version and the git commit', async () => {
    assert.notEqual(spawnSync('/bin/sh', ['-c', 'command -v node'], { env: { PATH: noNodePath } }).status, 0, 'node is not on PATH');
    const r = spawnSync(path.join(prefix, 'bin', 'det-agent'), ['--version'], { env: { PATH: noNodePath }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `det-agent ${PKG_VERSION} (commit ${bundle.commit})\n`);
    const head = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
    if (process.env.DET_BUILD_COMMIT) assert.equal(bundle.commit, process.env.DET_BUILD_COMMIT);
    else if (head.status === 0) assert.match(bundle.commit, new RegExp(`^${head.stdout.trim()}(-dirty)?$`), 'the commit of this checkout');
    else assert.equal(bundle.commit, 'unknown', 'no git checkout: no commit to embed');

    // Through a symlink elsewhere (e.g. /usr/local/bin/det-agent), with readlink on PATH.
    const linkDir = tmp('det-bundle-link-');
    const tools = tmp('det-bundle-tools-');
    const readlink = execFileSync('/bin/sh', ['-c', 'command -v readlink']).toString().trim();
    fs.symlinkSync(readlink, path.join(tools, 'readlink'));
    fs.symlinkSync(path.join(prefix, 'bin', 'det-agent'), path.join(linkDir, 'det-agent'));
    const viaLink = spawnSync(path.join(linkDir, 'det-agent'), ['--version'], { env: { PATH: tools }, encoding: 'utf8' });
    assert.equal(viaLink.status, 0, viaLink.stderr);
    assert.equal(viaLink.stdout, r.stdout);
  });

  it('registers with a master on 127.0.0.1 and runs a trial on the test Docker', async () => {
    const m = await startMaster();
    const agent = runAgent(
      ['--master-host', '127.0.0.1', '--master-port', String(m.server.port), '--agent-id', 'bundle-agent', '--docker-socket', env.dockerSocket, '--work-dir', tmp('det-bundle-work-')],
      { DET_AGENT_TOKEN: TOKEN },
    );
    await agent.waitForOutput(/det-agent bundle-agent registered with master 127\.0\.0\.1:\d+/, 'the bundled agent to register');
    const listed = (await listAgents(m)).find((a) => a.id === 'bundle-agent');
    assert.equal(listed?.version, PKG_VERSION, 'the version built into the bundle reaches the master');
    assert.equal(listed?.state, 'AGENT_STATE_CONNECTED');

    const { trial } = await createExperiment(m, singleTrialYaml({ name: 'bundle', command: 'echo trial ran on $DET_AGENT_ID', slots: 1 }));
    let last = trial;
    await waitFor(async () => (last = await getTrial(m, trial.id)).state === 'TRIAL_STATE_COMPLETED', {
      what: `trial ${trial.id} to complete (last: ${last.state} ${last.message})`,
      timeoutMs: 60_000,
    });
    assert.equal(last.agentId, 'bundle-agent');
    assert.equal(await agent.stop(), 0, agent.stderr.slice(-2000));
  });

  it('joins from EC2 user data through IMDSv2 as the AMI unit runs it, and exits 78 without user data', async () => {
    const m = await startMaster();
    const imds = await FakeImds.start({
      instanceId: 'i-0b0dd1e5bundle0001',
      instanceType: 'c5.xlarge',
      userData: renderAgentUserData({ masterHost: '127.0.0.1', masterPort: m.server.port, resourcePool: 'default', agentToken: TOKEN, agent: {} }),
    });
    imdss.push(imds);
    const runtimeDir = tmp('det-bundle-run-');
    const agent = runAgent(['--config-source', 'ec2', '--docker-socket', env.dockerSocket, '--work-dir', tmp('det-bundle-work-')], {
      AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.endpoint,
      RUNTIME_DIRECTORY: runtimeDir,
    });
    await agent.waitForOutput(/det-agent i-0b0dd1e5bundle0001 registered with master 127\.0\.0\.1:\d+/, 'the agent to join as its instance id');
    const listed = (await listAgents(m)).find((a) => a.id === 'i-0b0dd1e5bundle0001');
    assert.ok(listed, 'the master knows the agent by its instance id');
    assert.ok(imds.requestsTo('/latest/api/token', 'PUT').length >= 1, 'IMDSv2 session token');
    assert.ok(imds.requestsTo('/latest/user-data').every((r) => r.token !== undefined), 'reads carry the token');
    assert.equal(await agent.stop(), 0, agent.stderr.slice(-2000));

    const empty = await FakeImds.start({ instanceId: 'i-0b0dd1e5bundle0002' });
    imdss.push(empty);
    const bad = runAgent(['--config-source', 'ec2', '--docker-socket', env.dockerSocket, '--work-dir', tmp('det-bundle-work-')], {
      AWS_EC2_METADATA_SERVICE_ENDPOINT: empty.endpoint,
      RUNTIME_DIRECTORY: runtimeDir,
    });
    assert.equal(await bad.exited, EXIT_CONFIG_SOURCE_FAILED);
    assert.equal(EXIT_CONFIG_SOURCE_FAILED, 78, 'the exit code packer/files/det-agent.service does not restart on');
    assert.match(bad.stderr, /^det-agent: EC2 user data is empty: .*\n$/, 'one clear error line');
  });
});
