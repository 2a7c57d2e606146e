// Agent and slot lifecycle on a real in-process master with scripted agents: disable with and
// without drain, enable, slot disable/enable, and fencing of an agent that comes back after its
// trials were requeued. No Docker needed.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Agent__Output } from '../../common/proto-gen/determined/api/v1/Agent';
import type { Slot__Output } from '../../common/proto-gen/determined/api/v1/Slot';
import { waitFor } from '../support/env';
import { API_WAIT, createExperiment, getTrial, rpc, singleTrialYaml, waitTrial } from '../support/admin-api';
import { startInProcessMaster, type InProcessMaster } from '../support/in-process-master';
import { cpuDevices, RawAgent, registration, report } from '../support/raw-agent';

const TOKEN = 'lifecycle-test-join-token-7d2a';

describe('agent and slot lifecycle (in-process master, scripted agents)', function () {
  this.timeout(30_000);
  let tmp: string;
  let m: InProcessMaster;
  let agents: RawAgent[] = [];

  const start = async (graceMs = 60_000, preemption = false) => {
    m = await startInProcessMaster({
      dbFile: path.join(tmp, 'determined.db'), token: TOKEN, clusterName: 'lifecycle', graceMs,
      pools: [{ name: 'default', description: '', scheduler: { fitting: 'best', preemption, maxZeroSlotTasksPerAgent: 100 } }],
    });
  };
  const withPriority = (yamlText: string, priority: number) => yamlText.replace('resources:\n', `resources:\n  priority: ${priority}\n`);
  const connect = () => {
    const a = RawAgent.connect(m.address, { token: TOKEN });
    agents.push(a);
    return a;
  };
  const yaml = (name = 'lifecycle') => singleTrialYaml({ name, command: 'sleep 100', slots: 1, maxRestarts: 0, killGrace: '3s', hparams: ['lr: 0.1'] });
  const getAgent = async (id: string) => (await rpc<{ agent: Agent__Output | null }>((cb) => m.api.GetAgent({ agentId: id }, cb))).agent!;
  const disable = (agentId: string, drain: boolean) => rpc<{ agent: Agent__Output | null }>((cb) => m.api.DisableAgent({ agentId, drain }, cb));
  const enable = (agentId: string) => rpc<{ agent: Agent__Output | null }>((cb) => m.api.EnableAgent({ agentId }, cb));
  const slot = (agentId: string, slotId: number, enabled: boolean, drain = false) =>
    rpc<{ slot: Slot__Output | null }>((cb) => (enabled ? m.api.EnableSlot({ agentId, slotId }, cb) : m.api.DisableSlot({ agentId, slotId, drain }, cb)));

  beforeEach(() => {
    tmp = mkdtempSync(path.join(tmpdir(), 'det-lifecycle-'));
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await m?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('disable without drain: the trial gets SIGTERM with its grace period and is requeued elsewhere, restarts untouched', async () => {
    await start();
    const a1 = connect();
    await a1.registerAndWait(registration('agent-1', { devices: cpuDevices(1) }));
    const { trial } = await createExperiment(m, yaml());
    const s1 = await a1.next('start');
    a1.runUp(s1.spec.allocationId);
    await waitTrial(m, trial.id, 'RUNNING');
    const a2 = connect();
    await a2.registerAndWait(registration('agent-2', { devices: cpuDevices(1) }));

    const res = await disable('agent-1', false);
    assert.equal(res.agent!.enabled, false);
    assert.equal(res.agent!.disabledReason, 'disabled by user');
    const kill = await a1.next('kill');
    assert.deepEqual(kill, { kind: 'kill', allocationId: s1.spec.allocationId, signal: 'SIGTERM', gracePeriodMs: 3_000 });
    a1.exit(s1.spec.allocationId, 143, 'KILLED');
    const s2 = await a2.next('start');
    assert.equal(s2.spec.taskId, s1.spec.taskId);
    const t = await getTrial(m, trial.id);
    assert.equal(t.restarts, 0, 'a disable is not the trial\'s fault');
    assert.equal(t.agentId, 'agent-2');
    assert.ok(m.log.some((l) => /agent disabled/.test(l) && /agent-1/.test(l)));
  });

  it('disable --drain lets the trial finish and places nothing new; enable makes the agent usable again', async () => {
    await start();
    const a1 = connect();
    await a1.registerAndWait(registration('agent-1', { devices: cpuDevices(2) }));
    const first = await createExperiment(m, yaml('first'));
    const s1 = await a1.next('start');
    a1.runUp(s1.spec.allocationId);
    await waitTrial(m, first.trial.id, 'RUNNING');

    await disable('agent-1', true);
    assert.equal((await getAgent('agent-1')).disabledReason, 'disabled by user (draining)');
    const second = await createExperiment(m, yaml('second'));
    await waitFor(async () => /disabled|no connected, enabled agents/.test((await getTrial(m, second.trial.id)).message), { ...API_WAIT, what: 'the second trial to wait' });
    a1.exit(s1.spec.allocationId, 0);
    await waitTrial(m, first.trial.id, 'COMPLETED');
    assert.ok(!a1.received.some((x) => x.kind === 'kill'), 'a drain kills nothing');
    assert.equal(a1.received.filter((x) => x.kind === 'start').length, 1, 'nothing new on a draining agent');

    await enable('agent-1');
    const s2 = await a1.next('start');
    assert.equal(s2.spec.trialId, second.trial.id);
  });

  it('a disabled slot is not used, survives a master restart, and is used again once enabled', async () => {
    await start();
    const a1 = connect();
    await a1.registerAndWait(registration('agent-1', { devices: cpuDevices(2) }));
    const disabled = await slot('agent-1', 0, false);
    assert.equal(disabled.slot!.enabled, false);

    // Restart the master: the disabled slot is remembered.
    a1.close();
    await m.stop();
    await start();
    const again = connect();
    await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2) }));
    assert.deepEqual((await getAgent('agent-1')).slots.map((s) => [s.id, s.enabled]), [[0, false], [1, true]]);

    const { trial } = await createExperiment(m, yaml());
    const s1 = await again.next('start');
    assert.deepEqual(s1.spec.deviceIds, [1]);
    again.runUp(s1.spec.allocationId);
    await waitTrial(m, trial.id, 'RUNNING');
    const other = await createExperiment(m, yaml('other'));
    await waitFor(async () => (await getTrial(m, other.trial.id)).message.length > 0, { ...API_WAIT, what: 'the other trial to say why it waits' });
    assert.equal(again.received.filter((x) => x.kind === 'start').length, 1);
    await slot('agent-1', 0, true);
    const s2 = await again.next('start');
    assert.deepEqual(s2.spec.deviceIds, [0]);
  });

  it('disabling a busy slot without drain requeues its trial; unknown slots and agents are clear errors', async () => {
    await start();
    const a1 = connect();
    await a1.registerAndWait(registration('agent-1', { devices: cpuDevices(1) }));
    const { trial } = await createExperiment(m, yaml());
    const s1 = await a1.next('start');
    a1.runUp(s1.spec.allocationId);
    await waitTrial(m, trial.id, 'RUNNING');
    await slot('agent-1', 0, false);
    assert.equal((await a1.next('kill')).allocationId, s1.spec.allocationId);
    a1.exit(s1.spec.allocationId, 143, 'KILLED');
    await waitTrial(m, trial.id, 'QUEUED', (t) => t.restarts === 0);

    await assert.rejects(slot('agent-1', 7, false), (err: grpc.ServiceError) => err.code === grpc.status.INVALID_ARGUMENT && /agent agent-1 has no slot 7 \(slots: 0\)/.test(err.details));
    await assert.rejects(disable('nope', false), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND && /agent nope not found/.test(err.details));
  });

  it('fencing: an agent back after its grace period gets no new work until its stale container is gone', async () => {
    await start(300);
    const a1 = connect();
    await a1.registerAndWait(registration('agent-1', { devices: cpuDevices(1) }));
    const { trial } = await createExperiment(m, yaml());
    const s1 = await a1.next('start');
    a1.runUp(s1.spec.allocationId);
    await waitTrial(m, trial.id, 'RUNNING');

    // The stream breaks; after the grace period the trial is requeued (and, with max_restarts 0, ends).
    a1.close();
    await waitFor(async () => (await getTrial(m, trial.id)).state !== 'TRIAL_STATE_RUNNING', { ...API_WAIT, what: 'the trial to be given up' });

    // The agent comes back still running the old container.
    const back = connect();
    const registered = await back.registerAndWait(registration('agent-1', { devices: cpuDevices(1), containers: [report(s1.spec.allocationId, 'RUNNING')] }));
    assert.deepEqual(registered.expectedAllocationIds, [], 'the agent must kill it');
    await waitFor(async () => (await getAgent('agent-1')).fencedAllocationIds.length === 1, { ...API_WAIT, what: 'the agent to be fenced' });
    const next = await createExperiment(m, yaml('next'));
    await waitFor(async () => (await getTrial(m, next.trial.id)).message.length > 0, { ...API_WAIT, what: 'the new trial to wait' });
    assert.ok(!back.received.some((x) => x.kind === 'start'), 'no new work while fenced');

    back.exit(s1.spec.allocationId, 137, 'KILLED');
    const s2 = await back.next('start');
    assert.equal(s2.spec.trialId, next.trial.id);
    assert.deepEqual((await getAgent('agent-1')).fencedAllocationIds, []);
  });

  /** A master (pool preemption on or off) with one 1-slot agent running a priority-80 trial. */
  async function lowPriorityRunning(preemption: boolean) {
    await start(60_000, preemption);
    const a1 = connect();
    await a1.registerAndWait(registration('agent-1', { devices: cpuDevices(1) }));
    const low = await createExperiment(m, withPriority(yaml('low'), 80));
    const s1 = await a1.next('start');
    a1.runUp(s1.spec.allocationId);
    await waitTrial(m, low.trial.id, 'RUNNING');
    return { a1, low, s1 };
  }

  it('preemption: a higher-priority trial stops a lower-priority one, which is requeued with its restart count untouched and runs later', async () => {
    const { a1, low, s1 } = await lowPriorityRunning(true);

    const high = await createExperiment(m, withPriority(yaml('high'), 10));
    const kill = await a1.next('kill');
    assert.deepEqual(kill, { kind: 'kill', allocationId: s1.spec.allocationId, signal: 'SIGTERM', gracePeriodMs: 3_000 });
    assert.match((await getTrial(m, high.trial.id)).message, /waiting for 1 preempted task/);
    a1.exit(s1.spec.allocationId, 143, 'KILLED');
    const s2 = await a1.next('start');
    assert.equal(s2.spec.trialId, high.trial.id);
    const requeued = await waitTrial(m, low.trial.id, 'QUEUED');
    assert.equal(requeued.restarts, 0);
    a1.runUp(s2.spec.allocationId);
    a1.exit(s2.spec.allocationId, 0);
    const s3 = await a1.next('start');
    assert.equal(s3.spec.trialId, low.trial.id);
    assert.equal(s3.spec.env.DET_TRIAL_RESTARTS, '0');
  });

  it('without preemption in the pool, a higher-priority trial waits', async () => {
    const { a1, low } = await lowPriorityRunning(false);
    const high = await createExperiment(m, withPriority(yaml('high'), 10));
    await waitFor(async () => /waiting for 1 free slot/.test((await getTrial(m, high.trial.id)).message), { ...API_WAIT, what: 'the high-priority trial to wait' });
    assert.ok(!a1.received.some((x) => x.kind === 'kill'));
  });
});
