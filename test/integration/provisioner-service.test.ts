// The provisioner service against a real in-process master (Cluster.open on a
// SQLite file + startServer on 127.0.0.1:0) with an in-memory provider. The
// "instances" it launches are played by scripted agents (RawAgent) that register
// with agent id = instance id, so every step of the dynamic-agent flow is chosen
// by the test: launch on demand, idle -> disable -> terminate, busy instances kept,
// capacity fallback, persisted state, spot interruption. No Docker needed.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Agent__Output } from '../../common/proto-gen/determined/api/v1/Agent';
import type { Experiment__Output } from '../../common/proto-gen/determined/api/v1/Experiment';
import type { ProvisionerPool__Output } from '../../common/proto-gen/determined/api/v1/ProvisionerPool';
import type { Trial__Output } from '../../common/proto-gen/determined/api/v1/Trial';
import { ProvisionerService } from '../../master/provisioner/service';
import { LaunchError, type PoolScaling } from '../../master/provisioner/types';
import { waitFor } from '../support/env';
import { startInProcessMaster, type InProcessMaster } from '../support/in-process-master';
import { createExperiment as createExperimentWith, getTrial, rpc, singleTrialYaml, waitTrial } from '../support/admin-api';
import { MemoryProvider } from '../support/memory-provider';
import { cpuDevices, RawAgent, registration, report } from '../support/raw-agent';

/** CreateExperiment with this file's default config. */
const createExperiment = (m: TestMaster, yaml = experimentYaml()) => createExperimentWith(m, yaml);

const TOKEN = 'provisioner-test-join-token-8d41a7';
const POOL = 'default';
const WAIT = { timeoutMs: 5_000, intervalMs: 20 };
/** A tick no test outlives: whatever happens under it came from a cluster event. */
const NO_TICK_MS = 60_000;
const TICK_MS = 100;
const MS_PER_HOUR = 3_600_000;

/** An in-process master with a provisioner service and its captured log. */
interface TestMaster extends InProcessMaster {
  service: ProvisionerService;
  provider: MemoryProvider;
  /** The pool's settings as the service holds them (mutable, as a config reload would be). */
  scaling: PoolScaling;
}

let tmp: string;
let masters: TestMaster[] = [];
let agents: RawAgent[] = [];

/** A pool of 2-slot instances, 0..4 of them, with timers long enough not to fire unless a test shortens them. */
function scaling(over: Partial<PoolScaling> = {}): PoolScaling {
  return {
    pool: POOL, instanceTypes: [{ instanceType: 'm.small', slots: 2 }], subnetIds: [''], spot: false, spotOnly: false,
    minInstances: 0, maxInstances: 4, maxIdleAgentPeriodMs: 60_000, maxAgentStartingPeriodMs: 60_000, maxDisconnectedPeriodMs: 60_000,
    ...over,
  };
}

async function startMaster(o: { provider: MemoryProvider; scaling: PoolScaling; tickMs: number; dbFile?: string; graceMs?: number }): Promise<TestMaster> {
  const base = await startInProcessMaster({
    dbFile: o.dbFile ?? path.join(tmp, 'determined.db'), token: TOKEN, clusterName: 'provisioner-test', graceMs: o.graceMs,
    pools: [{ name: POOL, description: 'provisioned pool' }],
    provisioner: (cluster, store, log) => new ProvisionerService(cluster, store, new Map([[POOL, { scaling: o.scaling, provider: o.provider }]]), log, o.tickMs),
  });
  const m: TestMaster = { ...base, service: base.service!, provider: o.provider, scaling: o.scaling };
  masters.push(m);
  return m;
}

/** A scripted agent for instance `instanceId` (agent id = instance id) with two CPU slots, registered. */
async function agentFor(m: TestMaster, instanceId: string, over: Parameters<typeof registration>[1] = {}): Promise<RawAgent> {
  const a = RawAgent.connect(m.address, { token: TOKEN });
  agents.push(a);
  const instanceType = m.provider.instance(instanceId)?.instanceType ?? '';
  await a.registerAndWait(registration(instanceId, { resourcePool: POOL, devices: cpuDevices(2), instanceId, instanceType, ...over }));
  return a;
}

const getExperiment = (m: TestMaster, experimentId: number) =>
  rpc<{ experiment: Experiment__Output | null; trials: Trial__Output[] }>((cb) => m.api.GetExperiment({ experimentId }, cb));
const getAgent = async (m: TestMaster, agentId: string) => (await rpc<{ agent: Agent__Output | null }>((cb) => m.api.GetAgent({ agentId }, cb))).agent!;
/** The pool's provisioner status as `det provisioner status` reads it (GetProvisionerStatus). */
async function poolStatus(m: TestMaster): Promise<ProvisionerPool__Output> {
  const res = await rpc<{ pools: ProvisionerPool__Output[] }>((cb) => m.api.GetProvisionerStatus({ resourcePool: POOL }, cb));
  assert.equal(res.pools.length, 1, 'one provisioned pool');
  return res.pools[0];
}
const instanceIds = async (m: TestMaster) => (await poolStatus(m)).instances.map((i) => i.id);

/** Experiment YAML: one trial (single searcher). */
function experimentYaml(o: { slots?: number; maxRestarts?: number; killGrace?: string } = {}): string {
  return singleTrialYaml({ name: 'provisioner-test', command: 'sleep 600', slots: o.slots ?? 2, maxRestarts: o.maxRestarts, killGrace: o.killGrace });
}

/** Waits until the provider has launched `n` instances in all; returns the n-th id. */
async function waitLaunched(p: MemoryProvider, n: number): Promise<string> {
  await waitFor(() => p.launchedIds().length >= n, { ...WAIT, what: `${n} instance(s) launched (launch calls: ${JSON.stringify(p.launches.map((c) => ({ type: c.req.instanceType, ids: c.ids, error: c.error?.code })))})` });
  return p.launchedIds()[n - 1];
}

/**
 * Waits until every cluster mutation queued so far (scheduling passes included) has run: KillExperiment
 * goes through the cluster's serial queue, so its answer (NOT_FOUND for an unknown id) comes after them.
 */
async function settled(m: TestMaster): Promise<void> {
  await assert.rejects(rpc((cb) => m.api.KillExperiment({ experimentId: 999_999 }, cb)), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND);
}

/**
 * Waits until the periodic pass has run `passes` more times (each one refreshes from the provider), so
 * a negative check ("nothing was terminated") covers that many decisions.
 */
async function waitPasses(m: TestMaster, passes: number): Promise<void> {
  const target = m.provider.listCalls.length + passes;
  await waitFor(() => m.provider.listCalls.length >= target, { ...WAIT, what: `${passes} periodic provisioner passes` });
  await m.service.idle(POOL);
}

describe('provisioner service (in-process master, memory provider, scripted agents)', function () {
  this.timeout(30_000);

  beforeEach(() => {
    tmp = mkdtempSync(path.join(tmpdir(), 'det-provisioner-service-'));
  });

  afterEach(async () => {
    for (const a of agents) a.close();
    agents = [];
    for (const m of masters) await m.stop();
    masters = [];
    rmSync(tmp, { recursive: true, force: true });
  });

  it('launches an instance as soon as a trial is queued, on the cluster event and not on the tick', async () => {
    const provider = new MemoryProvider();
    const m = await startMaster({ provider, scaling: scaling(), tickMs: NO_TICK_MS });
    await m.service.idle(POOL);
    assert.equal(provider.launches.length, 0, 'no agents and no demand: nothing to launch');
    const listsAfterStart = provider.listCalls.length;

    const { trial } = await createExperiment(m, experimentYaml({ slots: 2 }));
    const id = await waitLaunched(provider, 1);
    await m.service.idle(POOL);

    assert.equal(id, 'i-1');
    assert.equal(provider.launches.length, 1, 'one instance covers the one 2-slot trial');
    assert.deepEqual({ ...provider.launches[0].req, clientToken: '' }, { pool: POOL, instanceType: 'm.small', subnetId: '', spot: false, count: 1, clientToken: '' });
    assert.ok(provider.launches[0].req.clientToken.length > 0, 'launches carry an idempotency token');
    assert.equal(provider.listCalls.length, listsAfterStart, 'no periodic pass ran (it would have refreshed from the provider): the launch came from the event');
    const st = await poolStatus(m);
    assert.equal(st.provider, 'memory');
    assert.deepEqual(st.instances.map((i) => [i.id, i.instanceType, i.state, i.agentConnected]), [['i-1', 'm.small', 'pending', false]]);
    assert.equal(st.pendingSlots, 2);
    assert.equal((await getTrial(m, trial.id)).state, 'TRIAL_STATE_QUEUED');
  });

  it('disables an agent idle for max_idle_agent_period and then terminates its instance, never while it works', async () => {
    const provider = new MemoryProvider();
    const m = await startMaster({ provider, scaling: scaling({ maxIdleAgentPeriodMs: 300 }), tickMs: TICK_MS });
    const enabledAtTerminate = new Map<string, boolean | undefined>();
    provider.beforeTerminate = (ids) => ids.forEach((id) => enabledAtTerminate.set(id, m.cluster.agents.get(id)?.enabled));

    const { trial } = await createExperiment(m, experimentYaml({ slots: 2 }));
    const id = await waitLaunched(provider, 1);
    const agent = await agentFor(m, id);
    const start = await agent.next('start');
    assert.equal(start.spec.taskId, trial.taskId);
    agent.runUp(start.spec.allocationId);
    await waitTrial(m, trial.id, 'RUNNING', (t) => t.agentId === id);

    // Busy for longer than the idle period: neither disabled nor terminated.
    await waitPasses(m, 5);
    assert.equal((await getAgent(m, id)).enabled, true, 'a working agent is not disabled');
    assert.deepEqual(provider.terminatedIds(), []);

    const doneAt = Date.now();
    agent.exit(start.spec.allocationId, 0);
    await waitTrial(m, trial.id, 'COMPLETED');
    await waitFor(async () => (await getAgent(m, id)).enabled === false, { ...WAIT, what: `agent ${id} to be disabled after being idle` });
    assert.match(m.cluster.agents.get(id)!.disabledReason, /max_idle_agent_period/);
    await waitFor(() => provider.terminatedIds().includes(id), { ...WAIT, what: `instance ${id} to be terminated` });

    assert.deepEqual(provider.terminatedIds(), [id], 'terminated exactly once');
    assert.equal(enabledAtTerminate.get(id), false, 'the agent was disabled before its instance was terminated');
    assert.ok(provider.terminations[0].atMs - doneAt >= 300, `terminated ${provider.terminations[0].atMs - doneAt} ms after the work ended, before max_idle_agent_period (300 ms)`);
    await m.service.idle(POOL);
    const st = await poolStatus(m);
    assert.deepEqual(st.instances, [], 'a terminated instance is no longer tracked');
    assert.ok(st.instanceHours > 0, 'its time was accounted');
  });

  it('never terminates a busy instance: not when disconnected, past every timer, above max_instances or asked repeatedly', async () => {
    const provider = new MemoryProvider();
    const pool = scaling({ maxInstances: 2, maxIdleAgentPeriodMs: 300, maxAgentStartingPeriodMs: 1_500, maxDisconnectedPeriodMs: 300 });
    // The reconnect grace outlives the test: the disconnected agent's allocation stays held.
    const m = await startMaster({ provider, scaling: pool, tickMs: TICK_MS, graceMs: 60_000 });

    const busy = await createExperiment(m, experimentYaml({ slots: 2 }));
    const busyId = await waitLaunched(provider, 1);
    const busyAgent = await agentFor(m, busyId);
    const busyStart = await busyAgent.next('start');
    busyAgent.runUp(busyStart.spec.allocationId);
    await waitTrial(m, busy.trial.id, 'RUNNING', (t) => t.agentId === busyId);

    // A second instance that goes idle: the control that shows the timers do fire in this setup.
    const other = await createExperiment(m, experimentYaml({ slots: 2 }));
    const idleId = await waitLaunched(provider, 2);
    const idleAgent = await agentFor(m, idleId);
    const idleStart = await idleAgent.next('start');
    idleAgent.runUp(idleStart.spec.allocationId);
    idleAgent.exit(idleStart.spec.allocationId, 0);
    await waitTrial(m, other.trial.id, 'COMPLETED');

    // The busy agent's stream breaks; its allocation is held through the reconnect grace.
    busyAgent.close();
    await waitFor(async () => (await getAgent(m, busyId)).state === 'AGENT_STATE_DISCONNECTED', { ...WAIT, what: `agent ${busyId} to be disconnected` });
    m.scaling.maxInstances = 0;

    await waitFor(() => provider.terminatedIds().includes(idleId), { ...WAIT, what: `idle instance ${idleId} to be terminated` });
    const launchedAt = provider.instance(busyId)!.launchedAtMs;
    // Past max_agent_starting_period, max_disconnected_period and max_idle_agent_period, and many decisions later.
    await waitFor(() => Date.now() - launchedAt > 2 * pool.maxAgentStartingPeriodMs, { ...WAIT, what: 'max_agent_starting_period to pass' });
    await waitPasses(m, 10);
    for (let n = 0; n < 20; n++) m.service.requestPass(POOL);
    await m.service.idle(POOL);

    assert.deepEqual(provider.terminatedIds(), [idleId], `the busy instance ${busyId} must never be terminated`);
    const st = await poolStatus(m);
    const tracked = st.instances.find((i) => i.id === busyId);
    assert.ok(tracked, `busy instance ${busyId} is still tracked (status: ${JSON.stringify(st.instances)})`);
    assert.equal(tracked.runningTasks, 1);
    assert.equal(tracked.agentConnected, false);
    assert.equal(st.maxInstances, 0);
    assert.equal((await getTrial(m, busy.trial.id)).state, 'TRIAL_STATE_RUNNING', 'the trial still holds its allocation');

    // Once its work is done, the same instance is let go: the guard above was not vacuous.
    const back = RawAgent.connect(m.address, { token: TOKEN });
    agents.push(back);
    const info = await back.registerAndWait(registration(busyId, { devices: cpuDevices(2), instanceId: busyId, instanceType: 'm.small', containers: [report(busyStart.spec.allocationId, 'RUNNING')] }));
    assert.deepEqual(info.expectedAllocationIds, [busyStart.spec.allocationId]);
    back.exit(busyStart.spec.allocationId, 0);
    await waitTrial(m, busy.trial.id, 'COMPLETED');
    await waitFor(() => provider.terminatedIds().includes(busyId), { ...WAIT, what: `instance ${busyId} to be terminated once idle` });
  });

  it('falls back to the next instance type at once after a capacity error and reports the error in status', async () => {
    const provider = new MemoryProvider();
    const pool = scaling({ instanceTypes: [{ instanceType: 'm.first', slots: 2 }, { instanceType: 'm.second', slots: 2 }] });
    provider.failLaunches('m.first', new LaunchError('capacity', 'InsufficientInstanceCapacity', 'We currently do not have sufficient m.first capacity'));
    const m = await startMaster({ provider, scaling: pool, tickMs: NO_TICK_MS });
    await m.service.idle(POOL);
    const listsAfterStart = provider.listCalls.length;

    await createExperiment(m, experimentYaml({ slots: 2 }));
    const id = await waitLaunched(provider, 1);
    await m.service.idle(POOL);

    assert.deepEqual(
      provider.launches.map((c) => [c.req.instanceType, c.error?.code ?? 'ok']),
      [['m.first', 'InsufficientInstanceCapacity'], ['m.second', 'ok']],
      'one failed launch of the first type, then the second type',
    );
    assert.equal(provider.listCalls.length, listsAfterStart, 'no periodic pass ran: the fallback came at once, not on the tick');
    const st = await poolStatus(m);
    assert.deepEqual(st.instances.map((i) => [i.id, i.instanceType]), [[id, 'm.second']]);
    assert.ok(st.lastError, 'status shows the last launch error');
    assert.equal(st.lastError.kind, 'capacity');
    assert.equal(st.lastError.code, 'InsufficientInstanceCapacity');
    assert.equal(st.lastError.instanceType, 'm.first');
    assert.match(st.lastError.message, /sufficient m\.first capacity/);
    assert.equal(st.nextLaunchAllowedAtMs, 0, 'another offering has capacity: launches are not held back');
  });

  it('keeps tracked instances, instance-hours and launch-error memory across a master restart', async () => {
    const provider = new MemoryProvider();
    const dbFile = path.join(tmp, 'restart.db');
    const m1 = await startMaster({ provider, scaling: scaling(), tickMs: TICK_MS, dbFile });

    await createExperiment(m1, experimentYaml({ slots: 2 }));
    const id = await waitLaunched(provider, 1);
    const launchedAt = provider.instance(id)!.launchedAtMs;
    provider.failLaunches('m.small', new LaunchError('limit', 'VcpuLimitExceeded', 'You have requested more vCPU capacity than your current vCPU limit allows'));
    await createExperiment(m1, experimentYaml({ slots: 2 }));
    await waitFor(() => provider.launches.some((c) => c.error?.code === 'VcpuLimitExceeded'), { ...WAIT, what: 'a launch failing with VcpuLimitExceeded' });
    // Let the instance run long enough that losing its hours would show.
    await waitFor(async () => (await poolStatus(m1)).instanceHours * MS_PER_HOUR >= 500, { ...WAIT, what: '500 ms of instance time' });
    await m1.service.idle(POOL);
    const before = await poolStatus(m1);
    assert.equal(before.lastError?.kind, 'limit');
    assert.ok(before.nextLaunchAllowedAtMs > Date.now() + 10_000, `a limit error backs off (next launch at ${before.nextLaunchAllowedAtMs}, now ${Date.now()})`);
    const launchCalls = provider.launches.length;
    await m1.stop();

    // Launches would succeed now: only the remembered backoff may hold the new master back.
    provider.clearFailures();
    const m2 = await startMaster({ provider, scaling: scaling(), tickMs: TICK_MS, dbFile });
    const t0 = Date.now();
    const after = await poolStatus(m2);
    const t1 = Date.now();

    assert.deepEqual(after.instances.map((i) => i.id), [id], 'the tracked instance survives');
    assert.ok(!m2.log.some((l) => /tracking an instance of this pool found at the provider/.test(l)), 'the instance came from the stored state, not re-adopted from the provider');
    const hoursMs = after.instanceHours * MS_PER_HOUR;
    assert.ok(after.instanceHours >= before.instanceHours, `instance-hours went back from ${before.instanceHours} to ${after.instanceHours}`);
    assert.ok(hoursMs >= t0 - launchedAt - 20 && hoursMs <= t1 - launchedAt + 20, `instance time ${hoursMs} ms should cover the instance's whole life (${t0 - launchedAt}..${t1 - launchedAt} ms), downtime included`);
    assert.equal(after.nextLaunchAllowedAtMs, before.nextLaunchAllowedAtMs, 'the launch backoff survives');
    assert.deepEqual(after.lastError, before.lastError, 'the last error survives');
    assert.equal(after.pendingSlots, 4, 'both trials are still queued');

    await waitPasses(m2, 5);
    assert.equal(provider.launches.length, launchCalls, 'no launch while the remembered backoff runs, though a trial is waiting');
  });

  it('consolidation: moves a checkpointed trial off a half-used instance, resumes it elsewhere from its checkpoint and terminates the emptied instance', async () => {
    const provider = new MemoryProvider();
    const pool = scaling({ consolidation: { enabled: true, maxCheckpointAgeMs: 60_000, minUnderusedPeriodMs: 0 } });
    const m = await startMaster({ provider, scaling: pool, tickMs: TICK_MS });
    const started = async (a: RawAgent, trialId: number, agentId: string) => {
      const start = await a.next('start', 5_000, (s) => s.spec.trialId === trialId);
      a.runUp(start.spec.allocationId);
      await waitTrial(m, trialId, 'RUNNING', (t) => t.agentId === agentId);
      return start.spec;
    };
    // i-1 runs t1 and t3 (1 slot each); i-2 runs the 2-slot t2.
    const t1 = (await createExperiment(m, experimentYaml({ slots: 1 }))).trial;
    const i1 = await waitLaunched(provider, 1);
    const a1 = await agentFor(m, i1);
    const s1 = await started(a1, t1.id, i1);
    const t2 = (await createExperiment(m, experimentYaml({ slots: 2 }))).trial;
    const i2 = await waitLaunched(provider, 2);
    const a2 = await agentFor(m, i2);
    const s2 = await started(a2, t2.id, i2);
    const t3 = (await createExperiment(m, experimentYaml({ slots: 1 }))).trial;
    const s3 = await started(a1, t3.id, i1);
    // t2 ends and t4 takes half of i-2; t3 ends: each instance now runs one 1-slot trial.
    a2.exit(s2.allocationId, 0);
    await waitTrial(m, t2.id, 'COMPLETED');
    const t4 = (await createExperiment(m, experimentYaml({ slots: 1 }))).trial;
    await started(a2, t4.id, i2);
    a1.exit(s3.allocationId, 0);
    await waitTrial(m, t3.id, 'COMPLETED');

    // Neither trial has a checkpoint: nothing moves, however many decisions run.
    await waitPasses(m, 5);
    assert.deepEqual(a1.all('kill'), [], 'a trial without a checkpoint is never moved');
    assert.deepEqual(a2.all('kill'), []);
    assert.equal((await getAgent(m, i1)).enabled, true);

    // t1 stores a checkpoint: i-1 is cordoned and t1 is told to stop (it checkpoints on SIGTERM and exits 0).
    a1.send({ kind: 'checkpoint', checkpoint: { allocationId: s1.allocationId, uuid: 'ckpt-t1-1', name: 'step-100', createdAtMs: Date.now(), totalSize: 10, fileCount: 1, metadata: {}, location: '/ckpt/ckpt-t1-1' } });
    const kill = await a1.next('kill', 5_000, (k) => k.allocationId === s1.allocationId);
    assert.equal(kill.signal, 'SIGTERM');
    assert.equal((await getAgent(m, i1)).enabled, false, 'the source instance is cordoned');
    assert.match(m.cluster.agents.get(i1)!.disabledReason, /consolidation/);
    assert.deepEqual((await poolStatus(m)).instances.map((i) => [i.id, i.cordoned]), [[i1, true], [i2, false]], 'status shows the cordon');
    assert.deepEqual(a2.all('kill'), [], 'the target keeps its trial');
    a1.exit(s1.allocationId, 0);

    // t1 resumes on i-2 from its checkpoint, with no restart counted; i-1 is terminated.
    const resumed = await a2.next('start', 5_000, (s) => s.spec.trialId === t1.id);
    assert.equal(resumed.spec.latestCheckpointUuid, 'ckpt-t1-1');
    a2.runUp(resumed.spec.allocationId);
    const t1Now = await waitTrial(m, t1.id, 'RUNNING', (t) => t.agentId === i2);
    assert.equal(t1Now.restarts, 0, 'a move is no restart');
    await waitFor(() => provider.terminatedIds().includes(i1), { ...WAIT, what: `emptied instance ${i1} to be terminated` });
    assert.deepEqual(provider.terminatedIds(), [i1], 'only the emptied instance is terminated');
    assert.equal(provider.launchedIds().length, 2, 'nothing was launched for the moved trial');
  });

  it('drops an instance that disappears at the provider on the next refresh', async () => {
    const provider = new MemoryProvider();
    const m = await startMaster({ provider, scaling: scaling({ minInstances: 1 }), tickMs: TICK_MS });
    const id = await waitLaunched(provider, 1);
    await waitFor(async () => (await poolStatus(m)).instanceHours > 0, { ...WAIT, what: 'some instance time' });
    // Once the provider's list has shown it (before that, a missing instance may just be list lag).
    const lists = provider.listCalls.length;
    await waitFor(() => provider.listCalls.length >= lists + 2, { ...WAIT, what: 'two more refreshes' });

    provider.vanish(id);
    await waitFor(async () => !(await instanceIds(m)).includes(id), { ...WAIT, what: `instance ${id} to be dropped` });
    assert.ok(m.log.some((l) => /instance gone/.test(l) && l.includes(id)), 'the drop is logged');
    assert.deepEqual(provider.terminatedIds(), [], 'nothing to terminate: it is already gone');

    // min_instances is topped up again with a new instance.
    const replacement = await waitLaunched(provider, 2);
    await waitFor(async () => (await instanceIds(m)).join() === replacement, { ...WAIT, what: `only ${replacement} to be tracked` });
    assert.ok((await poolStatus(m)).instanceHours > 0, "the gone instance's hours are kept");
  });

  describe('spot interruption', () => {
    /**
     * A trial RUNNING on instance i-1 whose agent gets a spot notice: checks the master's answer (agent
     * disabled, SIGTERM with the config's grace period, instance kept while busy), then the container
     * stops (exit 143, KILLED) and the trial is back in the queue.
     */
    async function reclaimedTrial() {
      const provider = new MemoryProvider();
      const m = await startMaster({ provider, scaling: scaling({ maxIdleAgentPeriodMs: 300 }), tickMs: TICK_MS, graceMs: 60_000 });
      const { trial } = await createExperiment(m, experimentYaml({ slots: 2, maxRestarts: 0, killGrace: '7s' }));
      const spotId = await waitLaunched(provider, 1);
      const spot = await agentFor(m, spotId);
      const start = await spot.next('start');
      spot.runUp(start.spec.allocationId);
      await waitTrial(m, trial.id, 'RUNNING', (t) => t.agentId === spotId);

      spot.send({ kind: 'spotInterruption', action: 'terminate', actionTimeMs: Date.now() + 120_000 });
      const kill = await spot.next('kill');
      assert.deepEqual(kill, { kind: 'kill', allocationId: start.spec.allocationId, signal: 'SIGTERM', gracePeriodMs: 7_000 });
      assert.equal((await getAgent(m, spotId)).enabled, false, 'the interrupted agent is disabled');
      assert.equal((await getTrial(m, trial.id)).state, 'TRIAL_STATE_RUNNING', 'the trial runs until its container stops');
      assert.ok(!provider.terminatedIds().includes(spotId), 'a busy instance is not terminated');

      spot.exit(start.spec.allocationId, 143, 'KILLED');
      const queued = await waitTrial(m, trial.id, 'QUEUED');
      // max_restarts is 0: had the exit counted as a failure, the trial would be ERROR.
      assert.equal(queued.restarts, 0, "a spot reclaim is not the trial's fault: no restart counted");
      return { m, provider, trial, spotId, spot, start };
    }

    it('requeues the trials of the interrupted agent without counting a restart and runs them on another instance', async () => {
      const { m, provider, trial, spotId, spot, start } = await reclaimedTrial();
      const nextId = await waitLaunched(provider, 2);
      assert.notEqual(nextId, spotId);
      const next = await agentFor(m, nextId);
      const restart = await next.next('start');
      assert.equal(restart.spec.taskId, trial.taskId);
      assert.notEqual(restart.spec.allocationId, start.spec.allocationId);
      next.runUp(restart.spec.allocationId);
      const running = await waitTrial(m, trial.id, 'RUNNING', (t) => t.agentId === nextId);
      assert.equal(running.restarts, 0);
      assert.equal(spot.all('start').length, 1, 'nothing more was scheduled on the disabled agent');

      await waitFor(() => provider.terminatedIds().includes(spotId), { ...WAIT, what: `the interrupted instance ${spotId} to be terminated once idle` });
      assert.ok(!provider.terminatedIds().includes(nextId), 'the busy replacement is kept');
    });

    it('says why the trial went back to the queue (the reclaim) while it waits, as it does for restarts', async () => {
      const { m, trial, spotId } = await reclaimedTrial();
      // Let the scheduling pass that follows the requeue run (no agent can take the trial yet).
      await settled(m);
      const t = await getTrial(m, trial.id);
      assert.equal(t.state, 'TRIAL_STATE_QUEUED');
      assert.ok(/reclaimed/.test(t.message) && t.message.includes(spotId), `the message should say spot instance ${spotId} was reclaimed and the trial requeued, got: ${JSON.stringify(t.message)}`);
    });
  });

  describe('a trial bigger than every instance type of its pool', () => {
    const pool = () => scaling({ instanceTypes: [{ instanceType: 'm.small', slots: 2 }, { instanceType: 'm.large', slots: 4 }] });
    const names = (msg: string) => /m\.large/.test(msg) && /8 slots/.test(msg);

    it('gets a waiting message naming the largest instance type, and nothing is launched for it', async () => {
      const provider = new MemoryProvider();
      const m = await startMaster({ provider, scaling: pool(), tickMs: TICK_MS });
      const { experimentId, trial } = await createExperiment(m, experimentYaml({ slots: 8 }));
      const t = await waitTrial(m, trial.id, 'QUEUED', (x) => names(x.message));
      assert.match(t.message, /largest instance type of pool default \(m\.large\) offers 4/);
      const exp = await getExperiment(m, experimentId);
      assert.ok(names(exp.trials[0].message), `GetExperiment shows it too: ${exp.trials[0].message}`);
      await waitPasses(m, 3);
      assert.equal(provider.launches.length, 0, 'no instance type fits: no launch');
      assert.equal((await poolStatus(m)).instances.length, 0);
    });

    it('keeps that message after the scheduling pass that follows the submission (without waiting for a tick)', async () => {
      const provider = new MemoryProvider();
      const m = await startMaster({ provider, scaling: pool(), tickMs: NO_TICK_MS });
      const { trial } = await createExperiment(m, experimentYaml({ slots: 8 }));
      // The provisioner decides "unschedulable" on the enqueue event; then the cluster's queue settles.
      await m.service.idle(POOL);
      await settled(m);
      const t = await getTrial(m, trial.id);
      assert.equal(t.state, 'TRIAL_STATE_QUEUED');
      assert.ok(names(t.message), `the message should name the largest instance type (m.large, 4 slots), got: ${JSON.stringify(t.message)}`);
    });
  });
});
