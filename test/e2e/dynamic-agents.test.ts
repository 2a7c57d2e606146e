// End to end: dynamic agents. A master with zero agents launches them when
// work is queued and terminates them when idle (local provider: real det-agent
// processes on the test dockerd), and falls back across EC2 instance types on
// capacity errors without hammering the API (EC2 provider against the fake).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { testEnv, waitFor } from '../support/env';
import { startFakeEc2, type FakeEc2 } from '../support/fake-ec2';
import { det, startMaster, type TestMaster } from '../support/processes';

const tmp = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));

function writeFile(name: string, text: string): string {
  const file = path.join(tmp('det-e2e-dyn-'), name);
  fs.writeFileSync(file, text);
  return file;
}

describe('e2e: dynamic agents', function () {
  this.timeout(120_000);
  const env = testEnv();
  let master: TestMaster | undefined;
  let ec2: FakeEc2 | undefined;
  afterEach(async () => {
    await master?.proc.stop();
    await ec2?.close();
    master = undefined;
    ec2 = undefined;
  });
  const status = async () => JSON.parse((await det(['-m', master!.address, '--json', 'provisioner', 'status'])).stdout)[0];

  it('local provider: zero agents, submit, agents launched, trials complete, idle agents terminated', async () => {
    const config = writeFile(
      'master.yaml',
      `resource_pools:
  - pool_name: default
    provider:
      type: local
      slots_per_instance: 1
      max_instances: 2
      max_idle_agent_period: 2s
      max_agent_starting_period: 60s
      docker_socket: ${env.dockerSocket}
`,
    );
    master = await startMaster(['--config-file', config]);
    const m = ['-m', master.address];
    assert.deepEqual(JSON.parse((await det([...m, '--json', 'agent', 'list'])).stdout), []);
    const before = await status();
    assert.equal(before.provider, 'local');
    assert.equal(before.instances.length, 0);

    const exp = writeFile('exp.yaml', `name: dyn\nimage: ${env.image}\nentrypoint: echo "trial $DET_TRIAL_ID on $DET_AGENT_ID"; sleep 1\nsearcher: {name: grid}\nhyperparameters: {x: {type: categorical, vals: [1, 2, 3]}}\n`);
    const r = await det([...m, 'experiment', 'create', exp, '--follow']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const agentIds = new Set([...r.stdout.matchAll(/trial \d+ on (default-[0-9a-f]+)/g)].map((x) => x[1]));
    assert.ok(agentIds.size >= 1 && agentIds.size <= 2, `ran on ${[...agentIds].join(', ')}`);

    const agents = JSON.parse((await det([...m, '--json', 'agent', 'list'])).stdout) as { id: string; instanceId: string; instanceType: string }[];
    for (const id of agentIds) {
      const a = agents.find((x) => x.id === id);
      assert.equal(a?.instanceId, id, 'det agent list shows the instance id');
      assert.equal(a?.instanceType, 'local');
    }
    // Idle for 2 s: disabled, then terminated; status shows no instances and counted instance-hours.
    await waitFor(async () => (await status()).instances.length === 0, { what: 'idle instances to be terminated', timeoutMs: 60_000 });
    const after = await status();
    assert.ok(after.instanceHours > 0);
    assert.equal(after.lastError, null);
    await master.proc.waitForOutput(/terminating instance .*reason="idle for/, 'the termination log line');
    await waitFor(async () => JSON.parse((await det([...m, '--json', 'agent', 'list'])).stdout).every((a: { state: string }) => a.state === 'DISCONNECTED'), { what: 'agents gone' });
    const text = await det([...m, 'provisioner', 'status']);
    assert.match(text.stdout, /Provider:\s+local/);
    assert.match(text.stdout, /Instances:\s+0 \(min 0, max 2\)/);
  });

  it('EC2 provider: a capacity error on the first instance type falls back to the second, with bounded retries', async () => {
    ec2 = await startFakeEc2();
    ec2.failWith({ action: 'RunInstances', code: 'InsufficientInstanceCapacity', instanceType: 'g5.xlarge' });
    const config = writeFile(
      'master.yaml',
      `resource_pools:
  - pool_name: gpu
    provider:
      type: aws
      region: us-west-2
      endpoint: ${ec2.endpoint}
      image_id: ami-0123456789abcdef0
      instance_types: [g5.xlarge, g4dn.xlarge]
      subnet_ids: [subnet-a]
      security_group_ids: [sg-1]
      master_host: 127.0.0.1
      max_instances: 2
      tags: {team: ml}
`,
    );
    // Debug logging: each provisioner pass logs a line, so the test can wait for passes instead of time.
    const awsEnv = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_EC2_METADATA_DISABLED: 'true', AWS_REGION: 'us-west-2', DET_LOG_LEVEL: 'debug' };
    master = await startMaster(['--config-file', config], awsEnv);
    const m = ['-m', master.address];
    const exp = writeFile('exp.yaml', `name: gpu-job\nimage: ${env.image}\nentrypoint: ["true"]\nresources: {resource_pool: gpu, slots_per_trial: 1}\n`);
    const r = await det([...m, 'experiment', 'create', exp]);
    assert.equal(r.code, 0, r.stderr);

    await waitFor(async () => (await status()).instances.some((i: { instanceType: string }) => i.instanceType === 'g4dn.xlarge'), { what: 'a g4dn.xlarge instance', timeoutMs: 30_000 });
    const s = await status();
    assert.equal(s.lastError.code, 'InsufficientInstanceCapacity');
    assert.equal(s.lastError.kind, 'capacity');
    assert.equal(s.lastError.instanceType, 'g5.xlarge');
    const runs = ec2.calls('RunInstances');
    const byType = (t: string) => runs.filter((c) => c.params.InstanceType === t).length;
    assert.ok(byType('g5.xlarge') >= 1 && byType('g5.xlarge') <= 3, `g5 calls: ${byType('g5.xlarge')} (the SDK retries 5xx up to 3 attempts)`);
    assert.equal(byType('g4dn.xlarge'), 1);
    const launched = runs.find((c) => c.params.InstanceType === 'g4dn.xlarge')!;
    assert.equal(launched.params['MetadataOptions.HttpTokens'], 'required');
    assert.equal(launched.params.SubnetId, 'subnet-a');

    // Another trial that needs a second instance while every offering is out of capacity:
    // the pool falls back, then backs off instead of retrying in a loop.
    ec2.failWith({ action: 'RunInstances', code: 'InsufficientInstanceCapacity', instanceType: 'g4dn.xlarge' });
    const before = ec2.calls('RunInstances').length;
    await det([...m, 'experiment', 'create', exp]);
    await waitFor(async () => (await status()).nextLaunchAllowedAtMs > Date.now() || ec2!.calls('RunInstances').length - before >= 6, { what: 'backoff after every offering failed', timeoutMs: 30_000 });
    const settled = ec2.calls('RunInstances').length;
    // More demand while backing off: the passes it triggers must not call RunInstances.
    const passes = () => (master!.proc.stderr.match(/provisioner pass pool=gpu/g) ?? []).length;
    const passesBefore = passes();
    await det([...m, 'experiment', 'create', exp]);
    await det([...m, 'experiment', 'create', exp]);
    await waitFor(() => passes() >= passesBefore + 2, { what: 'two more provisioner passes', timeoutMs: 30_000 });
    assert.equal(ec2.calls('RunInstances').length, settled, 'no launch storm while backing off');
    assert.ok(settled - before <= 6, `calls during the outage: ${settled - before}`);
    const text = await det([...m, 'provisioner', 'status']);
    assert.match(text.stdout, /Last Launch Error:\s+InsufficientInstanceCapacity/);
    assert.match(text.stdout, /g4dn\.xlarge/);
  });
});
