// The agent's session against a fake master (a real grpc.Server serving
// AgentService from agent.proto) and a fake container runtime: registration,
// heartbeats, commands, ordered and numbered reports, reconnection and
// reconciliation, fatal rejections, cancellation, backoff, and the outbox's
// backpressure. No Docker needed.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ContainerManager } from '../../agent/containers/manager';
import type { AgentOptions } from '../../agent/options';
import { Outbox, type OutboxStream } from '../../agent/session/outbox';
import { AgentSession } from '../../agent/session/session';
import { DetError } from '../../common/errors';
import type { LogFields, Logger } from '../../common/log';
import { AGENT_TOKEN_METADATA_KEY, VERSION, type AgentToMaster, type Device, type TaskSpec } from '../../common/types';
import { waitFor } from '../support/env';
import { detStatus, FakeAgentService, type FakeAgentServiceOptions, type RecordedConnect } from '../support/fake-agent-service';
import { FakeRuntime, type FakeRun } from '../support/fake-runtime';
import { testTaskFiles } from '../support/task-files';

// ---- fixtures ---------------------------------------------------------------

interface LogEntry {
  atMs: number;
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  fields: LogFields | undefined;
}

/** A Logger that keeps every line (all levels) for assertions and failure reports. */
function captureLogger(entries: LogEntry[] = []): Logger & { entries: LogEntry[] } {
  const make = (): Logger => ({
    debug: (msg, fields) => void entries.push({ atMs: Date.now(), level: 'debug', msg, fields }),
    info: (msg, fields) => void entries.push({ atMs: Date.now(), level: 'info', msg, fields }),
    warn: (msg, fields) => void entries.push({ atMs: Date.now(), level: 'warn', msg, fields }),
    error: (msg, fields) => void entries.push({ atMs: Date.now(), level: 'error', msg, fields }),
    child: () => make(),
  });
  return Object.assign(make(), { entries });
}

const DEVICES: Device[] = [
  { id: 0, brand: 'NVIDIA H200', uuid: 'GPU-aaaa', type: 'cuda', memoryMib: 143_771 },
  { id: 1, brand: 'NVIDIA H200', uuid: 'GPU-bbbb', type: 'cuda', memoryMib: 143_771 },
];

function agentOptions(port: number, o: Partial<AgentOptions> = {}): AgentOptions {
  return {
    masterHost: '127.0.0.1',
    masterPort: port,
    agentId: 'agent-under-test',
    resourcePool: 'gpu-pool',
    agentToken: 'join-token-123',
    tls: undefined,
    dockerSocket: '/nonexistent/docker.sock',
    slotType: 'gpu',
    cpuSlots: 0,
    containerNetworkMode: 'host',
    labels: { instance_type: 'p5.48xlarge', zone: 'us-east-1a' },
    instanceId: 'i-0aaaabbbbccccdddd',
    instanceType: 'p5.48xlarge',
    logLevel: 'debug',
    workDir: '/nonexistent/work-dir',
    dataCacheMaxBytes: 1 << 30,
    ...o,
  };
}

function spec(allocationId: string, o: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId: `task-of-${allocationId}`,
    allocationId,
    image: '127.0.0.1:5000/det-test/busybox:latest',
    entrypoint: ['/bin/sh', '-c'],
    command: ['echo hello'],
    env: { DET_TRIAL_ID: '7', DET_ALLOCATION_ID: allocationId },
    deviceIds: [1],
    deviceType: 'cuda',
    memoryLimitBytes: 1 << 30,
    pullPolicy: 'always',
    labels: { team: 'nlp' },
    killGracePeriodMs: 2_500,
    trialId: 0,
    checkpointStorage: { type: 'shared_fs', host_path: '/tmp/det-test-checkpoints' },
    data: [],
    latestCheckpointUuid: '',
    ...o,
  };
}

/** One agent (session + manager + outbox + fake runtime) under test. */
interface AgentUnderTest {
  session: AgentSession;
  manager: ContainerManager;
  outbox: Outbox;
  runtime: FakeRuntime;
  log: ReturnType<typeof captureLogger>;
  controller: AbortController;
  /** run()'s promise. */
  done: Promise<void>;
  /** How run() settled, once it has. */
  outcome: { settled: false } | { settled: true; error: unknown };
  /** The agent's work dir (allocation files). */
  workDir: string;
}

/** How a test agent starts: with another agent's work dir and containers, adopting them first (as det-agent does). */
interface StartOptions {
  workDir?: string;
  runtime?: FakeRuntime;
  adopt?: boolean;
}

const agents: AgentUnderTest[] = [];
const fakes: FakeAgentService[] = [];

async function startFake(opts: FakeAgentServiceOptions = {}): Promise<FakeAgentService> {
  const fake = await FakeAgentService.start(opts);
  fakes.push(fake);
  return fake;
}

function startAgent(port: number, o: Partial<AgentOptions> = {}, start: StartOptions = {}): AgentUnderTest {
  const opts = agentOptions(port, o);
  const log = captureLogger();
  const outbox = new Outbox();
  const runtime = start.runtime ?? new FakeRuntime();
  const files = testTaskFiles(log, start.workDir ? { workDir: start.workDir } : {});
  const manager = new ContainerManager(runtime, { clusterId: '', agentId: opts.agentId, networkMode: opts.containerNetworkMode, devices: DEVICES }, outbox, log.child('containers'), files);
  const session = new AgentSession(opts, DEVICES, manager, outbox, log.child('session'));
  const controller = new AbortController();
  const a: AgentUnderTest = { session, manager, outbox, runtime, log, controller, done: Promise.resolve(), outcome: { settled: false }, workDir: files.workDir };
  a.done = start.adopt ? manager.adopt(opts.agentId).then(() => session.run(controller.signal)) : session.run(controller.signal);
  a.done.then(
    () => (a.outcome = { settled: true, error: undefined }),
    (error) => (a.outcome = { settled: true, error }),
  );
  agents.push(a);
  return a;
}

/** Rejects if `p` does not settle within `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms))),
  ]);
}

/** Lets pending promise callbacks and I/O callbacks run. */
const flush = () => new Promise<void>((r) => setImmediate(r));

const withoutHeartbeats = (msgs: AgentToMaster[]) => msgs.filter((m) => m.kind !== 'heartbeat');

/** Messages about one allocation, with heartbeats and registrations left out. */
function about(allocationId: string, msgs: AgentToMaster[]): AgentToMaster[] {
  return msgs.filter((m) => (m.kind === 'containerState' || m.kind === 'logs' || m.kind === 'pullProgress') && m.allocationId === allocationId);
}

/** Log sequence numbers of an allocation, in arrival order. */
function sequences(allocationId: string, msgs: AgentToMaster[]): number[] {
  return msgs.flatMap((m) => (m.kind === 'logs' && m.allocationId === allocationId ? m.lines.map((l) => l.sequence) : []));
}

function hasTerminated(allocationId: string, msgs: AgentToMaster[]): boolean {
  return msgs.some((m) => m.kind === 'containerState' && m.allocationId === allocationId && m.state === 'TERMINATED');
}

function registerOf(c: RecordedConnect) {
  const m = c.received.find((x) => x.kind === 'register');
  assert.ok(m && m.kind === 'register', `connect #${c.index} sent no Register`);
  return m.register;
}

/** Starts allocation `id` through the master and returns its run once it is RUNNING on the master's side. */
async function startRunning(fake: FakeAgentService, a: AgentUnderTest, id: string, containerId = `ctr-${id}`): Promise<FakeRun> {
  fake.send({ kind: 'start', spec: spec(id) });
  const run = await a.runtime.waitForRun(id);
  run.state('STARTING', '');
  run.state('RUNNING', containerId);
  await fake.waitFor(`${id} RUNNING at the master`, () => fake.allReceived().some((m) => m.kind === 'containerState' && m.allocationId === id && m.state === 'RUNNING'));
  return run;
}

/** Waits until the agent has noticed that its stream is gone (it logs a retry). */
async function waitForAgentDisconnect(a: AgentUnderTest, atLeast = 1): Promise<void> {
  await waitFor(() => a.log.entries.filter((e) => e.level === 'warn' && e.msg.startsWith('no session with the master')).length >= atLeast, {
    what: 'the agent to notice the broken stream',
    timeoutMs: 5_000,
    intervalMs: 5,
  });
}

/** Times at which the session started connection attempts. */
function attemptTimes(a: AgentUnderTest): number[] {
  return a.log.entries.filter((e) => e.msg === 'session state' && e.fields?.to === 'CONNECTING').map((e) => e.atMs);
}

afterEach(async function () {
  const failed = this.currentTest?.state === 'failed';
  for (const a of agents.splice(0)) {
    a.controller.abort(new Error('test over'));
    await within(a.done.catch(() => undefined), 5_000, 'the agent session to stop').catch(() => undefined);
    if (failed) {
      process.stderr.write(`--- agent log of the failed test ---\n`);
      for (const e of a.log.entries) process.stderr.write(`${new Date(e.atMs).toISOString()} ${e.level} ${e.msg} ${e.fields ? JSON.stringify(e.fields) : ''}\n`);
    }
  }
  for (const f of fakes.splice(0)) await f.stop();
});

// ---- tests ------------------------------------------------------------------

describe('agent session against a fake master', function () {
  this.timeout(15_000);

  describe('registration', () => {
    it('Register carries agent id, version, pool, devices, labels and hostname; the call carries the token', async () => {
      const fake = await startFake();
      startAgent(fake.port);
      const c = await fake.waitForRegister(1);
      assert.equal(c.received[0].kind, 'register', 'Register must be the first message');
      assert.deepEqual(registerOf(c), {
        agentId: 'agent-under-test',
        version: VERSION,
        resourcePool: 'gpu-pool',
        devices: DEVICES,
        labels: { instance_type: 'p5.48xlarge', zone: 'us-east-1a' },
        containers: [],
        hostname: os.hostname(),
        instanceId: 'i-0aaaabbbbccccdddd',
        instanceType: 'p5.48xlarge',
      });
      assert.deepEqual(c.metadata.get(AGENT_TOKEN_METADATA_KEY), ['join-token-123']);
    });

    it('sends no token metadata when agent_token is empty', async () => {
      const fake = await startFake();
      startAgent(fake.port, { agentToken: '' });
      const c = await fake.waitForRegister(1);
      assert.deepEqual(c.metadata.get(AGENT_TOKEN_METADATA_KEY), []);
    });

    it('heartbeats at the interval the master sets in Registered', async () => {
      const fake = await startFake({ registered: { heartbeatIntervalMs: 50 } });
      startAgent(fake.port);
      const c = await fake.waitForRegister(1);
      const beats = () => c.received.filter((m): m is Extract<AgentToMaster, { kind: 'heartbeat' }> => m.kind === 'heartbeat');
      // The agent's default would be far slower than 50 ms: 4 beats in 2 s means the master's interval is used.
      await fake.waitFor('4 heartbeats', () => beats().length >= 4, 2_000);
      const sent = beats().map((b) => b.sentAtMs);
      const gaps = sent.slice(1).map((t, i) => t - sent[i]);
      const mean = gaps.reduce((x, y) => x + y, 0) / gaps.length;
      assert.ok(mean >= 40, `heartbeats come every ${mean.toFixed(1)} ms on average, faster than the 50 ms interval (gaps ${gaps.join(', ')})`);
      assert.ok(sent.every((t, i) => i === 0 || t >= sent[i - 1]), 'heartbeat timestamps go forward');
    });
  });

  describe('commands and reports', () => {
    it('StartContainer runs the spec in the runtime, with the cluster id from Registered', async () => {
      const fake = await startFake({ registered: { clusterId: 'cluster-xyz' } });
      const a = startAgent(fake.port);
      await fake.waitForRegister(1);
      const s = spec('alloc-1');
      fake.send({ kind: 'start', spec: s });
      const run = await a.runtime.waitForRun('alloc-1');
      // The spec as sent, plus the checkpoint directory the agent prepared for it.
      const { mounts, ...rest } = run.spec;
      assert.deepEqual(rest, { ...s, env: { ...s.env, DET_CHECKPOINT_DIR: '/det/checkpoints' } });
      assert.equal(mounts?.length, 1);
      assert.equal(mounts![0].containerPath, '/det/checkpoints');
      assert.equal(mounts![0].readOnly, false);
      assert.match(mounts![0].hostPath, /\/allocations\/alloc-1\/checkpoints$/);
      assert.equal(run.ctx.clusterId, 'cluster-xyz');
      assert.equal(run.ctx.agentId, 'agent-under-test');
      assert.deepEqual(run.ctx.devices, DEVICES);
      // A repeated start of a running allocation must not run it twice.
      fake.send({ kind: 'start', spec: s });
      fake.send({ kind: 'kill', allocationId: 'alloc-1', signal: 'SIGTERM', gracePeriodMs: 1 }); // a marker that the start was processed
      await waitFor(() => a.runtime.kills.length === 1, { what: 'the kill marker', timeoutMs: 5_000, intervalMs: 5 });
      assert.equal(a.runtime.runs.length, 1);
    });

    it('KillContainer reaches runtime.kill with its signal and grace period (SIGTERM when none is given)', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      await fake.waitForRegister(1);
      await startRunning(fake, a, 'alloc-k');
      fake.send({ kind: 'kill', allocationId: 'alloc-k', signal: 'SIGINT', gracePeriodMs: 1234 });
      fake.send({ kind: 'kill', allocationId: 'alloc-k', signal: '', gracePeriodMs: 10 });
      await waitFor(() => a.runtime.kills.length >= 2, { what: 'two kills', timeoutMs: 5_000, intervalMs: 5 });
      assert.deepEqual(a.runtime.kills, [
        { allocationId: 'alloc-k', signal: 'SIGINT', gracePeriodMs: 1234 },
        { allocationId: 'alloc-k', signal: 'SIGTERM', gracePeriodMs: 10 },
      ]);
    });

    it('container states and log lines reach the master in order, numbered 1..n per allocation', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      const c = await fake.waitForRegister(1);
      fake.send({ kind: 'start', spec: spec('alloc-a') });
      fake.send({ kind: 'start', spec: spec('alloc-b') });
      const ra = await a.runtime.waitForRun('alloc-a');
      const rb = await a.runtime.waitForRun('alloc-b');
      ra.state('STARTING', '');
      void ra.logs({ stream: 'agent', text: 'pulled image' });
      ra.state('RUNNING', 'ctr-a');
      void rb.logs('b one', 'b two');
      void ra.logs('a one', { stream: 'stderr', text: 'a warn' });
      void rb.logs('b three');
      void ra.logs('a two');
      ra.finish({ exitCode: 3, failureKind: 'EXIT_NONZERO', message: 'exit status 3' });
      await fake.waitFor('alloc-a TERMINATED', () => hasTerminated('alloc-a', c.received));
      await fake.waitFor('3 lines of alloc-b', () => sequences('alloc-b', c.received).length === 3);

      const msgs = withoutHeartbeats(c.received);
      assert.deepEqual(
        about('alloc-a', msgs).map((m) => (m.kind === 'logs' ? m.lines.map((l) => `${l.sequence}:${l.stream}:${l.text}`).join('|') : m.kind === 'containerState' ? `${m.state}@${m.containerId}` : m.kind)),
        ['PULLING@', 'STARTING@', '1:agent:pulled image', 'RUNNING@ctr-a', '2:stdout:a one|3:stderr:a warn', '4:stdout:a two', 'TERMINATED@ctr-a'],
      );
      const terminated = msgs.find((m) => m.kind === 'containerState' && m.state === 'TERMINATED');
      assert.ok(terminated && terminated.kind === 'containerState');
      assert.deepEqual(terminated.exit, { exitCode: 3, failureKind: 'EXIT_NONZERO', message: 'exit status 3' });
      assert.deepEqual(sequences('alloc-b', msgs), [1, 2, 3]);
      // The relative order of the two allocations' messages is kept too.
      const order = msgs.filter((m) => m.kind === 'logs').map((m) => (m.kind === 'logs' ? `${m.allocationId}#${m.lines[0].sequence}` : ''));
      assert.deepEqual(order, ['alloc-a#1', 'alloc-b#1', 'alloc-a#2', 'alloc-b#3', 'alloc-a#4']);
    });
  });

  describe('reconnection and reconciliation', () => {
    it('when the master ends the stream, the agent re-registers reporting the running allocation and its lastLogSequence', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      const c1 = await fake.waitForRegister(1);
      const run = await startRunning(fake, a, 'alloc-r', 'ctr-r');
      await run.logs('one', 'two', 'three');
      await fake.waitFor('3 lines', () => sequences('alloc-r', c1.received).length === 3);

      fake.end(c1);
      const c2 = await fake.waitForRegister(2);
      assert.notEqual(c2, c1);
      assert.equal(c2.received[0].kind, 'register');
      assert.deepEqual(c2.metadata.get(AGENT_TOKEN_METADATA_KEY), ['join-token-123']);
      assert.deepEqual(registerOf(c2).containers, [{ allocationId: 'alloc-r', containerId: 'ctr-r', state: 'RUNNING', lastLogSequence: 3, exit: undefined }]);

      // Numbering goes on where it stopped, on the new stream.
      await fake.waitFor('Registered answered', () => c2.registered !== undefined);
      await within(run.logs('four'), 5_000, 'line four to be handed to the new stream');
      await fake.waitFor('line four', () => sequences('alloc-r', c2.received).length === 1);
      assert.deepEqual(sequences('alloc-r', c2.received), [4]);
      assert.equal(a.outcome.settled, false, 'run() must keep going across reconnects');
    });

    it('what happens while the master is down reaches it after re-registration, in order, none lost; the outcome follows the lines', async () => {
      const fake = await startFake({ registered: { heartbeatIntervalMs: 50 } });
      const a = startAgent(fake.port);
      const c1 = await fake.waitForRegister(1);
      const run = await startRunning(fake, a, 'alloc-d', 'ctr-d');
      await run.logs('one', 'two', 'three');
      await fake.waitFor('3 lines', () => sequences('alloc-d', c1.received).length === 3);

      await fake.stop();
      await waitForAgentDisconnect(a);
      let handed = false;
      const later = run.logs('four', 'five').then(() => (handed = true));
      run.finish({ exitCode: 0, failureKind: 'NONE', message: 'done' });
      // TERMINATED is queued once the (empty) checkpoint directory has been flushed.
      await waitFor(() => a.outbox.pending === 2, { what: 'the lines and the TERMINATED state to wait in the outbox', timeoutMs: 5_000, intervalMs: 5 });
      assert.equal(handed, false, 'the log reader is held back while no stream takes lines');

      await fake.restart();
      const c2 = await fake.waitForRegister(2, 10_000);
      const reported = registerOf(c2).containers;
      assert.equal(reported.length, 1);
      assert.deepEqual(
        { allocationId: reported[0].allocationId, containerId: reported[0].containerId, state: reported[0].state, exit: reported[0].exit },
        // Register reports the last state the master was sent; the outcome comes after the queued lines.
        { allocationId: 'alloc-d', containerId: 'ctr-d', state: 'RUNNING', exit: undefined },
      );
      await fake.waitFor('TERMINATED on the new stream', () => hasTerminated('alloc-d', c2.received));
      await within(later, 5_000, 'the held lines to be handed over');

      const after = withoutHeartbeats(c2.received).slice(1);
      assert.deepEqual(
        after.map((m) => (m.kind === 'logs' ? m.lines.map((l) => `${l.sequence}:${l.text}`).join('|') : m.kind === 'containerState' ? m.state : m.kind)),
        ['4:four|5:five', 'TERMINATED'],
      );
      const all = fake.allReceived();
      assert.deepEqual(sequences('alloc-d', all), [1, 2, 3, 4, 5], 'every line exactly once, in order');
      assert.equal(a.outbox.pending, 0);
    });

    it("Register's lastLogSequence counts only lines already sent (agent.proto: 'Highest log sequence number already sent')", async () => {
      // Lines 4 and 5 are produced while the master is down; at re-registration they
      // still sit in the outbox, so the master has only ever been sent 1..3.
      const fake = await startFake();
      const a = startAgent(fake.port);
      const c1 = await fake.waitForRegister(1);
      const run = await startRunning(fake, a, 'alloc-s', 'ctr-s');
      await run.logs('one', 'two', 'three');
      await fake.waitFor('3 lines', () => sequences('alloc-s', c1.received).length === 3);
      await fake.stop();
      await waitForAgentDisconnect(a);
      void run.logs('four', 'five');
      await fake.restart();
      const c2 = await fake.waitForRegister(2, 10_000);
      const sentBeforeRegister = Math.max(...sequences('alloc-s', c1.received));
      assert.equal(sentBeforeRegister, 3);
      assert.equal(registerOf(c2).containers[0]?.lastLogSequence, 3, 'lines 4 and 5 were not sent yet when Register was written');
    });

    it('an outcome written to a stream the master never read is reported again after reconnecting', async () => {
      // The master hangs (reads nothing more) and is then restarted: the TERMINATED
      // state was handed to the dying stream but never reached the master.
      const fake = await startFake({ registered: { heartbeatIntervalMs: 50 } });
      const a = startAgent(fake.port);
      const c1 = await fake.waitForRegister(1);
      const run = await startRunning(fake, a, 'alloc-x', 'ctr-x');
      fake.freeze(c1);
      run.finish({ exitCode: 0, failureKind: 'NONE', message: 'finished while the master hung' });
      // TERMINATED follows the checkpoint sync and the removal of the allocation's files: wait until
      // it has been handed to the (frozen) stream, which is when Register would start reporting it.
      await waitFor(() => a.manager.reports().some((r) => r.allocationId === 'alloc-x' && r.state === 'TERMINATED'), {
        what: 'the outbox to hand TERMINATED to the stream',
        timeoutMs: 5_000,
        intervalMs: 5,
      });
      await flush();
      assert.equal(hasTerminated('alloc-x', c1.received), false, 'the frozen master read nothing');

      await fake.stop();
      await fake.restart();
      const c2 = await fake.waitForRegister(2, 10_000);
      // Anything queued goes out before the first heartbeat of the new stream.
      await fake.waitFor('a heartbeat on the new stream', () => c2.received.some((m) => m.kind === 'heartbeat'));
      const inRegister = registerOf(c2).containers.find((r) => r.allocationId === 'alloc-x');
      const heard = (inRegister?.state === 'TERMINATED' && inRegister.exit !== undefined) || hasTerminated('alloc-x', c2.received);
      assert.ok(heard, `the master never learns that alloc-x terminated: Register reported ${JSON.stringify(registerOf(c2).containers)} and nothing followed`);
    });

    it('kills (SIGKILL, no grace) a running allocation missing from Registered.expected_allocation_ids, and only that one', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      const c1 = await fake.waitForRegister(1);
      await startRunning(fake, a, 'alloc-keep');
      await startRunning(fake, a, 'alloc-stale');
      assert.deepEqual(a.runtime.kills, []);
      fake.onRegister = () => ({ registered: { expectedAllocationIds: ['alloc-keep'] } });
      fake.end(c1);
      const c2 = await fake.waitForRegister(2);
      assert.deepEqual(registerOf(c2).containers.map((r) => r.allocationId).sort(), ['alloc-keep', 'alloc-stale']);
      await waitFor(() => a.runtime.kills.length > 0, { what: 'a kill after Registered', timeoutMs: 5_000, intervalMs: 5 });
      // reconcile() runs synchronously in the Registered handler: every kill it orders is here now.
      assert.deepEqual(a.runtime.kills, [{ allocationId: 'alloc-stale', signal: 'SIGKILL', gracePeriodMs: 0 }]);
    });

    it('reports a terminated allocation in Register until the master has heard it, then forgets it', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      await fake.waitForRegister(1);
      // The allocation ends while the master is down: the next Register reports the last state the
      // master was sent (RUNNING), and the outcome follows as a message, after any queued lines...
      const run = await startRunning(fake, a, 'alloc-t', 'ctr-t');
      await fake.stop();
      await waitForAgentDisconnect(a);
      run.finish({ exitCode: 137, failureKind: 'KILLED', message: 'killed' });
      await fake.restart();
      const c2 = await fake.waitForRegister(2, 10_000);
      assert.deepEqual(registerOf(c2).containers, [{ allocationId: 'alloc-t', containerId: 'ctr-t', state: 'RUNNING', lastLogSequence: 0, exit: undefined }]);
      await fake.waitFor('TERMINATED delivered', () => hasTerminated('alloc-t', c2.received));
      // ...and once the master has had it and says it no longer expects the allocation, the agent lets it go.
      fake.onRegister = () => ({ registered: { expectedAllocationIds: [] } });
      fake.end(c2);
      const c3 = await fake.waitForRegister(3);
      await fake.waitFor('Registered #3', () => c3.registered !== undefined);
      fake.end(c3);
      const c4 = await fake.waitForRegister(4);
      assert.deepEqual(registerOf(c4).containers, []);
    });
  });

  describe('agent restart: adopting the containers of an earlier run', () => {
    /** Texts of an allocation's log lines as "sequence:text", in arrival order. */
    const numbered = (allocationId: string, msgs: AgentToMaster[]) =>
      msgs.flatMap((m) => (m.kind === 'logs' && m.allocationId === allocationId ? m.lines.map((l) => `${l.sequence}:${l.text}`) : []));

    it('reports them in the first Register, resumes the expected one with stable log sequences and its real exit, removes the rest', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      const c1 = await fake.waitForRegister(1);
      const runA = await startRunning(fake, a, 'alloc-r', 'ctr-r');
      await startRunning(fake, a, 'alloc-stale', 'ctr-stale');
      await runA.logs({ stream: 'agent', text: 'Pulled image' }, 'one', { stream: 'stderr', text: 'two' });
      await runA.logs('three');
      await fake.waitFor('4 lines of alloc-r', () => sequences('alloc-r', c1.received).length === 4);
      assert.deepEqual(numbered('alloc-r', c1.received), ['1:Pulled image', '2:one', '3:two', '4:three']);

      // "SIGKILL": the first agent's session goes away; its containers and files stay. A second agent
      // with the same id and work dir finds the containers by their labels (plus one without files).
      a.controller.abort(new Error('SIGKILL'));
      await within(a.done, 5_000, 'the first agent to stop');
      const runtime = new FakeRuntime();
      runtime.managed = [
        { allocationId: 'alloc-r', taskId: 'task-of-alloc-r', containerId: 'ctr-r', running: true, exitCode: null },
        { allocationId: 'alloc-stale', taskId: 'task-of-alloc-stale', containerId: 'ctr-stale', running: true, exitCode: null },
        { allocationId: 'alloc-unknown', taskId: 'task-of-alloc-unknown', containerId: 'ctr-unknown', running: false, exitCode: 0 },
      ];
      fake.onRegister = () => ({ registered: { expectedAllocationIds: ['alloc-r'] } });
      startAgent(fake.port, {}, { workDir: a.workDir, runtime, adopt: true });
      const c2 = await fake.waitForRegister(2);
      // A container without saved allocation files is removed before Register (and not reported);
      // alloc-stale's removal follows Registered.
      assert.equal(runtime.discards[0], 'alloc-unknown');
      assert.deepEqual(
        registerOf(c2).containers.sort((x, y) => x.allocationId.localeCompare(y.allocationId)),
        [
          { allocationId: 'alloc-r', containerId: 'ctr-r', state: 'RUNNING', lastLogSequence: 4, exit: undefined },
          { allocationId: 'alloc-stale', containerId: 'ctr-stale', state: 'RUNNING', lastLogSequence: 0, exit: undefined },
        ],
      );

      // The expected one is resumed: the runtime adopts the container with the saved spec, never creating one.
      const runB = await runtime.waitForRun('alloc-r');
      assert.deepEqual(runB.options, { adoptOnly: true });
      assert.deepEqual(runB.spec, runA.spec, 'the spec as prepared by the first agent (mounts and env included)');
      assert.equal(runtime.latest('alloc-stale'), undefined, 'an allocation the master does not expect is not resumed');
      await fake.waitFor('alloc-stale reported gone', () => hasTerminated('alloc-stale', c2.received));
      assert.ok(runtime.discards.includes('alloc-stale'));
      const stale = c2.received.find((m) => m.kind === 'containerState' && m.allocationId === 'alloc-stale');
      assert.equal(stale?.kind === 'containerState' && stale.exit?.failureKind, 'KILLED');

      // The runtime replays the output from its first line; the container then printed "four" and exited with 3.
      runB.state('RUNNING', 'ctr-r');
      await runB.logs('one', { stream: 'stderr', text: 'two' }, 'three', 'four');
      runB.finish({ exitCode: 3, failureKind: 'EXIT_NONZERO', message: 'exited with code 3' });
      await fake.waitFor('TERMINATED of alloc-r', () => hasTerminated('alloc-r', c2.received));
      const after = numbered('alloc-r', c2.received);
      // Old lines keep their sequences (the master drops them as seen); the agent's note and "four" come after.
      assert.deepEqual(after.slice(0, 3), ['2:one', '3:two', '4:three']);
      assert.match(after[3], /^5:the agent restarted and reattached to container ctr-r/);
      assert.deepEqual(after.slice(4), ['6:four']);
      assert.deepEqual(
        about('alloc-r', c2.received).map((m) => (m.kind === 'containerState' ? m.state : m.kind)),
        ['logs', 'TERMINATED'],
        'no PULLING/STARTING/RUNNING again: the master already has RUNNING',
      );
      const end = c2.received.find((m) => m.kind === 'containerState' && m.allocationId === 'alloc-r' && m.state === 'TERMINATED');
      assert.deepEqual(end?.kind === 'containerState' && end.exit, { exitCode: 3, failureKind: 'EXIT_NONZERO', message: 'exited with code 3' });
      await waitFor(() => !fs.existsSync(path.join(a.workDir, 'allocations', 'alloc-r')), { what: "the allocation's files to be removed", timeoutMs: 5_000, intervalMs: 10 });
    });
  });

  describe('fatal and retryable rejections', () => {
    it('UNAUTHENTICATED: run() rejects with DET_ERR_UNAUTHENTICATED telling the user to set agent_token, without retrying', async () => {
      const fake = await startFake();
      fake.onConnect = () => detStatus('DET_ERR_UNAUTHENTICATED', 'agent rejected: missing or wrong cluster join token (agent_token)');
      const a = startAgent(fake.port, { agentToken: 'wrong' });
      await assert.rejects(within(a.done, 5_000, 'run() to reject'), (err: unknown) => {
        assert.ok(err instanceof DetError, `expected a DetError, got ${String(err)}`);
        assert.equal(err.code, 'DET_ERR_UNAUTHENTICATED');
        assert.match(err.message, /set agent_token/i);
        assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${fake.port}`), 'the message names the master');
        return true;
      });
      assert.equal(fake.connects.length, 1, 'a wrong token is not retried');
    });

    it('DET_ERR_RESOURCE_POOL_UNKNOWN: run() rejects with that code and the master\'s reason', async () => {
      const fake = await startFake();
      const reason = "resource pool 'gpu-pool' does not exist on this master (pools: default)";
      fake.onRegister = () => ({ error: detStatus('DET_ERR_RESOURCE_POOL_UNKNOWN', reason) });
      const a = startAgent(fake.port);
      await assert.rejects(within(a.done, 5_000, 'run() to reject'), (err: unknown) => {
        assert.ok(err instanceof DetError, `expected a DetError, got ${String(err)}`);
        assert.equal(err.code, 'DET_ERR_RESOURCE_POOL_UNKNOWN');
        assert.ok(err.message.includes(reason), err.message);
        return true;
      });
      assert.equal(fake.connects.length, 1);
    });

    it('DET_ERR_AGENT_ID_IN_USE (ALREADY_EXISTS) is retried and does not end run()', async () => {
      const fake = await startFake();
      fake.onRegister = () => ({ error: detStatus('DET_ERR_AGENT_ID_IN_USE', "agent id 'agent-under-test' is already connected from 10.0.0.9:4000") });
      const a = startAgent(fake.port);
      await fake.waitFor('3 connection attempts', () => fake.connects.length >= 3, 5_000);
      await flush();
      assert.equal(a.outcome.settled, false, `run() settled: ${a.outcome.settled ? String(a.outcome.error) : ''}`);
      assert.ok(a.log.entries.some((e) => e.level === 'error' && e.msg.includes('already connected')), 'the duplicate id is logged as an error');
      // Once the other agent is gone, the same session registers.
      fake.onRegister = undefined;
      const c = await fake.waitForRegister(fake.registrations().length + 1, 10_000);
      await fake.waitFor('Registered', () => c.registered !== undefined);
      assert.equal(a.outcome.settled, false);
    });

    it('a plain UNAVAILABLE from the master is retried', async () => {
      const fake = await startFake();
      let n = 0;
      fake.onConnect = () => (++n <= 2 ? { code: 14, details: 'master is starting' } : undefined);
      const a = startAgent(fake.port);
      const c = await fake.waitForRegister(1, 10_000);
      assert.equal(c.index, 3);
      assert.equal(a.outcome.settled, false);
    });
  });

  describe('cancellation and backoff', () => {
    it('aborting the signal resolves run() and closes the stream', async () => {
      const fake = await startFake();
      const a = startAgent(fake.port);
      const c = await fake.waitForRegister(1);
      await fake.waitFor('Registered', () => c.registered !== undefined);
      a.controller.abort(new Error('SIGTERM'));
      await within(a.done, 2_000, 'run() to resolve after abort');
      await fake.waitFor('the stream to close on the master side', () => c.cancelled || c.clientEnded);
      assert.equal(fake.connects.length, 1, 'no reconnect after abort');
    });

    it('aborting while waiting to reconnect resolves run() promptly', async () => {
      const fake = await startFake();
      await fake.stop();
      const a = startAgent(fake.port);
      await waitForAgentDisconnect(a, 2);
      const t0 = Date.now();
      a.controller.abort(new Error('SIGINT'));
      await within(a.done, 1_000, 'run() to resolve after abort during backoff');
      assert.ok(Date.now() - t0 < 1_000);
    });

    it('reconnect delays grow while the master is down (250 ms base, doubling, up to half jitter)', async () => {
      const fake = await startFake();
      await fake.stop(); // the master is down from the start: every attempt fails at once
      const a = startAgent(fake.port);
      await waitFor(() => attemptTimes(a).length >= 4, { what: '4 connection attempts', timeoutMs: 5_000, intervalMs: 5 });
      const t = attemptTimes(a).slice(0, 4);
      const gaps = t.slice(1).map((x, i) => x - t[i]);
      // Delay i lies in [base*2^i/2, base*2^i]; timers never fire early (allow 5 ms of clock rounding).
      const floors = [125, 250, 500];
      gaps.forEach((g, i) => assert.ok(g >= floors[i] - 5, `gap ${i} is ${g} ms, below the backoff floor ${floors[i]} ms (gaps ${gaps.join(', ')})`));
      assert.ok(gaps[2] > gaps[0], `delays do not grow: ${gaps.join(', ')} ms`);
      assert.equal(a.outcome.settled, false, 'an unreachable master is not fatal');
    });
  });
});

// ---- outbox (unit) ---------------------------------------------------------

/** An OutboxStream whose buffer the test fills and drains. */
class FakeOutboxStream implements OutboxStream {
  readonly written: AgentToMaster[] = [];
  /** write() returns false while this is true. */
  full = false;
  drainedCalls = 0;
  private waiters: (() => void)[] = [];
  write(msg: AgentToMaster): boolean {
    this.written.push(msg);
    return !this.full;
  }
  drained(): Promise<void> {
    this.drainedCalls++;
    return new Promise((r) => this.waiters.push(r));
  }
  drain(): void {
    this.full = false;
    this.waiters.splice(0).forEach((w) => w());
  }
}

const hb = (n: number): AgentToMaster => ({ kind: 'heartbeat', sentAtMs: n });
const line = (seq: number): AgentToMaster => ({ kind: 'logs', allocationId: 'a', lines: [{ sequence: seq, timestampMs: 0, stream: 'stdout', text: `l${seq}` }] });

describe('Outbox', () => {
  it('a write that returns false holds further writes until the stream drains', async () => {
    const outbox = new Outbox();
    const stream = new FakeOutboxStream();
    stream.full = true;
    outbox.attach(stream);
    const delivered: number[] = [];
    const p = [1, 2, 3].map((n) => outbox.send(line(n)).then(() => delivered.push(n)));
    await flush();
    assert.deepEqual(stream.written, [line(1)], 'only the write that filled the buffer happened');
    assert.deepEqual(delivered, [1]);
    assert.equal(outbox.pending, 2);
    assert.equal(stream.drainedCalls, 1);
    outbox.sendIfConnected(hb(9));
    assert.deepEqual(stream.written, [line(1)], 'a heartbeat does not jump the queue');

    stream.drain();
    await Promise.all(p);
    assert.deepEqual(stream.written, [line(1), line(2), line(3)]);
    assert.deepEqual(delivered, [1, 2, 3]);
    assert.equal(outbox.pending, 0);
  });

  it('holds messages while detached and delivers them in order to the next stream', async () => {
    const outbox = new Outbox();
    const first = new FakeOutboxStream();
    first.full = true;
    outbox.attach(first);
    const p = [1, 2, 3].map((n) => outbox.send(line(n)));
    await flush();
    outbox.detach(); // the stream broke while full
    first.drain();
    await flush();
    assert.deepEqual(first.written, [line(1)], 'nothing goes to a detached stream');
    outbox.sendIfConnected(hb(1)); // dropped: not connected
    assert.equal(outbox.pending, 2);

    const second = new FakeOutboxStream();
    outbox.attach(second);
    await Promise.all(p);
    assert.deepEqual(second.written, [line(2), line(3)]);
    outbox.sendIfConnected(hb(2));
    assert.deepEqual(second.written, [line(2), line(3), hb(2)]);
  });
});
