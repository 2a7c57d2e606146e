// The master's agent protocol and its effects on trials, against a real
// in-process master (Cluster.open on a SQLite file + startServer on
// 127.0.0.1:0) with agents played by scripted gRPC clients (RawAgent), so
// every message on the wire is chosen by the test. No Docker needed.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Agent__Output } from '../../common/proto-gen/determined/api/v1/Agent';
import type { Experiment__Output } from '../../common/proto-gen/determined/api/v1/Experiment';
import type { GetMasterResponse__Output } from '../../common/proto-gen/determined/api/v1/GetMasterResponse';
import type { TrialLog__Output } from '../../common/proto-gen/determined/api/v1/TrialLog';
import type { TrialLogsResponse__Output } from '../../common/proto-gen/determined/api/v1/TrialLogsResponse';
import type { HeartbeatTiming } from '../../master/agents/heartbeat';
import { MIN_HEARTBEAT_INTERVAL_MS } from '../../master/agents/heartbeat';
import { waitFor } from '../support/env';
import { startInProcessMaster, type InProcessMaster } from '../support/in-process-master';
import { createExperiment as createExperimentWith, getTrial, rpc, singleTrialYaml, waitTrial } from '../support/admin-api';
import { cpuDevices, cudaDevices, logLines, RawAgent, registration, report } from '../support/raw-agent';

/** CreateExperiment with this file's default config. */
const createExperiment = (m: TestMaster, yaml = experimentYaml()) => createExperimentWith(m, yaml);

const TOKEN = 'proto-test-join-token-5e1f0c9a';
const WAIT = { timeoutMs: 5_000, intervalMs: 20 };

/** An in-process master with its captured log. */
type TestMaster = InProcessMaster;

let tmp: string;
let masters: TestMaster[] = [];
let agents: RawAgent[] = [];

async function startMaster(opts: { dbFile?: string; graceMs?: number } = {}): Promise<TestMaster> {
  const m = await startInProcessMaster({
    dbFile: opts.dbFile ?? path.join(tmp, 'determined.db'), token: TOKEN, clusterName: 'proto-test', graceMs: opts.graceMs,
    pools: [{ name: 'default', description: 'test pool' }, { name: 'spare', description: 'another pool' }],
  });
  masters.push(m);
  return m;
}

/** A scripted agent on `m`; `token: null` sends no token metadata. */
function connect(m: TestMaster, token: string | null = TOKEN): RawAgent {
  const a = RawAgent.connect(m.address, { token: token ?? undefined });
  agents.push(a);
  return a;
}

const getExperiment = async (m: TestMaster, experimentId: number) =>
  (await rpc<{ experiment: Experiment__Output | null }>((cb) => m.api.GetExperiment({ experimentId }, cb))).experiment!;
const listAgents = async (m: TestMaster) => (await rpc<{ agents: Agent__Output[] }>((cb) => m.api.ListAgents({}, cb))).agents;
const getMaster = (m: TestMaster) => rpc<GetMasterResponse__Output>((cb) => m.api.GetMaster({}, cb));

/** Experiment YAML: one trial (single searcher) with three constant hyperparameters. */
function experimentYaml(o: { slots?: number; maxRestarts?: number; killGrace?: string } = {}): string {
  return singleTrialYaml({ name: 'proto-test', command: 'echo hello', slots: o.slots ?? 1, maxRestarts: o.maxRestarts, killGrace: o.killGrace, hparams: ['lr: 0.01', 'layers: 3', 'optimizer: adam'] });
}

async function waitExperiment(m: TestMaster, experimentId: number, state: string): Promise<Experiment__Output> {
  let last: Experiment__Output | undefined;
  await waitFor(async () => (last = await getExperiment(m, experimentId)).state === `EXPERIMENT_STATE_${state}`, { ...WAIT, what: `experiment ${experimentId} to be ${state}` });
  return last!;
}

async function waitAgentState(m: TestMaster, agentId: string, state: 'CONNECTED' | 'DISCONNECTED'): Promise<Agent__Output> {
  let last: Agent__Output | undefined;
  await waitFor(async () => (last = (await listAgents(m)).find((a) => a.id === agentId))?.state === `AGENT_STATE_${state}`, { ...WAIT, what: `agent ${agentId} to be ${state}` });
  return last!;
}

/** A TrialLogs call collecting every line until it ends. */
function readTrialLogs(m: TestMaster, req: { trialId: number; follow?: boolean }) {
  const lines: TrialLog__Output[] = [];
  const call = m.api.TrialLogs({ trialId: req.trialId, follow: req.follow ?? false });
  call.on('data', (r: TrialLogsResponse__Output) => lines.push(...r.logs));
  call.on('error', () => undefined);
  let ended: grpc.StatusObject | undefined;
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', (s: grpc.StatusObject) => resolve((ended = s))));
  return {
    lines,
    /** The final status once the call has ended. */
    get ended() {
      return ended;
    },
    /** The final status, or a rejection after `timeoutMs`. */
    async done(timeoutMs = 5_000): Promise<grpc.StatusObject> {
      let timer: NodeJS.Timeout | undefined;
      try {
        return await Promise.race([
          status,
          new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`TrialLogs did not end within ${timeoutMs} ms (${lines.length} lines so far)`)), timeoutMs))),
        ]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

async function storedLogs(m: TestMaster, trialId: number): Promise<TrialLog__Output[]> {
  const r = readTrialLogs(m, { trialId });
  const s = await r.done();
  assert.equal(s.code, grpc.status.OK, s.details);
  return r.lines;
}

/** Asserts lines are per-trial sequences 1..n exactly once, in order, with the given texts. */
function assertLines(lines: TrialLog__Output[], texts: string[]): void {
  assert.deepEqual(lines.map((l) => l.sequence), texts.map((_, i) => i + 1), 'per-trial sequences 1..n, each exactly once');
  assert.deepEqual(lines.map((l) => l.text), texts);
}

const range = (from: number, to: number, prefix = 'line') => Array.from({ length: to - from + 1 }, (_, i) => `${prefix} ${from + i}`);
const warnLines = (m: TestMaster) => m.log.filter((l) => / WARN /.test(l));

/** Registers an agent, creates an experiment and waits until its trial RUNs on that agent. */
async function runningTrial(m: TestMaster, agentId = 'agent-1', yaml = experimentYaml()) {
  const agent = connect(m);
  await agent.registerAndWait(registration(agentId, { devices: cpuDevices(2) }));
  const { experimentId, trial } = await createExperiment(m, yaml);
  const start = await agent.next('start');
  agent.runUp(start.spec.allocationId);
  await waitTrial(m, trial.id, 'RUNNING');
  return { agent, experimentId, trialId: trial.id, taskId: trial.taskId, allocationId: start.spec.allocationId };
}

describe('master agent protocol (in-process master, scripted agents)', function () {
  beforeEach(() => {
    tmp = mkdtempSync(path.join(tmpdir(), 'det-master-protocol-'));
  });

  afterEach(async () => {
    for (const a of agents) a.close();
    agents = [];
    for (const m of masters) await m.stop();
    masters = [];
    rmSync(tmp, { recursive: true, force: true });
  });

  describe('handshake', () => {
    it('rejects a wrong token with UNAUTHENTICATED (DET_ERR_UNAUTHENTICATED) and one warn line that does not contain the token', async () => {
      const m = await startMaster();
      const wrong = 'wrong-token-value-3b8d2e';
      const a = connect(m, wrong);
      a.register(registration('intruder'));
      const s = await a.waitStatus();
      assert.equal(s.code, grpc.status.UNAUTHENTICATED, s.details);
      assert.equal(s.errorCode, 'DET_ERR_UNAUTHENTICATED');
      assert.deepEqual(a.received, []);
      const warns = warnLines(m);
      assert.equal(warns.length, 1, `exactly one warn line, got:\n${warns.join('\n')}`);
      assert.match(warns[0], /rejected agent connection: wrong cluster join token/);
      for (const line of m.log) {
        assert.ok(!line.includes(wrong), `the presented token leaked into: ${line}`);
        assert.ok(!line.includes(TOKEN), `the cluster token leaked into: ${line}`);
      }
      assert.deepEqual(await listAgents(m), [], 'a rejected agent is not known');
    });

    it('rejects a connection without a token with UNAUTHENTICATED', async () => {
      const m = await startMaster();
      const a = connect(m, null);
      a.register(registration('anonymous'));
      const s = await a.waitStatus();
      assert.equal(s.code, grpc.status.UNAUTHENTICATED, s.details);
      assert.equal(s.errorCode, 'DET_ERR_UNAUTHENTICATED');
      assert.match(warnLines(m).join('\n'), /rejected agent connection: no cluster join token/);
    });

    it('fails the call with FAILED_PRECONDITION (DET_ERR_PROTOCOL) when the first message is not Register', async () => {
      const m = await startMaster();
      const a = connect(m);
      a.heartbeat();
      const s = await a.waitStatus();
      assert.equal(s.code, grpc.status.FAILED_PRECONDITION, s.details);
      assert.equal(s.errorCode, 'DET_ERR_PROTOCOL');
      assert.match(s.details, /first message .* must be Register/);
      assert.deepEqual(a.received, []);
      assert.deepEqual(await listAgents(m), []);
    });

    it('rejects Register for an unknown resource pool with INVALID_ARGUMENT naming the pools', async () => {
      const m = await startMaster();
      const a = connect(m);
      a.register(registration('agent-x', { resourcePool: 'no-such-pool' }));
      const s = await a.waitStatus();
      assert.equal(s.code, grpc.status.INVALID_ARGUMENT, s.details);
      assert.equal(s.errorCode, 'DET_ERR_RESOURCE_POOL_UNKNOWN');
      assert.match(s.details, /no-such-pool/);
      assert.match(s.details, /default, spare/);
      assert.deepEqual(a.received, []);
      assert.deepEqual(await listAgents(m), []);
    });

    it('answers Register with Registered carrying the cluster id, master id and heartbeat interval/TTL', async () => {
      const m = await startMaster();
      const a = connect(m);
      const info = await a.registerAndWait(registration('agent-1', { devices: cpuDevices(3) }));
      const master = await getMaster(m);
      assert.equal(info.clusterId, master.clusterId);
      assert.equal(info.clusterId, await m.store.clusterId());
      assert.equal(info.masterId, master.masterId);
      assert.ok(info.masterId.length > 0 && info.masterId !== info.clusterId);
      assert.equal(info.heartbeatIntervalMs, MIN_HEARTBEAT_INTERVAL_MS, 'a one-agent fleet gets the base interval');
      assert.ok(info.heartbeatTtlMs >= 3 * info.heartbeatIntervalMs && info.heartbeatTtlMs <= 4 * info.heartbeatIntervalMs, `TTL ${info.heartbeatTtlMs} allows three missed beats plus jitter`);
      assert.deepEqual(info.expectedAllocationIds, []);
      const [agent] = await listAgents(m);
      assert.equal(agent.id, 'agent-1');
      assert.equal(agent.state, 'AGENT_STATE_CONNECTED');
      assert.deepEqual(agent.slots.map((s) => s.id), [0, 1, 2]);
      assert.equal(master.connectedAgents, 1);
    });

    it('rejects a second agent with the same id with ALREADY_EXISTS while the first keeps working', async () => {
      const m = await startMaster();
      const first = connect(m);
      await first.registerAndWait(registration('agent-1', { devices: cpuDevices(1) }));
      const second = connect(m);
      second.register(registration('agent-1', { devices: cpuDevices(8), hostname: 'impostor' }));
      const s = await second.waitStatus();
      assert.equal(s.code, grpc.status.ALREADY_EXISTS, s.details);
      assert.equal(s.errorCode, 'DET_ERR_AGENT_ID_IN_USE');
      assert.deepEqual(second.received, []);

      // The first is untouched: still connected with its own registration, and it gets work.
      assert.equal(first.ended, undefined, 'the first agent stream is still open');
      first.heartbeat();
      const [agent] = await listAgents(m);
      assert.equal(agent.state, 'AGENT_STATE_CONNECTED');
      assert.equal(agent.hostname, 'host-agent-1');
      assert.equal(agent.slots.length, 1);
      const { trial } = await createExperiment(m);
      const start = await first.next('start');
      assert.equal(start.spec.env.DET_TRIAL_ID, String(trial.id));
      first.runUp(start.spec.allocationId);
      await waitTrial(m, trial.id, 'RUNNING');
    });

    it('drops an agent that sends nothing within the heartbeat TTL, and keeps one that heartbeats', async () => {
      // Testability gap: the TTL comes from heartbeatTiming() (>= 15 s) and cannot be set through
      // ClusterOptions, so this test swaps the module export for the duration of the test.
      const heartbeat = require('../../master/agents/heartbeat') as { heartbeatTiming: (agents: number) => HeartbeatTiming };
      const original = heartbeat.heartbeatTiming;
      heartbeat.heartbeatTiming = () => ({ intervalMs: 50, ttlMs: 300 });
      try {
        const m = await startMaster();
        const beating = connect(m);
        const info = await beating.registerAndWait(registration('beating'));
        assert.equal(info.heartbeatTtlMs, 300, 'the short TTL reached the agent (if not, the heartbeatTiming patch no longer takes effect)');
        beating.heartbeatEvery(info.heartbeatIntervalMs);

        // Two silent agents in turn: each must be dropped, and together they outlast the TTL twice over.
        for (const id of ['silent-1', 'silent-2']) {
          const silent = connect(m);
          await silent.registerAndWait(registration(id));
          const s = await silent.waitStatus(3_000);
          // Retryable: the agent reconnects (a slow network is not a protocol violation).
          assert.equal(s.code, grpc.status.UNAVAILABLE, s.details);
          assert.equal(s.errorCode, 'DET_ERR_HEARTBEAT_TIMEOUT');
          assert.match(s.details, /heartbeat TTL \(300 ms\)/);
          await waitAgentState(m, id, 'DISCONNECTED');
          assert.ok(m.log.some((l) => / WARN /.test(l) && l.includes('agent missed its heartbeat TTL') && l.includes(`agent=${id}`)), 'the drop is logged');
        }
        assert.equal(beating.ended, undefined, 'a heartbeating agent outlives several TTLs');
        assert.equal((await listAgents(m)).find((a) => a.id === 'beating')?.state, 'AGENT_STATE_CONNECTED');
        assert.ok(!m.log.some((l) => l.includes('agent missed its heartbeat TTL') && l.includes('agent=beating')));
      } finally {
        heartbeat.heartbeatTiming = original;
      }
    });

    it('ends a connection that sends no Register within the registration timeout (10 s, not injectable)', async function () {
      this.timeout(20_000);
      const m = await startMaster();
      const a = connect(m);
      const s = await a.waitStatus(15_000);
      assert.equal(s.code, grpc.status.UNAVAILABLE, s.details);
      assert.equal(s.errorCode, 'DET_ERR_HEARTBEAT_TIMEOUT');
      assert.match(s.details, /no Register message in time/);
      assert.match(warnLines(m).join('\n'), /agent did not register in time/);
    });
  });

  describe('trials', () => {
    it('sends StartContainer with the DET_* env and device ids, and follows PULLING/STARTING/RUNNING/TERMINATED(0) to COMPLETED', async () => {
      const m = await startMaster();
      const a = connect(m);
      await a.registerAndWait(registration('gpu-agent', { devices: cudaDevices([2, 5, 7]) }));
      const { experimentId, trial } = await createExperiment(m, experimentYaml({ slots: 2 }));
      assert.equal(trial.state, 'TRIAL_STATE_QUEUED');

      const { spec } = await a.next('start');
      assert.equal(spec.taskId, trial.taskId);
      assert.equal(spec.allocationId, `${trial.taskId}.0`);
      assert.equal(spec.image, 'det-test/busybox:latest');
      assert.deepEqual(spec.entrypoint, ['sh', '-c', 'echo hello']);
      assert.deepEqual(spec.deviceIds, [2, 5], 'best fit takes the lowest free device ids');
      assert.equal(spec.deviceType, 'cuda');
      assert.equal(spec.killGracePeriodMs, 3_000);
      assert.deepEqual(JSON.parse(spec.env.DET_HPARAMS), { layers: 3, lr: 0.01, optimizer: 'adam' });
      assert.equal(spec.env.DET_TRIAL_ID, String(trial.id));
      assert.equal(spec.env.DET_EXPERIMENT_ID, String(experimentId));
      assert.equal(spec.env.DET_TASK_ID, trial.taskId);
      assert.equal(spec.env.DET_ALLOCATION_ID, spec.allocationId);
      assert.equal(spec.env.DET_AGENT_ID, 'gpu-agent');
      assert.deepEqual(JSON.parse(spec.env.DET_SLOT_IDS), [2, 5]);
      assert.equal(spec.env.DET_CLUSTER_ID, m.cluster.clusterId);
      assert.equal(spec.env.DET_TRIAL_RESTARTS, '0');

      const assigned = await waitTrial(m, trial.id, 'ASSIGNED');
      assert.equal(assigned.agentId, 'gpu-agent');
      assert.deepEqual(assigned.slotIds, [2, 5]);
      for (const state of ['PULLING', 'STARTING', 'RUNNING'] as const) {
        a.state(spec.allocationId, state);
        await waitTrial(m, trial.id, state);
      }
      const slots = (await listAgents(m))[0].slots;
      assert.deepEqual(slots.filter((s) => s.allocationId === spec.allocationId).map((s) => s.id), [2, 5]);
      assert.equal(slots.find((s) => s.id === 2)?.trialId, trial.id);

      a.exit(spec.allocationId, 0);
      const done = await waitTrial(m, trial.id, 'COMPLETED');
      assert.equal(done.exitCode, 0);
      assert.equal(done.restarts, 0);
      assert.ok(done.endedAtMs > 0);
      await waitExperiment(m, experimentId, 'COMPLETED');
      assert.deepEqual((await listAgents(m))[0].slots.filter((s) => s.allocationId !== ''), [], 'slots are free again');
      assert.equal(a.all('start').length, 1);
    });

    it('stores log lines resent with the same agent sequences once, numbered 1..n per trial', async () => {
      const m = await startMaster();
      const { agent, trialId, allocationId } = await runningTrial(m);
      agent.logs(allocationId, logLines(1, 3));
      agent.logs(allocationId, logLines(1, 3)); // resent whole
      agent.logs(allocationId, logLines(2, 5)); // overlapping
      agent.logs(allocationId, logLines(5, 5)); // resent tail
      // Messages on one stream are handled in order, so COMPLETED means every batch was handled.
      agent.exit(allocationId, 0);
      await waitTrial(m, trialId, 'COMPLETED');
      const lines = await storedLogs(m, trialId);
      assertLines(lines, range(1, 5));
      assert.ok(lines.every((l) => l.allocationId === allocationId && l.stream === 'stdout'));
    });

    it('TrialLogs with follow returns every line once, including lines that arrive while following, and ends when the trial ends', async () => {
      const m = await startMaster();
      const { agent, trialId, allocationId } = await runningTrial(m);

      // A follower that starts before any line exists.
      const early = readTrialLogs(m, { trialId, follow: true });
      agent.logs(allocationId, logLines(1, 10));
      await waitFor(() => early.lines.length >= 10, { ...WAIT, what: 'the early follower to see lines 1..10' });
      agent.logs(allocationId, logLines(11, 2_500)); // more than one stored page (1000)
      await waitFor(async () => (await m.store.lastTrialLogSequence(trialId)) === 2_500, { ...WAIT, what: '2500 lines stored' });

      // A follower that starts with a multi-page history while new lines keep arriving.
      const late = readTrialLogs(m, { trialId, follow: true });
      await waitFor(() => late.lines.length > 0, { ...WAIT, what: 'the late follower to start reading history' });
      for (let from = 2_501; from <= 2_600; from += 10) {
        agent.logs(allocationId, logLines(from, from + 9));
        agent.logs(allocationId, logLines(from, from + 9)); // every batch resent
      }
      // Both are following live: they have every line and are still open while the trial runs.
      for (const [name, follower] of [['early', early], ['late', late]] as const) {
        await waitFor(() => follower.lines.length >= 2_600 || follower.ended !== undefined, { ...WAIT, what: `the ${name} follower to reach line 2600` });
        assert.equal(follower.ended, undefined, `the ${name} follower ended while the trial was still running: ${follower.ended?.details}`);
      }
      agent.exit(allocationId, 0);

      for (const [name, follower] of [['early', early], ['late', late]] as const) {
        const s = await follower.done();
        assert.equal(s.code, grpc.status.OK, `${name}: ${s.details}`);
        assertLines(follower.lines, range(1, 2_600));
      }
      assert.equal((await getTrial(m, trialId)).state, 'TRIAL_STATE_COMPLETED');
    });

    it('restarts a trial that exits non-zero (max_restarts 1) with a new allocation, then ends in ERROR', async () => {
      const m = await startMaster();
      const { agent, experimentId, trialId, taskId, allocationId: first } = await runningTrial(m, 'agent-1', experimentYaml({ maxRestarts: 1 }));
      assert.equal(first, `${taskId}.0`);
      agent.logs(first, logLines(1, 2, 'first'));
      agent.exit(first, 1);

      const { spec } = await agent.next('start');
      assert.equal(spec.allocationId, `${taskId}.1`, 'a new allocation id for the second attempt');
      assert.equal(spec.env.DET_ALLOCATION_ID, spec.allocationId);
      assert.equal(spec.env.DET_TRIAL_RESTARTS, '1');
      const restarted = await waitTrial(m, trialId, 'ASSIGNED');
      assert.equal(restarted.restarts, 1);
      assert.equal(restarted.allocationId, spec.allocationId);
      agent.runUp(spec.allocationId);
      agent.logs(spec.allocationId, logLines(1, 2, 'second')); // agent sequences start again per allocation
      agent.exit(spec.allocationId, 2);

      const failed = await waitTrial(m, trialId, 'ERROR');
      assert.equal(failed.exitCode, 2);
      assert.equal(failed.restarts, 1);
      assert.match(failed.message, /exited with code 2.*after 1 restart/);
      await waitExperiment(m, experimentId, 'ERROR');
      assert.equal(agent.all('start').length, 2, 'no third attempt');
      const lines = await storedLogs(m, trialId);
      assertLines(lines, [...range(1, 2, 'first'), ...range(1, 2, 'second')]);
      assert.deepEqual(lines.map((l) => l.allocationId), [first, first, spec.allocationId, spec.allocationId]);
    });

    it('KillExperiment while RUNNING sends KillContainer(SIGTERM, kill_grace_period) and the trial ends CANCELED after TERMINATED', async () => {
      const m = await startMaster();
      const { agent, experimentId, trialId, allocationId } = await runningTrial(m, 'agent-1', experimentYaml({ killGrace: '7s' }));
      const res = await rpc<{ experiment: Experiment__Output | null }>((cb) => m.api.KillExperiment({ experimentId }, cb));
      assert.equal(res.experiment!.state, 'EXPERIMENT_STATE_STOPPING_CANCELED');
      const kill = await agent.next('kill');
      assert.deepEqual(kill, { kind: 'kill', allocationId, signal: 'SIGTERM', gracePeriodMs: 7_000 });
      assert.equal((await getTrial(m, trialId)).state, 'TRIAL_STATE_RUNNING', 'running until the container is gone');

      agent.exit(allocationId, 143, 'KILLED');
      const canceled = await waitTrial(m, trialId, 'CANCELED');
      assert.equal(canceled.exitCode, 143);
      assert.equal(canceled.restarts, 0, 'a killed trial is not restarted');
      assert.match(canceled.message, /killed by user/);
      await waitExperiment(m, experimentId, 'CANCELED');
      assert.equal(agent.all('start').length, 1);
    });

    it('tells why a trial stays queued when it needs more slots than any agent has', async () => {
      const m = await startMaster();
      const a = connect(m);
      await a.registerAndWait(registration('small-agent', { devices: cpuDevices(2) }));
      const { trial } = await createExperiment(m, experimentYaml({ slots: 4 }));
      const queued = await waitTrial(m, trial.id, 'QUEUED', (t) => t.message !== '');
      assert.match(queued.message, /needs 4 slots on one agent but the largest agent in resource pool 'default' has 2/);
      const pools = (await rpc<{ resourcePools: { name: string; queuedTasks: number }[] }>((cb) => m.api.ListResourcePools({}, cb))).resourcePools;
      assert.equal(pools.find((p) => p.name === 'default')?.queuedTasks, 1);
      assert.deepEqual(a.all('start'), []);
    });

    it('kills with SIGKILL a container the master does not know, and ignores a TERMINATED one', async () => {
      const m = await startMaster();
      const a = connect(m);
      await a.registerAndWait(registration('agent-1'));
      a.state('ghost.1.0', 'TERMINATED', { exitCode: 0, failureKind: 'NONE', message: '' });
      a.state('ghost.2.0', 'RUNNING');
      const kill = await a.next('kill');
      assert.deepEqual(kill, { kind: 'kill', allocationId: 'ghost.2.0', signal: 'SIGKILL', gracePeriodMs: 0 });
      assert.deepEqual(a.all('kill').map((k) => k.allocationId), ['ghost.2.0'], 'nothing to kill for a container that already ended');
      assert.match(warnLines(m).join('\n'), /agent runs an allocation the master does not expect; killing it.*ghost\.2\.0/);
    });
  });

  describe('reconnects', () => {
    it('an agent that re-registers within the grace period reporting its container keeps the trial', async () => {
      const m = await startMaster({ graceMs: 60_000 });
      const { agent, trialId, allocationId } = await runningTrial(m);
      agent.close();
      await waitAgentState(m, 'agent-1', 'DISCONNECTED');

      const again = connect(m);
      const info = await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2), containers: [report(allocationId, 'RUNNING', { lastLogSequence: 0 })] }));
      assert.deepEqual(info.expectedAllocationIds, [allocationId]);
      const t = await getTrial(m, trialId);
      assert.equal(t.state, 'TRIAL_STATE_RUNNING');
      assert.equal(t.restarts, 0);
      assert.equal(t.allocationId, allocationId);

      // The reattached allocation still drives the trial.
      again.logs(allocationId, logLines(1, 2));
      again.exit(allocationId, 0);
      const done = await waitTrial(m, trialId, 'COMPLETED');
      assert.equal(done.restarts, 0);
      assert.deepEqual(again.all('start'), [], 'no restart');
      assertLines(await storedLogs(m, trialId), range(1, 2));
    });

    it('an agent that re-registers without its container gets the trial restarted', async () => {
      const m = await startMaster({ graceMs: 60_000 });
      const { agent, trialId, taskId, allocationId } = await runningTrial(m, 'agent-1', experimentYaml({ maxRestarts: 3 }));
      agent.close();
      await waitAgentState(m, 'agent-1', 'DISCONNECTED');

      const again = connect(m);
      const info = await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2) }));
      assert.deepEqual(info.expectedAllocationIds, []);
      const { spec } = await again.next('start');
      assert.notEqual(spec.allocationId, allocationId);
      assert.equal(spec.allocationId, `${taskId}.1`);
      const t = await waitTrial(m, trialId, 'ASSIGNED');
      assert.equal(t.restarts, 1);
      const old = await m.store.getAllocation(allocationId);
      assert.equal(old?.state, 'TERMINATED');
      assert.match(old?.message ?? '', /container of allocation .* is gone from agent agent-1/);
    });

    it('an allocation the agent never reported (still ASSIGNED) is requeued without counting a restart when the agent re-registers without it', async () => {
      const m = await startMaster({ graceMs: 60_000 });
      const agent = connect(m);
      await agent.registerAndWait(registration('agent-1', { devices: cpuDevices(2) }));
      const { trial } = await createExperiment(m, experimentYaml({ maxRestarts: 3 }));
      const { spec: first } = await agent.next('start');
      assert.equal((await getTrial(m, trial.id)).state, 'TRIAL_STATE_ASSIGNED');
      // The start is lost: the agent goes away before it said anything about the allocation.
      agent.close();
      await waitAgentState(m, 'agent-1', 'DISCONNECTED');

      const again = connect(m);
      const info = await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2) }));
      assert.deepEqual(info.expectedAllocationIds, []);
      const { spec } = await again.next('start');
      assert.equal(spec.allocationId, `${trial.taskId}.1`);
      const t = await waitTrial(m, trial.id, 'ASSIGNED');
      assert.equal(t.restarts, 0, 'nothing of the trial ran');
      const old = await m.store.getAllocation(first.allocationId);
      assert.equal(old?.state, 'TERMINATED');
      assert.match(old?.message ?? '', /allocation .* never reached agent agent-1/);
    });

    it('when the grace period ends the trial is restarted, and runs again on the agent once it reconnects', async () => {
      const m = await startMaster({ graceMs: 300 });
      const { agent, trialId, taskId, allocationId } = await runningTrial(m, 'agent-1', experimentYaml({ maxRestarts: 3 }));
      agent.close();
      const lost = await waitTrial(m, trialId, 'QUEUED');
      assert.equal(lost.restarts, 1);
      assert.match(lost.message, /agent agent-1 did not reconnect within/);
      assert.equal((await waitAgentState(m, 'agent-1', 'DISCONNECTED')).slots.filter((s) => s.allocationId !== '').length, 0, 'the lost allocation freed its slots');

      // The agent comes back still reporting the old container: the master no longer expects it.
      const again = connect(m);
      const info = await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2), containers: [report(allocationId, 'RUNNING')] }));
      assert.deepEqual(info.expectedAllocationIds, []);
      // Fenced: nothing new until the agent reports the stale container gone (it kills it on Registered).
      await waitFor(async () => (await listAgents(m)).find((a) => a.id === 'agent-1')?.fencedAllocationIds.length === 1, { ...WAIT, what: 'agent-1 to be fenced' });
      assert.ok(!again.received.some((x) => x.kind === 'start'), 'no new work while fenced');
      again.exit(allocationId, 137, 'KILLED');
      const { spec } = await again.next('start');
      assert.equal(spec.allocationId, `${taskId}.1`);
      again.runUp(spec.allocationId);
      await waitTrial(m, trialId, 'RUNNING', (t) => t.allocationId === spec.allocationId);
    });

    it('a kill requested while the agent is away reaches it after Registered when it re-registers', async () => {
      const m = await startMaster({ graceMs: 60_000 });
      const { agent, experimentId, trialId, allocationId } = await runningTrial(m, 'agent-1', experimentYaml({ killGrace: '4s' }));
      agent.close();
      await waitAgentState(m, 'agent-1', 'DISCONNECTED');
      await rpc((cb) => m.api.KillExperiment({ experimentId }, cb));
      assert.equal((await getTrial(m, trialId)).state, 'TRIAL_STATE_RUNNING', 'the container may still run on the agent');

      const again = connect(m);
      again.register(registration('agent-1', { devices: cpuDevices(2), containers: [report(allocationId, 'RUNNING')] }));
      const kill = await again.next('kill');
      assert.deepEqual(kill, { kind: 'kill', allocationId, signal: 'SIGTERM', gracePeriodMs: 4_000 });
      const info = (await again.next('registered')).registered;
      assert.deepEqual(info.expectedAllocationIds, [allocationId]);
      // The protocol: "The master answers Register with Registered and afterwards sends commands."
      assert.deepEqual(again.received.map((msg) => msg.kind), ['registered', 'kill'], 'Registered comes before any command');

      again.exit(allocationId, 143, 'KILLED');
      await waitTrial(m, trialId, 'CANCELED');
      await waitExperiment(m, experimentId, 'CANCELED');
    });
  });

  describe('master restart', () => {
    async function restartScenario() {
      const dbFile = path.join(tmp, 'restart.db');
      const m1 = await startMaster({ dbFile });
      const before = await getMaster(m1);
      const { agent, experimentId, trialId, allocationId } = await runningTrial(m1);
      agent.logs(allocationId, logLines(1, 2));
      await waitFor(async () => (await m1.store.lastTrialLogSequence(trialId)) === 2, { ...WAIT, what: 'lines 1..2 stored' });

      await m1.stop();
      const s = await agent.waitStatus();
      assert.equal(s.code, grpc.status.UNAVAILABLE, s.details);
      assert.equal(s.errorCode, 'DET_ERR_SHUTTING_DOWN');

      const m2 = await startMaster({ dbFile });
      const after = await getMaster(m2);
      assert.equal(after.clusterId, before.clusterId, 'same cluster');
      assert.notEqual(after.masterId, before.masterId, 'a new master process');
      const recovered = await getTrial(m2, trialId);
      assert.equal(recovered.state, 'TRIAL_STATE_RUNNING');
      assert.equal(recovered.allocationId, allocationId);
      const known = (await listAgents(m2)).find((a) => a.id === 'agent-1');
      assert.equal(known?.state, 'AGENT_STATE_DISCONNECTED');
      assert.deepEqual(known?.slots.filter((sl) => sl.allocationId === allocationId).map((sl) => sl.trialId), [trialId], 'the recovered allocation holds its slot');
      return { m2, masterId: after.masterId, experimentId, trialId, allocationId };
    }

    it('keeps a trial whose agent re-registers with the running container: no new StartContainer, no restart', async () => {
      const { m2, masterId, experimentId, trialId, allocationId } = await restartScenario();
      const again = connect(m2);
      const info = await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2), containers: [report(allocationId, 'RUNNING', { lastLogSequence: 2 })] }));
      assert.equal(info.masterId, masterId);
      assert.deepEqual(info.expectedAllocationIds, [allocationId]);

      again.logs(allocationId, logLines(3, 4));
      again.exit(allocationId, 0);
      const done = await waitTrial(m2, trialId, 'COMPLETED');
      assert.equal(done.restarts, 0);
      assert.equal(done.allocationId, allocationId);
      await waitExperiment(m2, experimentId, 'COMPLETED');
      assert.deepEqual(again.all('start'), [], 'no new StartContainer');
      assertLines(await storedLogs(m2, trialId), range(1, 4));
    });

    it('still stores lines once when the agent resends lines the previous master already stored', async () => {
      // The agent reports last_log_sequence 2 in Register and then resends 1..2 with 3..4 (at-least-once delivery).
      const { m2, trialId, allocationId } = await restartScenario();
      const again = connect(m2);
      await again.registerAndWait(registration('agent-1', { devices: cpuDevices(2), containers: [report(allocationId, 'RUNNING', { lastLogSequence: 2 })] }));
      again.logs(allocationId, logLines(1, 4));
      again.exit(allocationId, 0);
      await waitTrial(m2, trialId, 'COMPLETED');
      assertLines(await storedLogs(m2, trialId), range(1, 4));
    });
  });
});
