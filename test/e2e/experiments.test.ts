// End to end: real det-master, det-agent and det processes on 127.0.0.1, real
// Docker and registry. What a user does, checked the way a user sees it.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Docker from 'dockerode';
import { testEnv, waitFor } from '../support/env';
import { det, ROOT, startAgent, startMaster, type DetProcess, type TestMaster } from '../support/processes';
import { ensureExampleImage } from '../../scripts/example-image';

function writeConfig(yaml: string): string {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-exp-')), 'exp.yaml');
  fs.writeFileSync(file, yaml);
  return file;
}

describe('e2e: experiments on a local cluster', function () {
  this.timeout(180_000);
  const env = testEnv();
  let master: TestMaster;
  let agent: DetProcess;
  const m = () => ['-m', master.address];
  const describeExp = async (id: number) => JSON.parse((await det([...m(), '--json', 'experiment', 'describe', String(id)])).stdout);

  before(async () => {
    await ensureExampleImage(new Docker({ socketPath: env.dockerSocket }), () => undefined);
    master = await startMaster();
    agent = await startAgent(master, env.dockerSocket, { args: ['--cpu-slots', '2', '--slot-type', 'cpu'] });
  });
  after(async () => {
    await agent?.stop();
    await master?.proc.stop();
  });

  it('lists the agent and its slots', async () => {
    const r = await det([...m(), 'agent', 'list']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /e2e-agent .*CONNECTED/);
    assert.match(r.stdout, /2 cpu/);
    const slots = await det([...m(), '--json', 'slot', 'list', '--agent', 'e2e-agent']);
    assert.equal(JSON.parse(slots.stdout).length, 2);
    const info = await det([...m(), 'master', 'info']);
    assert.match(info.stdout, /Database:\s+sqlite/);
  });

  it('runs examples/hello/grid.yaml to COMPLETED with logs streamed (6 trials)', async () => {
    const r = await det([...m(), 'experiment', 'create', path.join(ROOT, 'examples/hello/grid.yaml'), '--follow']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const id = Number(/Created experiment (\d+)/.exec(r.stdout)![1]);
    for (const lr of ['0.0001', '0.001', '0.01']) assert.match(r.stdout, new RegExp(`\\[trial \\d+\\] trial \\d+ on agent e2e-agent .*"learning_rate":${lr.replace('.', '\\.')}`));
    assert.equal((r.stdout.match(/\] done$/gm) ?? []).length, 6);
    const exp = await describeExp(id);
    assert.equal(exp.experiment.state, 'COMPLETED');
    assert.equal(exp.trials.length, 6);
    assert.ok(exp.trials.every((t: { state: string; exitCode: number }) => t.state === 'COMPLETED' && t.exitCode === 0));
    const list = await det([...m(), 'experiment', 'list']);
    assert.match(list.stdout, new RegExp(`${id} \\| hello-grid \\| COMPLETED`));
    const logs = await det([...m(), 'trial', 'logs', String(exp.trials[2].id)]);
    assert.deepEqual(logs.stdout.trim().split('\n').slice(1), ['step 1: training...', 'step 2: training...', 'step 3: training...', 'done']);
  });

  it('gives each trial its DET_* environment', async () => {
    const file = writeConfig(`
name: env-check
image: ${env.image}
entrypoint: ["sh", "-c", "env | grep ^DET_ | sort"]
environment_variables: {MY_VAR: hello}
hyperparameters: {lr: 0.5}
`);
    const r = await det([...m(), 'experiment', 'create', file, '--follow']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const exp = await describeExp(Number(/Created experiment (\d+)/.exec(r.stdout)![1]));
    const t = exp.trials[0];
    const logs = (await det([...m(), 'trial', 'logs', String(t.id)])).stdout;
    assert.match(logs, new RegExp(`^DET_EXPERIMENT_ID=${exp.experiment.id}$`, 'm'));
    assert.match(logs, new RegExp(`^DET_TRIAL_ID=${t.id}$`, 'm'));
    assert.match(logs, new RegExp(`^DET_TASK_ID=${exp.experiment.id}\\.${t.id}$`, 'm'));
    assert.match(logs, /^DET_AGENT_ID=e2e-agent$/m);
    assert.match(logs, /^DET_SLOT_IDS=\[\d\]$/m);
    assert.match(logs, /^DET_HPARAMS=\{"lr":0\.5\}$/m);
  });

  it('ends a failing trial in ERROR after max_restarts, with its exit code', async () => {
    const file = writeConfig(`
name: failing
image: ${env.image}
entrypoint: echo "attempt $DET_TRIAL_RESTARTS" && exit 7
max_restarts: 2
`);
    const r = await det([...m(), 'experiment', 'create', file, '--follow']);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /ERROR/);
    const exp = await describeExp(Number(/Created experiment (\d+)/.exec(r.stdout)![1]));
    assert.equal(exp.experiment.state, 'ERROR');
    const t = exp.trials[0];
    assert.equal(t.state, 'ERROR');
    assert.equal(t.restarts, 2);
    assert.equal(t.exitCode, 7);
    assert.match(t.message, /exited with code 7 \(after 2 restarts\)/);
    const logs = (await det([...m(), 'trial', 'logs', String(t.id)])).stdout;
    assert.deepEqual(logs.match(/^attempt \d$/gm), ['attempt 0', 'attempt 1', 'attempt 2']);
  });

  it('kills an experiment: running trials get SIGTERM and end CANCELED, queued ones at once', async () => {
    const file = writeConfig(`
name: long
image: ${env.image}
entrypoint: trap 'echo got TERM; exit 143' TERM; echo started; while true; do sleep 0.1; done
searcher: {name: random, max_trials: 3}
hyperparameters: {x: {type: int, minval: 1, maxval: 9}}
kill_grace_period: 5s
`);
    const r = await det([...m(), 'experiment', 'create', file]);
    const id = Number(/Created experiment (\d+)/.exec(r.stdout)![1]);
    await waitFor(async () => (await describeExp(id)).trials.filter((t: { state: string }) => t.state === 'RUNNING').length === 2, { what: 'two trials RUNNING', timeoutMs: 60_000 });
    const running = (await describeExp(id)).trials.find((t: { state: string }) => t.state === 'RUNNING');
    await waitFor(async () => /started/.test((await det([...m(), 'trial', 'logs', String(running.id)])).stdout), { what: 'trial output' });
    const k = await det([...m(), 'experiment', 'kill', String(id)]);
    assert.equal(k.code, 0, k.stderr);
    await waitFor(async () => (await describeExp(id)).experiment.state === 'CANCELED', { what: 'experiment CANCELED' });
    const exp = await describeExp(id);
    assert.ok(exp.trials.every((t: { state: string }) => t.state === 'CANCELED'));
    assert.match((await det([...m(), 'trial', 'logs', String(running.id)])).stdout, /got TERM/);
    const again = await det([...m(), 'experiment', 'kill', String(id)]);
    assert.equal(again.code, 0, 'killing a finished experiment is harmless');
  });

  it('reports an image that does not exist as a trial ERROR with the pull error', async () => {
    const file = writeConfig(`
name: no-image
image: ${env.registry}/det-test/does-not-exist:latest
entrypoint: ["true"]
max_restarts: 0
`);
    const r = await det([...m(), 'experiment', 'create', file, '--follow']);
    assert.equal(r.code, 1);
    const t = (await describeExp(Number(/Created experiment (\d+)/.exec(r.stdout)![1]))).trials[0];
    assert.equal(t.state, 'ERROR');
    assert.match(t.message, /pulling image \S*does-not-exist\S* failed: .*manifest unknown/);
  });

  it('keeps a trial needing more slots than any agent QUEUED and says why', async () => {
    const file = writeConfig(`
name: too-big
image: ${env.image}
entrypoint: ["true"]
resources: {slots_per_trial: 4}
`);
    const r = await det([...m(), 'experiment', 'create', file]);
    const id = Number(/Created experiment (\d+)/.exec(r.stdout)![1]);
    await waitFor(async () => /largest agent/.test((await describeExp(id)).trials[0].message), { what: 'queued reason' });
    const d = await det([...m(), 'experiment', 'describe', String(id)]);
    assert.match(d.stdout, /QUEUED .*needs 4 slots on one agent but the largest agent in resource pool 'default' has 2/);
    await det([...m(), 'experiment', 'kill', String(id)]);
  });

  it('rejects invalid experiment YAML listing every problem', async () => {
    const syntax = await det([...m(), 'experiment', 'create', writeConfig('name: [unclosed\nimage: x\n')]);
    assert.equal(syntax.code, 1);
    assert.match(syntax.stderr, /not valid YAML/);
    assert.match(syntax.stderr, /line \d+/);
    const schema = await det([...m(), 'experiment', 'create', writeConfig('name: ""\nresources: {priority: 0, gpus: 2}\nsearcher: {name: random}\nbogus: 1\n')]);
    assert.equal(schema.code, 1);
    for (const key of ['name', 'image', 'resources.priority', 'resources.gpus: unknown key', 'searcher.max_trials', 'bogus: unknown key']) assert.ok(schema.stderr.includes(key), `missing ${key} in:\n${schema.stderr}`);
  });

  it('rejects an unknown resource pool', async () => {
    const r = await det([...m(), 'experiment', 'create', writeConfig(`name: x\nimage: ${env.image}\nresources: {resource_pool: gpu-pool}\n`)]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /unknown resource pool 'gpu-pool' \(this cluster has: default\)/);
  });

  it('follows a running trial’s logs until it ends', async () => {
    const file = writeConfig(`
name: follow
image: ${env.image}
entrypoint: for i in 1 2 3 4 5; do echo "line $i"; sleep 0.2; done
`);
    const r = await det([...m(), 'experiment', 'create', file]);
    const trialId = /Trials: (\d+)/.exec(r.stdout)![1];
    const logs = await det([...m(), 'trial', 'logs', trialId, '--follow']);
    assert.equal(logs.code, 0, logs.stderr);
    assert.deepEqual(logs.stdout.trim().split('\n'), ['line 1', 'line 2', 'line 3', 'line 4', 'line 5']);
  });

  it('gives one-line errors for unknown ids', async () => {
    const r = await det([...m(), 'experiment', 'describe', '9999']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), 'det: experiment 9999 not found');
    const t = await det([...m(), 'trial', 'logs', '9999']);
    assert.equal(t.code, 1);
    assert.match(t.stderr.trim(), /^det: trial 9999 not found$/);
  });
});
