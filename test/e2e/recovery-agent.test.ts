// Chaos end to end (issue 6, "Recovery"): det-agent is SIGKILLed while its trial's container runs
// and started again with the same id. The restarted agent must find the container by its labels,
// report it, and the master must reattach it: the trial completes without a restart, its log holds
// every line exactly once and in order, and an exit that happened while the agent was down is
// reported with its real exit code. Real det-master, det-agent and det processes, real dockerd.
import { strict as assert } from 'node:assert';
import Docker from 'dockerode';
import { CONTAINER_LABELS } from '../../common/types';
import { ContainerEvents } from '../support/container-events';
import { testEnv, waitFor } from '../support/env';
import { det, startAgent, type DetProcess, type TestMaster } from '../support/processes';
import {
  assertCompleteInOrder, createTestDatabase, killHard, MasterApi, numberedLines, numberedTrialsYaml, saveLogsIfFailed, startMasterFrom, stateOf, tmpDir, uniqueSuffix, waitTrialEnded, writeConfig,
  type MasterSetup,
} from '../support/recovery';

describe('e2e recovery: agent SIGKILL and restart', function () {
  this.timeout(120_000);
  const env = testEnv();
  const docker = new Docker({ socketPath: env.dockerSocket });
  const started: DetProcess[] = [];
  const drops: (() => Promise<void>)[] = [];
  let api: MasterApi | undefined;
  let events: ContainerEvents | undefined;
  afterEach(async function () {
    saveLogsIfFailed(this.currentTest, started);
    events?.stop();
    api?.close();
    await Promise.all(started.splice(0).map((p) => p.stop()));
    for (const drop of drops.splice(0)) await drop();
  });

  /** A master with a grace period long enough that the agent's restart always falls within it. */
  async function cluster(store: 'SQLite' | 'PostgreSQL' = 'SQLite'): Promise<{ master: TestMaster; agentId: string; workDir: string; startOurAgent: () => Promise<DetProcess> }> {
    const args: string[] = [];
    if (store === 'PostgreSQL') {
      const db = await createTestDatabase(env.pgUrl, 'det_e2e_recovery_agent');
      drops.push(() => db.drop());
      args.push('--db', db.url);
    }
    const setup: MasterSetup = { dataDir: tmpDir('det-e2e-recovery-agent-'), token: `recovery-agent-${uniqueSuffix()}`, args, env: { DET_AGENT_RECONNECT_GRACE: '30s' }, port: 0 };
    const master = await startMasterFrom(setup);
    started.push(master.proc);
    api = new MasterApi(master.address);
    const agentId = `rec-agent-${uniqueSuffix()}`;
    const workDir = tmpDir('det-e2e-recovery-agent-work-');
    events = await ContainerEvents.start(env.dockerSocket, [agentId]);
    const startOurAgent = async () => {
      const a = await startAgent(master, env.dockerSocket, { id: agentId, args: ['--work-dir', workDir, '--slot-type', 'cpu', '--cpu-slots', '1'] });
      started.push(a);
      return a;
    };
    return { master, agentId, workDir, startOurAgent };
  }

  async function createExperiment(master: TestMaster, yaml: string): Promise<number> {
    const r = await det(['-m', master.address, 'experiment', 'create', writeConfig(yaml)]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return Number(/Created experiment (\d+)/.exec(r.stdout)![1]);
  }

  for (const store of ['SQLite', 'PostgreSQL'] as const) it(`${store}: the restarted agent reattaches the running container: the trial completes with 0 restarts and every log line exactly once, in order`, async () => {
    const { master, startOurAgent } = await cluster(store);
    const agent = await startOurAgent();
    const lines = 40;
    const expId = await createExperiment(master, numberedTrialsYaml({ name: 'agent-restart', image: env.image, lines: String(lines), sleep: 0.25, maxRestarts: 1 }));
    const [trial] = await api!.trials(expId);
    const allocation = `${trial.taskId}.0`;
    await waitFor(async () => numberedLines(await api!.logText(trial.id), allocation).includes(8), { what: 'line 8 of the trial in its log', timeoutMs: 60_000, intervalMs: 200 });

    await killHard(agent);
    // The container outlives its agent.
    const running = await docker.listContainers({ filters: { label: [`${CONTAINER_LABELS.allocation}=${allocation}`] } });
    assert.equal(running.length, 1, 'the trial container keeps running while the agent is down');
    await startOurAgent();

    const ended = await waitTrialEnded(api!, trial.id, 60_000);
    const logs = await det(['-m', master.address, 'trial', 'logs', String(trial.id)]);
    assert.equal(logs.code, 0, logs.stderr);
    const summary = JSON.stringify({ state: ended.state, restarts: ended.restarts, allocation: ended.allocationId, message: ended.message });
    assert.equal(stateOf(ended), 'COMPLETED', summary);
    assert.equal(ended.restarts, 0, `the trial was restarted: ${summary}`);
    assert.equal(ended.allocationId, allocation, summary);
    const containers = events!.containers().filter((c) => c.taskId === trial.taskId);
    assert.equal(containers.length, 1, `one container for the trial, not ${containers.length}: ${JSON.stringify(containers)}`);
    assert.equal(containers[0].starts, 1, 'the container was started once (reattached, not restarted)');
    assertCompleteInOrder(logs.stdout, allocation, lines);
  });

  it('an exit that happened while the agent was down is reported with its real exit code', async () => {
    const { master, startOurAgent } = await cluster();
    const agent = await startOurAgent();
    const lines = 6;
    const expId = await createExperiment(master, numberedTrialsYaml({ name: 'agent-down-exit', image: env.image, lines: String(lines), sleep: 0.5, exitCode: 3, maxRestarts: 0 }));
    const [trial] = await api!.trials(expId);
    const allocation = `${trial.taskId}.0`;
    await waitFor(async () => numberedLines(await api!.logText(trial.id), allocation).includes(2), { what: 'line 2 of the trial in its log', timeoutMs: 60_000, intervalMs: 200 });

    await killHard(agent);
    // The container exits (code 3) while no agent watches it.
    await waitFor(async () => {
      const [c] = await docker.listContainers({ all: true, filters: { label: [`${CONTAINER_LABELS.allocation}=${allocation}`] } });
      return c !== undefined && c.State === 'exited';
    }, { what: `the container of ${allocation} to exit while the agent is down`, timeoutMs: 30_000, intervalMs: 200 });
    assert.ok(events!.of('die').some((e) => e.allocationId === allocation && e.exitCode === 3), 'the container exited with code 3');
    await startOurAgent();

    const ended = await waitTrialEnded(api!, trial.id, 60_000);
    const summary = JSON.stringify({ state: ended.state, restarts: ended.restarts, exitCode: ended.exitCode, message: ended.message });
    assert.equal(stateOf(ended), 'ERROR', summary);
    assert.equal(ended.exitCode, 3, `the real exit code is reported: ${summary}`);
    assert.match(ended.message, /exited with code 3/, summary);
    assert.equal(ended.restarts, 0, summary);
    const logs = await det(['-m', master.address, 'trial', 'logs', String(trial.id)]);
    assertCompleteInOrder(logs.stdout, allocation, lines);
  });
});
