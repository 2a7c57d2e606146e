// The det CLI against a fake master (a real gRPC server on 127.0.0.1:0).
import { waitFor as waitForCondition } from '../support/env';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseMasterAddress, resolveConnection } from '../../cli/client';
import { connectionReason, unreachable } from '../../cli/errors';
import { formatDuration, table } from '../../cli/format';
import { main, type CliIO } from '../../cli/main';
import type { TrialLogsRequest__Output } from '../../common/proto-gen/determined/api/v1/TrialLogsRequest';
import { cannedCluster, clusterHandlers, detError, failStream, mock, startFakeMaster, type FakeCluster, type FakeMaster } from '../support/fake-master';

const NOW = 1_700_000_200_000;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs det in-process with captured output and an empty environment. */
async function det(args: string[], io: Partial<CliIO> = {}): Promise<Result> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, {
    stdout: (s) => void (stdout += s),
    stderr: (s) => void (stderr += s),
    env: {},
    now: () => NOW,
    ...io,
  });
  return { code, stdout, stderr };
}

/** Resolves once `predicate` holds (test/support/env.ts waitFor, polling every 5 ms). */
function waitFor(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  return waitForCondition(predicate, { what, timeoutMs, intervalMs: 5 });
}

function logRequests(fake: FakeMaster): TrialLogsRequest__Output[] {
  return fake.calls.filter((c) => c.method === 'TrialLogs').map((c) => c.request as TrialLogsRequest__Output);
}

describe('det CLI', () => {
  let configDir: string | undefined;
  /** Writes an experiment config to a temp file. */
  function writeConfig(text: string): string {
    configDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'det-cli-test-'));
    const file = path.join(configDir, `config-${Math.random().toString(36).slice(2)}.yaml`);
    fs.writeFileSync(file, text);
    return file;
  }
  after(() => {
    if (configDir) fs.rmSync(configDir, { recursive: true, force: true });
  });

  describe('master address', () => {
    it('accepts HOST:PORT, bare hosts, URL prefixes and IPv6', () => {
      assert.deepEqual(parseMasterAddress('10.0.0.5:8080'), { host: '10.0.0.5', port: 8080, tls: false, target: '10.0.0.5:8080' });
      assert.equal(parseMasterAddress('det.example.com').target, 'det.example.com:8080');
      assert.equal(parseMasterAddress('http://127.0.0.1:9090/').target, '127.0.0.1:9090');
      assert.equal(parseMasterAddress('grpc://master:1234').target, 'master:1234');
      assert.deepEqual(parseMasterAddress('https://det.example.com'), { host: 'det.example.com', port: 443, tls: true, target: 'det.example.com:443' });
      assert.equal(parseMasterAddress('grpcs://m:8443').tls, true);
      assert.equal(parseMasterAddress('[::1]:8080').target, '[::1]:8080');
    });

    it('rejects malformed addresses with a usage error', () => {
      for (const bad of ['', 'ftp://x:1', 'host:port', 'host:0', 'host:70000', '::1:8080', ':8080']) {
        assert.throws(() => parseMasterAddress(bad), { name: 'UsageError' }, bad);
      }
    });

    it('prefers flags over DET_* environment over defaults', () => {
      assert.equal(resolveConnection({}, {}).address.target, '127.0.0.1:8080');
      assert.equal(resolveConnection({}, { DET_MASTER: 'http://m:1' }).address.target, 'm:1');
      assert.equal(resolveConnection({ master: 'f:2' }, { DET_MASTER: 'm:1' }).address.target, 'f:2');
      const tls = resolveConnection({}, { DET_MASTER_CERT_FILE: '/ca.pem', DET_MASTER_CERT_NAME: 'master.internal' });
      assert.deepEqual([tls.tls, tls.certFile, tls.certName], [true, '/ca.pem', 'master.internal']);
      assert.equal(resolveConnection({}, {}).tls, false);
    });

    it('extracts the transport reason from grpc-js details', () => {
      assert.equal(
        connectionReason('No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: '),
        'connect ECONNREFUSED 127.0.0.1:1',
      );
      assert.equal(connectionReason('Failed to connect (2026-11-28T20:16:41.992Z)'), 'Failed to connect');
      const tlsReason = connectionReason(
        "No connection established. Last error: Error [ERR_TLS_CERT_ALTNAME_INVALID]: Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list: . Resolution note: ",
      );
      assert.equal(tlsReason, "Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list");
      assert.match(unreachable('m:1', tlsReason, true).message, /^cannot reach the master at m:1 over TLS \(.*\): check --cert-file and --cert-name/);
      assert.match(unreachable('m:1', 'connect ECONNREFUSED 1.2.3.4:1', true).message, /is det-master running\?/);
    });
  });

  describe('format', () => {
    it('aligns columns and right-aligns numbers', () => {
      assert.equal(
        table(['ID', 'Name'], [
          [1, 'a'],
          [10, 'bcd'],
        ]),
        [' ID | Name', '----+------', '  1 | a', ' 10 | bcd'].join('\n'),
      );
    });

    it('formats durations compactly', () => {
      assert.deepEqual([0, 42_000, 185_000, 7_800_000, 90_000_000].map(formatDuration), ['0s', '42s', '3m 5s', '2h 10m', '1d 1h']);
    });
  });

  describe('against a fake master', () => {
    let cluster: FakeCluster;
    let fake: FakeMaster;
    let m: string[];

    beforeEach(async () => {
      cluster = cannedCluster();
      fake = await startFakeMaster(clusterHandlers(cluster));
      m = ['-m', fake.address];
    });
    afterEach(() => fake.close());

    it('master info prints a block and --json', async () => {
      const r = await det([...m, 'master', 'info']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Version: +0\.1\.0$/m);
      assert.match(r.stdout, /^Cluster Name: +test-cluster$/m);
      assert.match(r.stdout, /^Connected Agents: +2$/m);
      assert.match(r.stdout, /^Uptime: +3m 20s$/m);
      const j = await det(['--master', `http://${fake.address}`, 'master', 'info', '--json']);
      assert.equal(j.code, 0, j.stderr);
      assert.deepEqual(JSON.parse(j.stdout), { ...mock.master(), uptimeMs: 200_000 });
    });

    it('reads DET_MASTER when -m is not given', async () => {
      const r = await det(['master', 'info', '--json'], { env: { DET_MASTER: fake.address } });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).masterId, 'master-1');
    });

    it('agent list prints a table with slot summaries and --json', async () => {
      const r = await det([...m, 'a', 'ls']);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.trimEnd().split('\n');
      assert.equal(lines.length, 4);
      assert.match(lines[0], /Agent ID +\| Instance +\| Hostname +\| Resource Pool \| State +\| Enabled \| Slots +\| Used Slots \| Version \| Last Seen/);
      assert.match(lines[2], /agent-gpu +\| - +\| ip-10-0-0-1 \| default +\| CONNECTED +\| true +\| 8 cuda \| +2 \| 0\.1\.0 +\| 1m 40s ago/);
      assert.match(lines[3], /agent-cpu .*\| DISCONNECTED \| false +\| 2 cpu +\| +0 \|/);
      const j = await det([...m, 'agent', 'list', '--json']);
      const agents = JSON.parse(j.stdout);
      assert.equal(agents.length, 2);
      assert.equal(agents[0].state, 'CONNECTED');
      assert.equal(agents[0].slots[0].type, 'CUDA');
      assert.equal(agents[1].slots.length, 2);
    });

    it('agent describe shows the agent and its slots; unknown agents are NOT_FOUND', async () => {
      const r = await det([...m, 'agent', 'describe', 'agent-gpu']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Used Slots: +2$/m);
      assert.match(r.stdout, /agent-gpu \| +1 \| cuda \| NVIDIA H200 \| GPU-1 +\| 140\.4 GiB \| true +\| alloc-7 +\| +7/);
      const nf = await det([...m, 'agent', 'describe', 'nope']);
      assert.deepEqual([nf.code, nf.stderr], [1, 'det: agent nope not found\n']);
    });

    it('agent disable [--drain] and enable change the agent and say what happens to its trials', async () => {
      const r = await det([...m, 'agent', 'disable', 'agent-gpu']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'Disabled agent agent-gpu: its 2 running slots get SIGTERM and are requeued elsewhere\n');
      const d = await det([...m, 'agent', 'describe', 'agent-gpu']);
      assert.match(d.stdout, /^Enabled: +false \(disabled by user\)$/m);
      const drain = await det([...m, 'agent', 'disable', 'agent-gpu', '--drain']);
      assert.match(drain.stdout, /draining: 2 slots in use will finish/);
      assert.deepEqual(fake.calls.filter((c) => c.method === 'DisableAgent').map((c) => c.request), [{ agentId: 'agent-gpu', drain: false }, { agentId: 'agent-gpu', drain: true }]);
      const e = await det([...m, 'agent', 'enable', 'agent-gpu']);
      assert.equal(e.stdout, 'Enabled agent agent-gpu\n');
      const nf = await det([...m, 'agent', 'enable', 'nope']);
      assert.deepEqual([nf.code, nf.stderr], [1, 'det: agent nope not found\n']);
    });

    it('slot disable/enable take AGENT SLOT; a bad slot id is a usage error', async () => {
      const r = await det([...m, 'slot', 'disable', 'agent-gpu', '1', '--drain']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'Disabled slot 1 of agent agent-gpu (draining: alloc-7 will finish)\n');
      const e = await det([...m, 'slot', 'enable', 'agent-gpu', '1']);
      assert.equal(e.stdout, 'Enabled slot 1 of agent agent-gpu\n');
      const bad = await det([...m, 'slot', 'disable', 'agent-gpu', 'x']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /expected a non-negative integer/);
    });

    it('slot list walks every agent, or one with --agent', async () => {
      const all = await det([...m, 'slot', 'list', '--json']);
      assert.equal(all.code, 0, all.stderr);
      const slots = JSON.parse(all.stdout);
      assert.equal(slots.length, 10);
      assert.deepEqual(new Set(slots.map((s: { agentId: string }) => s.agentId)), new Set(['agent-gpu', 'agent-cpu']));
      assert.equal(fake.calls.filter((c) => c.method === 'ListSlots').length, 2);
      const one = await det([...m, 'slot', 'list', '--agent', 'agent-cpu']);
      assert.equal(one.code, 0, one.stderr);
      assert.equal(one.stdout.trimEnd().split('\n').length, 4);
      assert.match(one.stdout, /agent-cpu \| +0 \| cpu +\| Intel Xeon \|/);
    });

    it('resource-pool list (rp ls) prints capacity', async () => {
      const r = await det([...m, 'rp', 'ls']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /default \| the default pool \| +1 \| +8 \| +0 \| +0 \| true/);
    });

    it('experiment list and describe print tables and --json', async () => {
      const ls = await det([...m, 'e', 'ls']);
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /^ +1 \| mnist \| ACTIVE \| +2 \| 1 QUEUED, 1 RUNNING \| default +\| 2023-11-14T22:13:20Z \|$/m);
      const lsj = JSON.parse((await det([...m, 'experiment', 'list', '--json'])).stdout);
      assert.equal(lsj[0].state, 'ACTIVE');
      assert.deepEqual(lsj[0].trialStates, { RUNNING: 1, QUEUED: 1 });

      const d = await det([...m, 'experiment', 'describe', '1']);
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stdout, /^State: +ACTIVE$/m);
      assert.match(d.stdout, /^Trials: +2 \(1 QUEUED, 1 RUNNING\)$/m);
      assert.match(d.stdout, /^ +8 \| QUEUED .*\| \{"lr":0\.01\} +\| waiting for 2 slots in pool default$/m);
      const dj = JSON.parse((await det([...m, 'experiment', 'describe', '1', '--json'])).stdout);
      assert.equal(dj.experiment.id, 1);
      assert.deepEqual(
        dj.trials.map((t: { id: number; state: string; exitCode: number | null; hparams: unknown }) => [t.id, t.state, t.exitCode, t.hparams]),
        [
          [7, 'RUNNING', null, { lr: 0.1 }],
          [8, 'QUEUED', null, { lr: 0.01 }],
        ],
      );
      assert.equal(dj.trials[1].message, 'waiting for 2 slots in pool default');
    });

    it('experiment list-trials (lt), kill and trial describe', async () => {
      cluster.experiments[0].trials[0].exitCode = 3;
      const lt = JSON.parse((await det([...m, 'e', 'lt', '1', '--json'])).stdout);
      assert.deepEqual(lt.map((t: { exitCode: number | null }) => t.exitCode), [3, null]);
      const k = await det([...m, 'e', 'kill', '1']);
      assert.deepEqual([k.code, k.stdout], [0, 'Killed experiment 1 (state: STOPPING_CANCELED)\n']);
      const t = await det([...m, 't', 'describe', '8']);
      assert.equal(t.code, 0, t.stderr);
      assert.match(t.stdout, /^Message: +waiting for 2 slots in pool default$/m);
    });

    it('NOT_FOUND prints the master message on one line and exits 1', async () => {
      const r = await det([...m, 'experiment', 'describe', '99']);
      assert.deepEqual(r, { code: 1, stdout: '', stderr: 'det: experiment 99 not found\n' });
    });

    it('trial logs prints text, honours --tail and --timestamps', async () => {
      const r = await det([...m, 'trial', 'logs', '7']);
      assert.deepEqual([r.code, r.stdout], [0, 'seven 1\nseven 2\nseven 3\nseven 4\nseven 5\n']);
      const tail = await det([...m, 'trial', 'logs', '8', '--tail', '1', '--timestamps']);
      assert.deepEqual([tail.code, tail.stdout], [0, '2023-11-14T22:13:22.000Z [stderr] eight 3\n']);
      assert.deepEqual(logRequests(fake).map((q) => [q.trialId, q.follow, q.tail]), [
        [7, false, 0],
        [8, false, 1],
      ]);
      const nf = await det([...m, 'trial', 'logs', '404']);
      assert.deepEqual([nf.code, nf.stderr], [1, 'det: trial 404 not found\n']);
    });

    it('trial logs --follow prints lines until the master ends the stream', async () => {
      const r = await det([...m, 'trial', 'logs', '-f', '7']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trimEnd().split('\n').length, 5);
      assert.equal(logRequests(fake)[0].follow, true);
    });

    it('trial logs --follow resumes after the last line when the master restarts', async () => {
      const handlers = clusterHandlers(cluster);
      const first = { ...handlers };
      // The first master sends two lines, then goes away mid-stream.
      first.TrialLogs = (call) => {
        call.write({ logs: mock.logs(2, 'seven') });
        setImmediate(() => void fake.close());
      };
      await fake.close();
      fake = await startFakeMaster(first);
      const port = fake.port;
      let out = '';
      let err = '';
      const running = main(['-m', fake.address, 'trial', 'logs', '-f', '7'], { stdout: (s) => void (out += s), stderr: (s) => void (err += s), env: {} });
      await waitFor(() => err.includes('reconnecting'), 'the reconnect notice');
      const firstCalls = fake.calls;
      fake = await startFakeMaster(handlers, port);
      assert.equal(await running, 0, err);
      assert.equal(out, 'seven 1\nseven 2\nseven 3\nseven 4\nseven 5\n');
      // One notice per outage, however many retries it took.
      assert.match(err, new RegExp(`^det: (cannot reach the master at|the master at) 127\\.0\\.0\\.1:${port} [^\\n]*; reconnecting\\.\\.\\.\\n$`));
      assert.deepEqual(
        [...firstCalls, ...fake.calls].filter((c) => c.method === 'TrialLogs').map((c) => (c.request as TrialLogsRequest__Output).afterSequence).slice(-1),
        [2],
      );
    });

    it('INVALID_ARGUMENT prints every line of the master message', async () => {
      const file = writeConfig('name: x\n');
      cluster.create = () => detError('DET_ERR_EXPERIMENT_CONFIG_INVALID', 'invalid experiment config:\n  image: required\n  resources.slots_per_trial: must be >= 0');
      const r = await det([...m, 'experiment', 'create', file]);
      assert.equal(r.code, 1);
      assert.equal(r.stderr, 'det: invalid experiment config:\n  image: required\n  resources.slots_per_trial: must be >= 0\n');
    });

    describe('experiment create', () => {
      /** Restarts the fake master with `handlers` (same cluster data). */
      async function restart(handlers: Parameters<typeof startFakeMaster>[0]): Promise<void> {
        await fake.close();
        fake = await startFakeMaster(handlers);
        m = ['-m', fake.address];
      }

      /** Experiment 5 with trials 11 and 12 whose log streams end when the trials end. */
      async function twoTrialExperiment(finalState: 'COMPLETED' | 'ERROR'): Promise<void> {
        cluster.create = (yaml) => ({
          experiment: mock.experiment({ id: 5, configYaml: yaml, numTrials: 2 }),
          trials: [mock.trial({ id: 11, experimentId: 5 }), mock.trial({ id: 12, experimentId: 5 })],
        });
        cluster.logs.set(11, mock.logs(4, 'eleven'));
        cluster.logs.set(12, mock.logs(3, 'twelve'));
        // The streams end when the trials end; by then the master has settled the experiment.
        const base = clusterHandlers(cluster);
        const handlers = { ...base };
        handlers.TrialLogs = (call) => {
          const e = cluster.experiments.find((x) => x.experiment.id === 5)!;
          call.on('finish', () => {
            const t = e.trials.find((x) => x.id === call.request.trialId)!;
            const failed = finalState === 'ERROR' && t.id === 12;
            t.state = failed ? 'TRIAL_STATE_ERROR' : 'TRIAL_STATE_COMPLETED';
            if (failed) {
              t.exitCode = 1;
              t.message = 'container exited with code 1\nTraceback: boom';
            } else t.exitCode = 0;
            if (e.trials.every((x) => x.state !== 'TRIAL_STATE_QUEUED')) e.experiment.state = `EXPERIMENT_STATE_${finalState}`;
          });
          // Trial 11's stream only starts once trial 12's is open: a CLI that
          // followed the trials one after the other would hang here.
          if (call.request.trialId === 11) {
            waitFor(() => logRequests(fake).some((q) => q.trialId === 12), 'the stream of trial 12').then(
              () => base.TrialLogs(call),
              (err) => failStream(call, { code: 13, details: String(err) }),
            );
          } else base.TrialLogs(call);
        };
        await restart(handlers);
      }

      it('prints "Created experiment N" and the trial ids', async () => {
        await twoTrialExperiment('COMPLETED');
        const r = await det([...m, 'experiment', 'create', writeConfig('name: mnist\n')]);
        assert.deepEqual([r.code, r.stdout], [0, 'Created experiment 5\nTrials: 11, 12\n']);
        const req = fake.calls.find((c) => c.method === 'CreateExperiment')!.request as { configYaml: string };
        assert.equal(req.configYaml, 'name: mnist\n');
      });

      it('--follow streams every trial concurrently with prefixes and exits 0 on COMPLETED', async () => {
        await twoTrialExperiment('COMPLETED');
        const r = await det([...m, 'e', 'create', writeConfig('name: mnist\n'), '--follow']);
        assert.equal(r.code, 0, r.stderr);
        const lines = r.stdout.trimEnd().split('\n');
        assert.deepEqual(lines.slice(0, 2), ['Created experiment 5', 'Trials: 11, 12']);
        assert.deepEqual(lines.filter((l) => l.startsWith('[trial 11] ')), ['[trial 11] eleven 1', '[trial 11] eleven 2', '[trial 11] eleven 3', '[trial 11] eleven 4']);
        assert.deepEqual(lines.filter((l) => l.startsWith('[trial 12] ')), ['[trial 12] twelve 1', '[trial 12] twelve 2', '[trial 12] twelve 3']);
        assert.equal(lines.at(-1), 'Experiment 5 ended: COMPLETED');
        assert.deepEqual(new Set(logRequests(fake).map((q) => `${q.trialId}:${q.follow}`)), new Set(['11:true', '12:true']));
        assert.equal(r.stderr, '');
      });

      it('--follow exits 1 on ERROR after printing trial states and messages', async () => {
        await twoTrialExperiment('ERROR');
        const r = await det([...m, 'e', 'create', '-f', writeConfig('name: mnist\n')]);
        assert.equal(r.code, 1);
        assert.match(r.stdout, /^Experiment 5 ended: ERROR$/m);
        assert.match(r.stdout, /^ +11 \| COMPLETED \|/m);
        assert.match(r.stdout, /^ +12 \| ERROR +\| .*\| +1 \|/m);
        assert.match(r.stdout, /^Trial 12 ERROR: container exited with code 1\nTraceback: boom$/m);
        assert.equal(r.stderr, 'det: experiment 5 ended ERROR, not COMPLETED\n');
      });

      it('Ctrl-C stops following, says the experiment keeps running, and cancels the streams', async () => {
        let cancelled = 0;
        cluster.create = () => ({ experiment: mock.experiment({ id: 6 }), trials: [mock.trial({ id: 21, experimentId: 6 })] });
        const handlers = clusterHandlers(cluster);
        handlers.TrialLogs = (call) => {
          call.on('cancelled', () => cancelled++);
          call.write({ logs: mock.logs(1, 'hello') });
        };
        await restart(handlers);
        const ctrlC = new AbortController();
        let out = '';
        let err = '';
        const running = main([...m, 'e', 'create', '-f', writeConfig('name: x\n')], {
          stdout: (s) => void (out += s),
          stderr: (s) => void (err += s),
          env: {},
          signal: ctrlC.signal,
        });
        await waitFor(() => out.includes('[trial 21] hello 1'), 'the first log line');
        ctrlC.abort();
        assert.equal(await running, 130);
        assert.equal(err, 'det: stopped following; experiment 6 keeps running (det experiment kill 6 to stop it)\n');
        await waitFor(() => cancelled === 1, 'the server to see the stream cancelled');
        assert.equal(fake.calls.some((c) => c.method === 'KillExperiment'), false);
      });

      it('a missing config file is a clear error and nothing is sent', async () => {
        const missing = path.join(os.tmpdir(), `det-cli-missing-${process.pid}.yaml`);
        const r = await det([...m, 'experiment', 'create', missing]);
        assert.deepEqual(r, { code: 1, stdout: '', stderr: `det: cannot read the experiment config ${missing}: no such file\n` });
        assert.equal(fake.calls.length, 0);
      });
    });
  });

  describe('failures', () => {
    it('an unreachable master fails at once with one line (no wait for the connect deadline)', async function () {
      this.timeout(10_000);
      const gone = await startFakeMaster({});
      await gone.close();
      // A connect deadline far beyond the test timeout: only an immediate failure passes.
      const r = await det(['-m', gone.address, 'agent', 'list'], { timeouts: { connectMs: 60_000 } });
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
      assert.match(
        r.stderr,
        new RegExp(`^det: cannot reach the master at 127\\.0\\.0\\.1:${gone.port} \\(connect ECONNREFUSED 127\\.0\\.0\\.1:${gone.port}\\): is det-master running\\? Set -m/--master or DET_MASTER\\.\\n$`),
      );
    });

    it('a master that accepts TCP but never speaks gRPC hits the connect deadline', async () => {
      const sockets: net.Socket[] = [];
      const silent = net.createServer((s) => sockets.push(s));
      await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
      const port = (silent.address() as net.AddressInfo).port;
      try {
        const r = await det(['-m', `127.0.0.1:${port}`, 'master', 'info'], { timeouts: { connectMs: 300, callMs: 300 } });
        assert.equal(r.code, 1);
        assert.equal(r.stderr, `det: cannot reach the master at 127.0.0.1:${port} (no connection within 0.3s): is det-master running? Set -m/--master or DET_MASTER.\n`);
      } finally {
        sockets.forEach((s) => s.destroy());
        silent.close();
      }
    });

    it('usage errors exit 2', async () => {
      for (const args of [['experiment', 'describe'], ['experiment', 'describe', 'abc'], ['bogus'], ['agent', 'list', '--nope'], ['-m', 'ftp://x', 'master', 'info']]) {
        const r = await det(args);
        assert.equal(r.code, 2, `det ${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, /^det: /, args.join(' '));
      }
      const bare = await det([]);
      assert.equal(bare.code, 2);
      assert.match(bare.stderr, /^Usage: det /);
      const help = await det(['--help']);
      assert.equal(help.code, 0);
      assert.match(help.stdout, /experiment\|e/);
    });

    it('an unreadable --cert-file is a clear error', async () => {
      const r = await det(['--cert-file', '/nonexistent/ca.pem', 'master', 'info']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^det: cannot read the master CA certificate \/nonexistent\/ca\.pem \(--cert-file \/ DET_MASTER_CERT_FILE\): ENOENT/);
    });
  });
});
