// Chaos end to end (issue 6, "Recovery"): det-master is SIGKILLed three times while a 50-trial
// experiment runs on two agents, and started again each time on the same store and port. The
// agents reconnect and report; the master reattaches what runs. Checked: all 50 trials COMPLETED,
// none restarted, exactly one container per trial (counted from the test dockerd's events, so
// containers the agents already removed count too), each started once, and the container ids the
// store holds are those containers. Once on SQLite and once on PostgreSQL. Log lines lost across a
// master kill are printed as a NOTE, not asserted (the issue asks for complete logs across agent restarts).
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { openStore } from '../../master/store';
import { ContainerEvents } from '../support/container-events';
import { testEnv, waitFor } from '../support/env';
import { det, startAgent, type DetProcess, type TestMaster } from '../support/processes';
import {
  createTestDatabase, killHard, MasterApi, numberedLines, numberedTrialsYaml, saveLogsIfFailed, startMasterFrom, stateOf, TERMINAL, tmpDir, uniqueSuffix, writeConfig, type MasterSetup,
} from '../support/recovery';

const TRIALS = 50;
const SLOTS_PER_AGENT = 5;
/** Containers that must have died (trials done) before the 2nd and 3rd kill. */
const KILL_AFTER_DEATHS = [0, 15, 32];

describe('e2e recovery: master SIGKILL x3 during a 50-trial experiment', function () {
  this.timeout(420_000);
  const env = testEnv();
  const started: DetProcess[] = [];
  let api: MasterApi | undefined;
  let events: ContainerEvents | undefined;
  afterEach(async function () {
    saveLogsIfFailed(this.currentTest, started);
    events?.stop();
    api?.close();
    await Promise.all(started.splice(0).map((p) => p.stop()));
  });

  async function chaos(setup: MasterSetup, db: string): Promise<void> {
    const t0 = Date.now();
    const track = (m: TestMaster) => {
      started.push(m.proc);
      return m;
    };
    let master = track(await startMasterFrom(setup));
    api = new MasterApi(master.address);
    const agentIds = ['a', 'b'].map((x) => `rec-master-${uniqueSuffix()}-${x}`);
    events = await ContainerEvents.start(env.dockerSocket, agentIds);
    for (const id of agentIds) started.push(await startAgent(master, env.dockerSocket, { id, args: ['--slot-type', 'cpu', '--cpu-slots', String(SLOTS_PER_AGENT)] }));

    // Trials of 12-18 s (one line a second): tens of seconds each, 5 waves on 10 slots.
    const yaml = numberedTrialsYaml({ name: 'master-chaos', image: env.image, lines: '$((12 + DET_TRIAL_ID % 7))', sleep: 1, trials: TRIALS, maxRestarts: 2 });
    const created = await det(['-m', master.address, 'experiment', 'create', writeConfig(yaml)]);
    assert.equal(created.code, 0, created.stdout + created.stderr);
    const expId = Number(/Created experiment (\d+)/.exec(created.stdout)![1]);

    const runningAtKill: string[][] = [];
    const reattached: number[] = [];
    for (const [k, deaths] of KILL_AFTER_DEATHS.entries()) {
      await waitFor(() => events!.of('die').length >= deaths && events!.running().length >= SLOTS_PER_AGENT, {
        what: `${deaths} trial containers done and ${SLOTS_PER_AGENT} running before kill ${k + 1}`, timeoutMs: 120_000, intervalMs: 100,
      });
      const running = events!.running().map((c) => c.containerId);
      runningAtKill.push(running);
      const diesBefore = events!.of('die').length;
      await killHard(master.proc);
      // While no master runs, at least one trial ends: its exit must reach the next master.
      await waitFor(() => events!.of('die').length > diesBefore, { what: `a trial container to exit while the master is down (kill ${k + 1})`, timeoutMs: 30_000, intervalMs: 100 });
      master = track(await startMasterFrom(setup));
      for (const id of agentIds) {
        await waitFor(async () => String((await api!.agent(id)).state) === 'AGENT_STATE_CONNECTED', { what: `agent ${id} to reconnect after kill ${k + 1}`, timeoutMs: 30_000, intervalMs: 200 });
      }
      // What the restarted master took over from the agents' reports (logged at the end of each registration).
      const registrations = () => [...master.proc.stderr.matchAll(/agent registered agent=(\S+) .*reattached=(\d+)/g)];
      await waitFor(() => agentIds.every((id) => registrations().some((m) => m[1] === id)), { what: `both agents' registrations logged after kill ${k + 1}` });
      reattached.push(registrations().reduce((n, m) => n + Number(m[2]), 0));
    }

    let trials = await api.trials(expId);
    await waitFor(async () => {
      trials = await api!.trials(expId);
      return trials.length === TRIALS && trials.every((t) => TERMINAL.has(stateOf(t)));
    }, { what: `all ${TRIALS} trials to end`, timeoutMs: 240_000, intervalMs: 500 });
    const elapsedS = Math.round((Date.now() - t0) / 1000);

    const notCompleted = trials.filter((t) => stateOf(t) !== 'COMPLETED').map((t) => `${t.id}:${stateOf(t)} (${t.message})`);
    assert.deepEqual(notCompleted, [], 'every trial COMPLETED');
    const restarted = trials.filter((t) => t.restarts !== 0).map((t) => `${t.id}: ${t.restarts} restarts, allocation ${t.allocationId}`);
    assert.deepEqual(restarted, [], 'no trial was restarted');

    const containers = events.containers();
    const perTask = new Map<string, typeof containers>();
    for (const c of containers) perTask.set(c.taskId, [...(perTask.get(c.taskId) ?? []), c]);
    const duplicates = [...perTask].filter(([, cs]) => cs.length !== 1).map(([task, cs]) => `${task}: ${cs.map((c) => c.allocationId).join(',')}`);
    assert.deepEqual(duplicates, [], 'one container per trial');
    assert.equal(perTask.size, TRIALS, 'a container for every trial');
    const restartedContainers = containers.filter((c) => c.creates !== 1 || c.starts !== 1 || c.dies !== 1 || c.exitCodes[0] !== 0);
    assert.deepEqual(restartedContainers, [], 'each container was created, started and exited (0) exactly once');
    // Each restarted master reattached running containers (which, as checked above, were not restarted).
    assert.ok(reattached.every((n) => n > 0), `allocations reattached after each restart: ${reattached.join(', ')}`);

    // Reported, not asserted: the issue asks for complete logs across agent restarts, not master restarts.
    const incompleteLogs: string[] = [];
    for (const t of trials) {
      const got = numberedLines(await api.logText(t.id), `${t.taskId}.0`);
      const n = 12 + (t.id % 7);
      if (got.length !== n || got.some((v, i) => v !== i + 1)) incompleteLogs.push(`trial ${t.id}: ${got.length}/${n} lines [${got.join(',')}]`);
    }
    if (incompleteLogs.length > 0) process.stdout.write(`      NOTE: logs incomplete across master restarts (not asserted): ${incompleteLogs.join('; ')}\n`);

    // The store's container ids are the containers that ran (looked up once the master is stopped).
    await master.proc.stop();
    const store = await openStore(db);
    try {
      const mismatched: string[] = [];
      for (const t of trials) {
        const alloc = await store.getAllocation(t.allocationId);
        const ran = perTask.get(t.taskId)?.[0]?.containerId;
        if (alloc?.containerId !== ran || alloc?.state !== 'TERMINATED') mismatched.push(`${t.taskId}: store ${alloc?.containerId?.slice(0, 12)} ${alloc?.state}, docker ${ran?.slice(0, 12)}`);
        // A start the killed master never got out leaves an allocation that ran nothing; the trial
        // goes on in the next one (restarts untouched, checked above). Any other is a second run.
        for (let i = 0; ; i++) {
          const other = await store.getAllocation(`${t.taskId}.${i}`);
          if (!other) break;
          if (other.id !== t.allocationId && (other.containerId || !/never reached agent/.test(other.message))) mismatched.push(`${t.taskId}: allocation ${other.id} besides ${t.allocationId} (${other.message})`);
        }
      }
      assert.deepEqual(mismatched, [], 'allocations in the store match the containers that ran');
    } finally {
      await store.close();
    }
    process.stdout.write(`      ${TRIALS} trials, 3 master kills (containers running at each: ${runningAtKill.map((r) => r.length).join('/')}; reattached after each restart: ${reattached.join('/')}) in ${elapsedS}s\n`);
  }

  it('SQLite: all 50 trials COMPLETED, 0 restarts, 0 duplicate containers, reattached containers not restarted', async () => {
    const dataDir = tmpDir('det-e2e-recovery-master-');
    await chaos({ dataDir, token: `recovery-master-${uniqueSuffix()}`, args: [], env: { DET_AGENT_RECONNECT_GRACE: '30s' }, port: 0 }, path.join(dataDir, 'determined.db'));
  });

  it('PostgreSQL: all 50 trials COMPLETED, 0 restarts, 0 duplicate containers, reattached containers not restarted', async () => {
    const db = await createTestDatabase(env.pgUrl, 'det_e2e_recovery');
    try {
      await chaos({ dataDir: tmpDir('det-e2e-recovery-master-pg-'), token: `recovery-master-${uniqueSuffix()}`, args: ['--db', db.url], env: { DET_AGENT_RECONNECT_GRACE: '30s' }, port: 0 }, db.url);
    } finally {
      await Promise.all(started.map((p) => p.stop()));
      await db.drop();
    }
  });
});
