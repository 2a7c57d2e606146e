// Chaos end to end (issue 6, "Recovery"): the network between det-agent and det-master is cut
// (the agent reaches the master through test/support/partition-proxy.ts) while a trial runs, with
// DET_AGENT_RECONNECT_GRACE=5s.
//   - a cut shorter than the grace period: the trial keeps running and completes, 0 restarts;
//   - a cut longer than the grace period: the trial is requeued (a restart), and when the agent
//     returns its stale container is killed (fencing) before the trial runs there again;
//   - a silent cut (blackhole) longer than heartbeat TTL + grace: the master notices through the
//     TTL, and then the same as above.
// Real det-master, det-agent and det processes, real dockerd.
import { strict as assert } from 'node:assert';
import { ContainerEvents, type ContainerHistory } from '../support/container-events';
import { testEnv, waitFor } from '../support/env';
import { PartitionProxy } from '../support/partition-proxy';
import { det, startAgent, type DetProcess, type TestMaster } from '../support/processes';
import {
  assertCompleteInOrder, MasterApi, numberedLines, numberedTrialsYaml, saveLogsIfFailed, startMasterFrom, stateOf, tmpDir, uniqueSuffix, waitTrialEnded, writeConfig,
} from '../support/recovery';

const GRACE_S = 5;

describe('e2e recovery: network cuts between agent and master', function () {
  this.timeout(150_000);
  const env = testEnv();
  const started: DetProcess[] = [];
  let api: MasterApi | undefined;
  let events: ContainerEvents | undefined;
  let proxy: PartitionProxy | undefined;
  afterEach(async function () {
    saveLogsIfFailed(this.currentTest, started);
    events?.stop();
    api?.close();
    proxy?.heal();
    await Promise.all(started.splice(0).map((p) => p.stop()));
    await proxy?.close();
  });

  /** A master, and one agent that reaches it only through the proxy. */
  async function cluster(): Promise<{ master: TestMaster; agent: DetProcess; agentId: string }> {
    const master = await startMasterFrom({ dataDir: tmpDir('det-e2e-recovery-net-'), token: `recovery-net-${uniqueSuffix()}`, args: [], env: { DET_AGENT_RECONNECT_GRACE: `${GRACE_S}s` }, port: 0 });
    started.push(master.proc);
    api = new MasterApi(master.address);
    proxy = await PartitionProxy.start(master.port);
    const agentId = `rec-net-${uniqueSuffix()}`;
    events = await ContainerEvents.start(env.dockerSocket, [agentId]);
    const agent = await startAgent({ ...master, port: proxy.port }, env.dockerSocket, { id: agentId, args: ['--slot-type', 'cpu', '--cpu-slots', '1'] });
    started.push(agent);
    return { master, agent, agentId };
  }

  async function runTrial(master: TestMaster, yaml: string): Promise<{ id: number; taskId: string }> {
    const r = await det(['-m', master.address, 'experiment', 'create', writeConfig(yaml)]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const [t] = await api!.trials(Number(/Created experiment (\d+)/.exec(r.stdout)![1]));
    return { id: t.id, taskId: t.taskId };
  }

  const waitForLine = (trialId: number, allocation: string, n: number) =>
    waitFor(async () => numberedLines(await api!.logText(trialId), allocation).includes(n), { what: `line ${n} of ${allocation} in the trial log`, timeoutMs: 60_000, intervalMs: 200 });

  /** Waits until the master has requeued the trial because its agent did not return within the grace period. */
  const waitRequeuedAfterGrace = (trialId: number) =>
    waitFor(async () => {
      const t = await api!.trial(trialId);
      return stateOf(t) === 'QUEUED' && new RegExp(`did not reconnect within ${GRACE_S}s`).test(t.message);
    }, { what: 'the master to requeue the trial after the grace period', timeoutMs: 30_000, intervalMs: 200 });
  const count = (p: DetProcess, re: RegExp) => (p.stderr.match(new RegExp(re.source, 'g')) ?? []).length;

  it(`a reset cut shorter than the grace period (${GRACE_S}s): the trial keeps running and completes, 0 restarts, logs complete`, async () => {
    const { master, agentId } = await cluster();
    const lines = 30;
    const trial = await runTrial(master, numberedTrialsYaml({ name: 'short-cut', image: env.image, lines: String(lines), sleep: 0.3, maxRestarts: 1 }));
    const allocation = `${trial.taskId}.0`;
    await waitForLine(trial.id, allocation, 5);

    const cutAt = Date.now();
    proxy!.cut('reset');
    await master.proc.waitForOutput(new RegExp(`agent disconnected agent=${agentId}`), 'the master to see the agent disconnect');
    // The cut lasts 2 s (the scenario, not a wait for a condition), well inside the grace period.
    await new Promise((r) => setTimeout(r, Math.max(0, cutAt + 2_000 - Date.now())));
    proxy!.heal();
    await waitFor(() => count(master.proc, new RegExp(`agent registered agent=${agentId}`)) >= 2, { what: 'the agent to register again', timeoutMs: 30_000 });

    const ended = await waitTrialEnded(api!, trial.id, 60_000);
    const summary = JSON.stringify({ state: ended.state, restarts: ended.restarts, allocation: ended.allocationId, message: ended.message });
    assert.equal(stateOf(ended), 'COMPLETED', summary);
    assert.equal(ended.restarts, 0, summary);
    assert.equal(ended.allocationId, allocation, summary);
    const containers = events!.containers();
    assert.equal(containers.length, 1, `one container: ${JSON.stringify(containers)}`);
    assert.equal(containers[0].starts, 1);
    assert.ok(!/did not reconnect within/.test(master.proc.stderr), 'the grace period did not run out');
    assertCompleteInOrder((await det(['-m', master.address, 'trial', 'logs', String(trial.id)])).stdout, allocation, lines);
  });

  /** What every long cut must show once the trial ran again: requeued once, stale container fenced off first. */
  async function assertRequeuedAndFenced(master: TestMaster, agentId: string, trial: { id: number; taskId: string }, rerunLines: number): Promise<void> {
    const stale = `${trial.taskId}.0`;
    const rerun = `${trial.taskId}.1`;
    const ended = await waitTrialEnded(api!, trial.id, 90_000);
    const summary = JSON.stringify({ state: ended.state, restarts: ended.restarts, allocation: ended.allocationId, message: ended.message });
    assert.equal(stateOf(ended), 'COMPLETED', summary);
    assert.equal(ended.restarts, 1, `a lost allocation counts as a restart: ${summary}`);
    assert.equal(ended.allocationId, rerun, summary);

    // Fencing: the agent came back still running the stale container; it was killed (SIGKILL,
    // exit 137) and only then did the rerun start on that agent.
    assert.match(master.proc.stderr, new RegExp(`agent still runs containers of requeued allocations; no new work until they are gone agent=${agentId} allocations=.*${stale.replace(/\./g, '\\.')}`));
    const byAlloc = new Map<string, ContainerHistory>(events!.containers().map((c) => [c.allocationId, c]));
    assert.deepEqual([...byAlloc.keys()].sort(), [stale, rerun], 'one container per attempt');
    assert.deepEqual(byAlloc.get(stale)!.exitCodes, [137], 'the stale container was killed');
    const staleDied = events!.of('die').find((e) => e.allocationId === stale)!.timeNano;
    const rerunCreated = events!.of('create').find((e) => e.allocationId === rerun)!.timeNano;
    assert.ok(staleDied < rerunCreated, 'the stale container was gone before the rerun was created');
    const agent = await det(['-m', master.address, 'agent', 'describe', agentId]);
    assert.doesNotMatch(agent.stdout, /Fenced/, 'no longer fenced');
    assertCompleteInOrder((await det(['-m', master.address, 'trial', 'logs', String(trial.id)])).stdout, rerun, rerunLines);
  }

  it(`a reset cut longer than the grace period: the trial is requeued, the stale container is killed when the agent returns (fencing), and the trial completes`, async () => {
    const { master, agentId } = await cluster();
    // Long enough that the first attempt still runs when the agent returns; the rerun is short.
    const trial = await runTrial(master, numberedTrialsYaml({ name: 'long-cut', image: env.image, lines: '50', linesAfterRestart: '5', sleep: 0.4, maxRestarts: 1 }));
    await waitForLine(trial.id, `${trial.taskId}.0`, 3);

    proxy!.cut('reset');
    await waitRequeuedAfterGrace(trial.id);
    assert.equal(events!.running().length, 1, 'the stale container still runs on the cut-off agent');
    proxy!.heal();

    await assertRequeuedAndFenced(master, agentId, trial, 5);
  });

  it('a silent cut (blackhole) longer than the heartbeat TTL plus the grace period: the TTL expires, the trial is requeued, the stale container is fenced off', async () => {
    const { master, agentId } = await cluster();
    // The TTL of a one-agent fleet is 15-20 s; with the grace period the first attempt must outlast ~25 s.
    const trial = await runTrial(master, numberedTrialsYaml({ name: 'blackhole', image: env.image, lines: '100', linesAfterRestart: '5', sleep: 0.4, maxRestarts: 1 }));
    await waitForLine(trial.id, `${trial.taskId}.0`, 3);

    proxy!.cut('blackhole');
    await master.proc.waitForOutput(new RegExp(`agent missed its heartbeat TTL agent=${agentId}`), 'the master to notice the missed heartbeat TTL', 40_000);
    await waitRequeuedAfterGrace(trial.id);
    assert.equal(events!.running().length, 1, 'the stale container still runs on the cut-off agent');
    proxy!.heal();

    await assertRequeuedAndFenced(master, agentId, trial, 5);
  });
});
