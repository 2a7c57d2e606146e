// End to end: the local AMI bake and boot. `packer build -only=docker.agent` runs packer/'s
// provisioning scripts (gpu=false) on a Debian minbase image with systemd, its apt sources pointed
// at a local repository served on 127.0.0.1 (both prepared and cached by test/env/setup.sh). A
// container of the result then boots like an EC2 instance: systemd as PID 1 starts det-agent.service
// from the image, with the test Docker's socket, host networking and an IMDSv2 fake serving the user
// data the real det-master rendered when its EC2 provider (on a fake EC2) launched the instance.
// The agent joins as the instance id and runs the trial that made the master launch it.
// docs/ami.md lists what differs from a real EC2 boot.
import { strict as assert } from 'node:assert';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseAgentUserData } from '../../common/userdata';
import type { AgentBundle } from '../../scripts/bundle-agent';
import { agentBundle } from '../support/agent-bundle';
import { testEnv, waitFor } from '../support/env';
import { startFakeEc2, type FakeEc2 } from '../support/fake-ec2';
import { FakeImds } from '../support/fake-imds';
import { bakeEnv, packerCopy, packerEnv, PKG_VERSION, type BakeEnv } from '../support/packer';
import { det, startMaster, type TestMaster } from '../support/processes';
import { serveDirectory, type StaticServer } from '../support/static-server';

const tmp = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));

/** Runs the docker CLI against the test dockerd; rejects with its stderr. */
function docker(args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('docker', args, { env: { ...process.env, DOCKER_HOST: `unix://${testEnv().dockerSocket}` }, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`docker ${args.slice(0, 3).join(' ')} ...: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Runs packer (async: the apt repository is served from this process) with its output in a log file. */
function packer(args: string[], cwd: string, log: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = fs.openSync(log, 'w');
    const child = spawn('packer', args, { cwd, env: packerEnv({ DOCKER_HOST: `unix://${testEnv().dockerSocket}` }), stdio: ['ignore', out, out] });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => reject(new Error(`packer: ${err.message} (test/env/setup.sh installs it)`)));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      fs.closeSync(out);
      if (code === 0) return resolve();
      const tail = fs.readFileSync(log, 'utf8').split('\n').slice(-60).join('\n');
      reject(new Error(`packer ${args[0]} exited with ${code ?? signal} (log ${log}):\n${tail}`));
    });
  });
}

/** Names of the capabilities this host does not grant (docker's --privileged asks for all of them). */
function capsNotGranted(): string[] {
  const names = ['CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP', 'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER', 'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP', 'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF', 'CHECKPOINT_RESTORE'];
  const hex = /^CapBnd:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0';
  const bnd = BigInt(`0x${hex}`);
  return names.filter((_, bit) => (bnd & (1n << BigInt(bit))) === 0n);
}

describe('e2e: AMI bake (packer docker.agent) and boot (systemd instance joins from user data)', function () {
  this.timeout(300_000);
  const env = testEnv();
  const suffix = randomBytes(4).toString('hex');
  const imageRepo = `det-test/agent-bake-${suffix}`;
  const image = `${imageRepo}:${PKG_VERSION}`;
  const instanceName = `det-bake-instance-${suffix}`;
  let bake: BakeEnv;
  let bundle: AgentBundle;
  let apt: StaticServer;
  let packerDir: string;
  let baked = false;
  let master: TestMaster | undefined;
  let ec2: FakeEc2 | undefined;
  let imds: FakeImds | undefined;
  let instanceStarted = false;

  before(async function () {
    // A cold run (no image layers yet, vfs storage) takes a few minutes.
    this.timeout(900_000);
    bake = bakeEnv();
    bundle = await agentBundle();
    apt = await serveDirectory(bake.aptRepo);
    packerDir = packerCopy();
    const log = path.join(path.dirname(packerDir), 'packer-build.log');
    baked = true; // from here on after() removes the image, even of a failed build
    await packer(
      [
        'build',
        '-only=docker.agent',
        '-var', `docker_image=${bake.baseImage}`,
        '-var', 'docker_pull=false',
        '-var', `docker_repository=${imageRepo}`,
        '-var', `agent_bundle=${bundle.tarball}`,
        // The packages come from the local repository; it is unsigned, hence trusted=yes.
        '-var', `apt_sources=deb [trusted=yes] ${apt.url} ./`,
        '.',
      ],
      packerDir,
      log,
      800_000,
    );
  });

  after(async function () {
    this.timeout(120_000);
    if (instanceStarted) await docker(['rm', '-f', '-v', instanceName]).catch(() => undefined);
    await master?.proc.stop();
    await ec2?.close();
    await imds?.stop();
    await apt?.close();
    if (baked) await docker(['rmi', '-f', image]).catch(() => undefined);
  });

  it('bakes with the apt repository on 127.0.0.1, leaves a clean image, and its scripts run again on it (idempotent)', async () => {
    assert.ok(apt.requests.some((r) => /^GET \/(\.\/)?Packages(\.gz)? 200$/.test(r)), `apt read the local index: ${apt.requests.slice(0, 5).join('; ')}`);
    assert.ok(apt.requests.some((r) => /^GET \/(\.\/)?docker\.io_[^ ]+\.deb 200$/.test(r)), 'docker.io came from the local repository');
    const labels = JSON.parse(await docker(['image', 'inspect', '--format', '{{json .Config.Labels}}', image])) as Record<string, string>;
    assert.equal(labels['ai.det.agent-version'], PKG_VERSION);
    assert.equal(labels['ai.det.gpu'], 'false');
    // One container (each costs a copy of the image on the test dockerd's vfs): what the image
    // holds, read without booting it (the entrypoint is systemd); then every provisioning script
    // again, in the build's order, with the same variables.
    const state = [
      'echo "machine-id: [$(cat /etc/machine-id)]"',
      'echo "sources: $(grep -v "^#" /etc/apt/sources.list | tr "\\n" " ")"',
      'echo "lists: $(find /var/lib/apt/lists -type f ! -name lock | wc -l)"',
      'echo "det-bake: $(test -e /var/lib/det-bake && echo left || echo gone)"',
      'echo "uploads: $(ls /tmp/det-agent.tar.gz /tmp/det-agent.service 2>/dev/null | wc -l)"',
      'echo "enabled: $(readlink /etc/systemd/system/multi-user.target.wants/det-agent.service)"',
      'echo "docker: $(readlink /etc/systemd/system/multi-user.target.wants/docker.service)"',
      'echo "version: $(/opt/determined/bin/det-agent --version)"',
      'echo "node on PATH: $(command -v node || echo none)"',
    ];
    const rerun = ['prepare', 'install-docker', 'install-nvidia', 'install-agent', 'prepull-images', 'cleanup'].map((s) => `bash /det-scripts/${s}.sh`);
    const out = await docker(
      [
        'run', '--rm', '--network', 'host', '--label', 'ai.det.test=ami-bake', '--entrypoint', '/bin/bash',
        '-e', `APT_SOURCES=deb [trusted=yes] ${apt.url} ./`, '-e', 'DET_GPU=false',
        '-e', 'AGENT_BUNDLE=/det-upload/det-agent.tar.gz', '-e', 'AGENT_UNIT=/det-upload/det-agent.service',
        '-v', `${path.join(packerDir, 'scripts')}:/det-scripts:ro`,
        '-v', `${bundle.tarball}:/det-upload/det-agent.tar.gz:ro`,
        '-v', `${path.join(packerDir, 'files', 'det-agent.service')}:/det-upload/det-agent.service:ro`,
        image, '-c', ['set -eu', ...state, 'echo "--- again ---"', ...rerun, 'echo "sources after: $(grep -c 127.0.0.1 /etc/apt/sources.list || true)"'].join('\n'),
      ],
      240_000,
    );
    const [before, again] = out.split('--- again ---\n');
    assert.ok(again !== undefined, out);
    assert.match(before, /^machine-id: \[\]$/m, 'empty machine-id: each instance gets its own');
    assert.doesNotMatch(before, /^sources: .*127\.0\.0\.1/m, 'the bake-time apt sources are gone');
    assert.match(before, /^sources: deb \S+ \S+ main/m, "the base image's own apt sources are back");
    assert.match(before, /^lists: 0$/m, 'no apt lists');
    assert.match(before, /^det-bake: gone$/m);
    assert.match(before, /^uploads: 0$/m);
    assert.match(before, /^enabled: \/etc\/systemd\/system\/det-agent\.service$/m);
    assert.match(before, /^docker: \/(usr\/)?lib\/systemd\/system\/docker\.service$/m);
    assert.equal(before.match(/^version: (.*)$/m)?.[1], `det-agent ${PKG_VERSION} (commit ${bundle.commit})`);
    assert.match(before, /^node on PATH: none$/m);
    assert.match(again, /det-bake docker: docker\.io already installed/);
    assert.match(again, new RegExp(`det-bake agent: installed det-agent ${PKG_VERSION.replace(/\./g, '\\.')} `));
    assert.match(again, /det-bake cleanup: restored the image's apt sources/);
    assert.match(again, /^sources after: 0$/m);
  });

  it('boots as an instance: systemd starts det-agent, which joins from the user data the master rendered and runs the trial', async () => {
    ec2 = await startFakeEc2();
    const config = path.join(tmp('det-e2e-bake-'), 'master.yaml');
    fs.writeFileSync(
      config,
      `resource_pools:
  - pool_name: default
    provider:
      type: aws
      region: us-west-2
      endpoint: ${ec2.endpoint}
      image_id: ami-0de7a9e0ba4e00001
      instance_types: [{type: c5.large, slots: 1}]
      master_host: 127.0.0.1
      max_instances: 1
`,
    );
    master = await startMaster(['--config-file', config], { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_EC2_METADATA_DISABLED: 'true', AWS_REGION: 'us-west-2' });
    const m = ['-m', master.address];
    const exp = path.join(tmp('det-e2e-bake-'), 'exp.yaml');
    fs.writeFileSync(exp, `name: ami-bake\nimage: ${env.image}\nentrypoint: echo "trial on $DET_AGENT_ID"\nresources: {slots_per_trial: 1}\n`);
    const created = await det([...m, 'experiment', 'create', exp]);
    assert.equal(created.code, 0, created.stderr);
    const expId = Number(/Created experiment (\d+)/.exec(created.stdout)?.[1]);

    // The master launches an instance for the queued trial; its user data is what the agent reads.
    await waitFor(() => ec2!.instances().length === 1, { what: 'RunInstances from the master', timeoutMs: 30_000 });
    const launched = ec2.instances()[0];
    assert.equal(launched.imageId, 'ami-0de7a9e0ba4e00001');
    const userData = Buffer.from(launched.userData ?? '', 'base64').toString('utf8');
    const boot = parseAgentUserData(userData);
    assert.equal(boot.masterHost, '127.0.0.1');
    assert.equal(boot.masterPort, master.port);
    assert.equal(boot.resourcePool, 'default');
    assert.equal(boot.agentToken, master.token);
    imds = await FakeImds.start({ instanceId: launched.id, instanceType: launched.instanceType, userData });

    // The instance. Site settings as an operator would put them in /etc/default/det-agent: here the
    // IMDS endpoint (the fake on 127.0.0.1) and a work dir that exists at the same path on the host,
    // because Docker resolves the bind mounts of trial containers on the host.
    const workDir = tmp('det-e2e-bake-work-');
    const defaults = path.join(tmp('det-e2e-bake-etc-'), 'det-agent');
    fs.writeFileSync(defaults, `AWS_EC2_METADATA_SERVICE_ENDPOINT=${imds.endpoint}\nDET_AGENT_WORK_DIR=${workDir}\n`);
    instanceStarted = true;
    await docker(
      [
        'run', '-d', '--name', instanceName, '--label', 'ai.det.test=ami-bake',
        '--network', 'host',
        // systemd as PID 1: every capability this host grants (--privileged asks for more), cgroups writable.
        '--cap-add', 'ALL', ...capsNotGranted().flatMap((c) => ['--cap-drop', c]),
        '--security-opt', 'seccomp=unconfined', '--security-opt', 'apparmor=unconfined',
        '--stop-signal', 'SIGRTMIN+3', '--tmpfs', '/run', '--tmpfs', '/run/lock',
        '-v', '/sys/fs/cgroup:/sys/fs/cgroup:rw',
        // The host's Docker instead of the image's own dockerd (masked).
        '-v', `${env.dockerSocket}:/run/docker.sock`,
        '-v', '/dev/null:/etc/systemd/system/docker.service', '-v', '/dev/null:/etc/systemd/system/docker.socket', '-v', '/dev/null:/etc/systemd/system/containerd.service',
        '-v', `${defaults}:/etc/default/det-agent:ro`,
        '-v', `${workDir}:${workDir}`,
        image,
      ],
      240_000,
    );
    const journal = () => docker(['exec', instanceName, 'journalctl', '-u', 'det-agent', '--no-pager', '-o', 'cat']).catch((e: Error) => e.message);
    const withJournal = async (p: Promise<void>) => {
      try {
        await p;
      } catch (err) {
        throw new Error(`${(err as Error).message}\n--- journalctl -u det-agent in the instance ---\n${(await journal()).slice(-4000)}`);
      }
    };

    await withJournal(waitFor(async () => (await journal()).includes(`det-agent ${launched.id} registered with master 127.0.0.1:${master!.port}`), { what: 'det-agent.service to register', timeoutMs: 120_000, intervalMs: 500 }));
    const pid1 = (await docker(['exec', instanceName, 'cat', '/proc/1/comm'])).trim();
    assert.equal(pid1, 'systemd', 'systemd is PID 1 of the instance');
    const agents = JSON.parse((await det([...m, '--json', 'agent', 'list'])).stdout) as { id: string; instanceId: string; instanceType: string; version: string }[];
    const agent = agents.find((a) => a.id === launched.id);
    assert.ok(agent, `agents: ${JSON.stringify(agents)}`);
    assert.equal(agent.instanceType, 'c5.large');
    assert.equal(agent.version, PKG_VERSION);

    let last: { experiment: { state: string }; trials: { state: string; agentId: string; message: string }[] } | undefined;
    await withJournal(
      waitFor(async () => {
        last = JSON.parse((await det([...m, '--json', 'experiment', 'describe', String(expId)])).stdout);
        return last!.experiment.state === 'COMPLETED';
      }, { what: `experiment ${expId} to complete (last: ${JSON.stringify(last)})`, timeoutMs: 120_000, intervalMs: 500 }),
    );
    assert.equal(last!.trials[0].agentId, launched.id);
    const logs = await det([...m, 'trial', 'logs', String((JSON.parse((await det([...m, '--json', 'experiment', 'describe', String(expId)])).stdout) as { trials: { id: number }[] }).trials[0].id)]);
    assert.match(logs.stdout, new RegExp(`trial on ${launched.id}`));

    const show = await docker(['exec', instanceName, 'systemctl', 'show', 'det-agent', '-p', 'ActiveState', '-p', 'NRestarts', '-p', 'ExecMainStatus']);
    assert.match(show, /^ActiveState=active$/m);
    assert.match(show, /^NRestarts=0$/m, 'no restarts');
    const status = JSON.parse((await det([...m, '--json', 'provisioner', 'status'])).stdout)[0] as { instances: { id: string; agentConnected: boolean }[] };
    assert.deepEqual(status.instances.map((i) => [i.id, i.agentConnected]), [[launched.id, true]]);
  });
});
