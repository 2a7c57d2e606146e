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
  /** master.yaml with one local-provider pool 'default' on the test dockerd; `keys` go into its provider block. */
  const localPoolConfig = (keys: Record<string, string | number>) =>
    writeFile(
      'master.yaml',
      ['resource_pools:', '  - pool_name: default', '    provider:', '      type: local', '      max_agent_starting_period: 60s', `      docker_socket: ${env.dockerSocket}`]
        .concat(Object.entries(keys).map(([k, v]) => `      ${k}: ${v}`))
        .join('\n') + '\n',
    );

  it('local provider: zero agents, submit, agents launched, trials complete, idle agents terminated', async () => {
    const config = localPoolConfig({ slots_per_instance: 1, max_instances: 2, max_idle_agent_period: '2s' });
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

  it('local provider with consolidation: a checkpointing trial moves off a half-used instance, resumes from its checkpoint, and the emptied instance is terminated', async () => {
    const config = localPoolConfig({ slots_per_instance: 2, max_instances: 3, max_idle_agent_period: '120s', consolidation: '{enabled: true, max_checkpoint_age: 30s}' });
    master = await startMaster(['--config-file', config]);
    const m = ['-m', master.address];
    const create = async (name: string, slots: number, script: string) => {
      const file = writeFile(`${name}.yaml`, `name: ${name}\nimage: ${env.image}\nmax_restarts: 0\nkill_grace_period: 20s\nresources: {slots_per_trial: ${slots}}\nentrypoint: ["sh", "-c", ${JSON.stringify(script)}]\n`);
      const r = await det([...m, 'experiment', 'create', file]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      return Number(/Created experiment (\d+)/.exec(r.stdout)![1]);
    };
    const trialOf = async (id: number) => JSON.parse((await det([...m, '--json', 'experiment', 'describe', String(id)])).stdout).trials[0];
    const running = async (id: number) => {
      let t: { state: string; agentId: string } | undefined;
      await waitFor(async () => (t = await trialOf(id)).state === 'RUNNING', { what: `experiment ${id}'s trial to run`, timeoutMs: 60_000, intervalMs: 200 });
      return t!.agentId;
    };
    const kill = async (id: number) => {
      assert.equal((await det([...m, 'experiment', 'kill', String(id)])).code, 0);
      await waitFor(async () => (await trialOf(id)).state === 'CANCELED', { what: `experiment ${id} to be canceled`, timeoutMs: 60_000, intervalMs: 200 });
    };
    const wait = "trap 'exit 143' TERM; sleep 600 & wait $!";
    // Checkpoints every 2 s; on SIGTERM it stops and exits 0 (a stop, not the end of its work);
    // resumed, it says from where and finishes.
    const mover = `if [ -n "$DET_LATEST_CHECKPOINT" ]; then echo "resumed from $(cat $DET_LATEST_CHECKPOINT/state.txt) on $DET_AGENT_ID"; exit 0; fi
trap 'echo "stopping on $DET_AGENT_ID"; exit 0' TERM
i=0; while true; do i=$((i+1)); d=$DET_CHECKPOINT_DIR/step-$i; mkdir -p $d; echo step-$i > $d/state.txt; touch $d/.det-complete; sleep 2 & wait $!; done`;

    // Instance 1 runs the mover and a filler, instance 2 a 2-slot trial: both full.
    const moverId = await create('mover', 1, mover);
    const first = await running(moverId);
    const wide = await create('wide', 2, wait);
    const second = await running(wide);
    assert.notEqual(first, second);
    const filler = await create('filler', 1, wait);
    assert.equal(await running(filler), first, 'best fit puts the filler next to the mover');
    // Instance 2 is freed and takes a trial without checkpoints; then the filler ends: each
    // instance runs one 1-slot trial, and only the mover has checkpoints.
    await kill(wide);
    const stay = await create('stay', 1, wait);
    assert.equal(await running(stay), second);
    await kill(filler);

    await waitFor(async () => (await trialOf(moverId)).state === 'COMPLETED', { what: 'the mover to be moved, resumed and completed', timeoutMs: 90_000, intervalMs: 500 });
    const t = await trialOf(moverId);
    assert.equal(t.restarts, 0, 'a move is no restart');
    const logs = (await det([...m, 'trial', 'logs', String(t.id)])).stdout;
    assert.match(logs, new RegExp(`stopping on ${first}`));
    assert.match(logs, new RegExp(`resumed from step-\\d+ on ${second}`));
    await master.proc.waitForOutput(new RegExp(`terminating instance .*instance=${first}.*consolidated`), 'the consolidated instance terminated');
    await waitFor(async () => (await status()).instances.map((i: { id: string }) => i.id).join() === second, { what: `only ${second} left`, timeoutMs: 30_000 });
    assert.equal((await trialOf(stay)).state, 'RUNNING', 'the trial on the target kept running');
    await kill(stay);
  }).timeout(240_000);

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
