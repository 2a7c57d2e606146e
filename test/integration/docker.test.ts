// DockerRuntime against the real dockerd and registry that test/env/setup.sh starts (see
// test/support/env.ts). The test dockerd has no bridge: containers use network mode "host".
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { DetError } from '../../common/errors';
import { CONTAINER_LABELS, type ContainerState, type ExitInfo, type TaskSpec } from '../../common/types';
import { DockerRuntime, containerName } from '../../agent/containers/docker';
import type { ContainerSink, PullProgress, RunContext, RuntimeLogLine } from '../../agent/containers/runtime';
import { testEnv, waitFor, type TestEnv } from '../support/env';

const execFileP = promisify(execFile);
const RUN_ID = `${process.pid}-${randomBytes(3).toString('hex')}`;
// Marks our containers so that test/env/setup.sh removes leftovers of a killed run.
const TEST_LABELS = { 'ai.det.test': 'docker.test' };

/** Records everything a run reports. */
function recorder(opts: { slowLogs?: boolean } = {}) {
  const states: { state: ContainerState; containerId: string; exit?: ExitInfo }[] = [];
  const lines: RuntimeLogLine[] = [];
  const progress: PullProgress[] = [];
  const batchSizes: number[] = [];
  let inLogs = 0;
  let maxConcurrentLogs = 0;
  const sink: ContainerSink = {
    state(state, containerId, exit) {
      states.push({ state, containerId, exit });
    },
    async logs(batch) {
      inLogs++;
      maxConcurrentLogs = Math.max(maxConcurrentLogs, inLogs);
      batchSizes.push(batch.length);
      lines.push(...batch);
      // A slow consumer: a few event-loop turns per batch.
      if (opts.slowLogs) for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
      inLogs--;
    },
    pullProgress(p) {
      progress.push(p);
    },
  };
  const texts = (stream: RuntimeLogLine['stream']) => lines.filter((l) => l.stream === stream).map((l) => l.text);
  return {
    sink,
    states,
    lines,
    progress,
    batchSizes,
    maxConcurrentLogs: () => maxConcurrentLogs,
    stdout: () => texts('stdout'),
    stderr: () => texts('stderr'),
    agent: () => texts('agent'),
    stateNames: () => states.map((s) => s.state),
    has: (state: ContainerState) => states.some((s) => s.state === state),
  };
}

describe('DockerRuntime (real dockerd)', function () {
  this.timeout(60_000);
  let env: TestEnv;
  let runtime: DockerRuntime;
  let docker: Docker;
  let ctx: RunContext;
  let seq = 0;

  /** A spec with a fresh allocation id; the local busybox image; no limits. */
  function spec(overrides: Partial<TaskSpec> = {}): TaskSpec {
    seq++;
    return {
      taskId: `task-${RUN_ID}-${seq}`,
      allocationId: `itest-${RUN_ID}-${seq}`,
      image: env.localImage,
      entrypoint: [],
      command: ['echo', 'hello'],
      env: {},
      deviceIds: [],
      deviceType: 'cpu',
      memoryLimitBytes: 0,
      pullPolicy: 'missing',
      labels: { ...TEST_LABELS },
      killGracePeriodMs: 10_000,
      trialId: 0,
      checkpointStorage: { type: 'shared_fs', host_path: '/tmp/det-test-checkpoints' },
      data: [],
      latestCheckpointUuid: '',
      ...overrides,
    };
  }

  /** `sh -c script` */
  const sh = (script: string): Partial<TaskSpec> => ({ entrypoint: ['/bin/sh', '-c'], command: [script] });

  async function containersOf(allocationId: string): Promise<Docker.ContainerInfo[]> {
    return docker.listContainers({ all: true, filters: { label: [`${CONTAINER_LABELS.allocation}=${allocationId}`] } });
  }

  async function dockerCli(...args: string[]): Promise<string> {
    const { stdout } = await execFileP('docker', ['-H', `unix://${env.dockerSocket}`, ...args], { timeout: 60_000 });
    return stdout.trim();
  }

  before(async () => {
    env = testEnv(); // throws when the test services are not up: never a silent skip
    docker = new Docker({ socketPath: env.dockerSocket });
    runtime = new DockerRuntime({ socketPath: env.dockerSocket });
    ctx = { clusterId: `cluster-${RUN_ID}`, agentId: `agent-${RUN_ID}`, networkMode: 'host', devices: [] };
    await runtime.ping();
  });

  afterEach(async () => {
    // Whatever a failed test left behind.
    const left = await docker.listContainers({ all: true, filters: { label: [`${CONTAINER_LABELS.agent}=${ctx.agentId}`] } });
    await Promise.all(left.map((c) => docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined)));
  });

  describe('ping', () => {
    it('answers on the test socket', async () => {
      await assert.doesNotReject(runtime.ping());
    });

    it('reports DET_ERR_DOCKER_UNREACHABLE for a bad socket path', async () => {
      const bad = new DockerRuntime({ socketPath: '/nonexistent/det-test/docker.sock' });
      await assert.rejects(bad.ping(), (err: unknown) => {
        assert.ok(err instanceof DetError);
        assert.equal(err.code, 'DET_ERR_DOCKER_UNREACHABLE');
        assert.equal(err.retryable, true);
        assert.match(err.message, /^cannot reach Docker at \/nonexistent\/det-test\/docker\.sock: no such socket/);
        assert.match(err.message, /Is dockerd running\?/);
        return true;
      });
    });
  });

  describe('pull', () => {
    it('pulls from the registry when the local copy is gone, reporting progress', async () => {
      // An image with a layer of its own, so the pull really downloads something.
      const image = `${env.registry}/det-test/pull-test:${RUN_ID}`;
      const builder = `det-itest-build-${RUN_ID}`;
      await dockerCli('run', '--name', builder, '--network', 'host', '--label', 'ai.det.test=docker.test', env.localImage,
        'sh', '-c', 'head -c 1500000 /dev/urandom > /blob');
      await dockerCli('commit', builder, image);
      await dockerCli('rm', '-f', builder);
      await dockerCli('push', image);
      await dockerCli('rmi', image);
      await assert.rejects(docker.getImage(image).inspect(), /no such image/i);

      try {
        const rec = recorder();
        const exit = await runtime.run(spec({ image, ...sh('wc -c < /blob') }), ctx, rec.sink);
        assert.deepEqual(exit, { exitCode: 0, failureKind: 'NONE', message: 'exited with code 0' });
        assert.deepEqual(rec.stateNames(), ['PULLING', 'STARTING', 'RUNNING', 'TERMINATED']);
        assert.deepEqual(rec.stdout(), ['1500000']);
        assert.ok(rec.progress.length > 0, 'pull progress was reported');
        assert.ok(rec.progress.every((p) => p.image === image));
        assert.ok(rec.progress.some((p) => /Downloading/.test(p.status)), JSON.stringify(rec.progress.map((p) => p.status)));
        const last = rec.progress[rec.progress.length - 1];
        assert.ok(last.totalBytes > 0 && last.currentBytes === last.totalBytes, JSON.stringify(last));
        assert.equal(rec.agent()[0], `Pulling image ${image}`);
        assert.match(rec.agent()[1], new RegExp(`^Pulled image ${image.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} in \\d+\\.\\d+s$`));
        // The agent's lines come before the container's.
        assert.equal(rec.lines.findIndex((l) => l.stream === 'stdout'), 2);
        await docker.getImage(image).inspect(); // it is local now
      } finally {
        await dockerCli('rmi', '-f', image).catch(() => undefined);
      }
    });

    it("pulls a present image again with policy 'always'", async () => {
      const rec = recorder();
      const exit = await runtime.run(spec({ image: env.image, pullPolicy: 'always' }), ctx, rec.sink);
      assert.equal(exit.failureKind, 'NONE');
      assert.equal(rec.agent().length, 2);
      assert.match(rec.agent()[1], /^Pulled image /);
      assert.ok(rec.progress.some((p) => /up to date|Downloaded newer/i.test(p.status)), JSON.stringify(rec.progress));
    });

    it('a nonexistent image is PULL_FAILED naming the image', async () => {
      const image = `${env.registry}/det-test/does-not-exist-${RUN_ID}:latest`;
      const rec = recorder();
      const s = spec({ image });
      const exit = await runtime.run(s, ctx, rec.sink);
      assert.equal(exit.failureKind, 'PULL_FAILED');
      assert.equal(exit.exitCode, -1);
      assert.match(exit.message, /^pulling image .*does-not-exist-.* failed: /);
      assert.match(exit.message, /not found|manifest unknown/i);
      assert.deepEqual(rec.stateNames(), ['PULLING', 'TERMINATED']);
      assert.deepEqual(rec.states[1].exit, exit);
      assert.equal(rec.agent()[rec.agent().length - 1], exit.message);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('an unreachable registry is PULL_FAILED, without hanging', async () => {
      const image = '127.0.0.1:1/det-test/nothing-here:latest';
      const exit = await runtime.run(spec({ image }), ctx, recorder().sink);
      assert.equal(exit.failureKind, 'PULL_FAILED');
      assert.match(exit.message, /^pulling image 127\.0\.0\.1:1\/det-test\/nothing-here:latest failed: .*connection refused/);
    });
  });

  describe('run', () => {
    it('runs echo: exit 0, states in order, output in the logs, container removed', async () => {
      const rec = recorder();
      const s = spec({ command: ['echo', 'hello world'] });
      const exit = await runtime.run(s, ctx, rec.sink);
      assert.deepEqual(exit, { exitCode: 0, failureKind: 'NONE', message: 'exited with code 0' });
      assert.deepEqual(rec.stateNames(), ['PULLING', 'STARTING', 'RUNNING', 'TERMINATED']);
      const id = rec.states[2].containerId;
      assert.match(id, /^[0-9a-f]{64}$/);
      assert.equal(rec.states[3].containerId, id);
      assert.deepEqual(rec.states[3].exit, exit);
      assert.deepEqual(rec.stdout(), ['hello world']);
      assert.deepEqual(rec.stderr(), []);
      assert.deepEqual(rec.agent(), [], 'the image was present: no pull');
      assert.ok(rec.lines.every((l) => Math.abs(l.timestampMs - Date.now()) < 60_000));
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('keeps stdout and stderr apart, in order', async () => {
      const rec = recorder();
      await runtime.run(spec(sh('echo out1; echo err1 >&2; echo out2; echo err2 >&2')), ctx, rec.sink);
      assert.deepEqual(rec.stdout(), ['out1', 'out2']);
      assert.deepEqual(rec.stderr(), ['err1', 'err2']);
    });

    it('delivers 5000 lines in order, in bounded batches, one sink call at a time', async () => {
      const rec = recorder({ slowLogs: true });
      const exit = await runtime.run(spec({ command: ['seq', '1', '5000'] }), ctx, rec.sink);
      assert.equal(exit.exitCode, 0);
      const out = rec.stdout();
      assert.equal(out.length, 5000);
      out.forEach((text, i) => assert.equal(text, String(i + 1)));
      assert.ok(Math.max(...rec.batchSizes) <= 256, `largest batch ${Math.max(...rec.batchSizes)}`);
      assert.equal(rec.maxConcurrentLogs(), 1);
    });

    it('delivers a last line without a newline, and empty lines', async () => {
      const rec = recorder();
      await runtime.run(spec(sh("printf 'a\\n\\nb\\r\\nno newline'; printf 'partial err' >&2")), ctx, rec.sink);
      assert.deepEqual(rec.stdout(), ['a', '', 'b', 'no newline']);
      assert.deepEqual(rec.stderr(), ['partial err']);
    });

    it('loses no output of processes that exit at once', async () => {
      // One after the other: dockerd 20.10.24 can deadlock when many host-network containers exit
      // at the same moment (moby/moby#46661), which is not what this test is about.
      for (let i = 0; i < 8; i++) {
        const rec = recorder();
        const exit = await runtime.run(spec({ command: ['echo', `instant-${i}`] }), ctx, rec.sink);
        assert.equal(exit.exitCode, 0);
        assert.deepEqual(rec.stdout(), [`instant-${i}`]);
      }
    });

    it('reports a non-zero exit code', async () => {
      const rec = recorder();
      const exit = await runtime.run(spec(sh('echo failing >&2; exit 7')), ctx, rec.sink);
      assert.deepEqual(exit, { exitCode: 7, failureKind: 'EXIT_NONZERO', message: 'exited with code 7' });
      assert.deepEqual(rec.stderr(), ['failing']);
    });

    it('passes the environment', async () => {
      const rec = recorder();
      const env1 = { GREETING: 'hello there', TRICKY: 'a=b c', EMPTY: '' };
      await runtime.run(spec({ env: env1, ...sh('echo "$GREETING|$TRICKY|${EMPTY-unset}"') }), ctx, rec.sink);
      assert.deepEqual(rec.stdout(), ['hello there|a=b c|']);
    });

    it('sets the memory limit, labels and network mode of the running container; listManaged sees it', async () => {
      const rec = recorder();
      const s = spec({
        memoryLimitBytes: 64 * 1024 * 1024,
        labels: { ...TEST_LABELS, 'user.label': 'x' },
        ...sh('echo ready; while true; do sleep 0.1; done'),
      });
      const done = runtime.run(s, ctx, rec.sink);
      await waitFor(() => rec.stdout().includes('ready'), { what: 'the container to print ready' });
      const id = rec.states.find((x) => x.state === 'RUNNING')!.containerId;
      const info = await docker.getContainer(id).inspect();
      assert.equal(info.Name, `/${containerName(s.allocationId)}`);
      assert.equal(info.State.Running, true);
      assert.equal(info.HostConfig.Memory, 64 * 1024 * 1024);
      assert.equal(info.HostConfig.NetworkMode, 'host');
      assert.equal(info.HostConfig.AutoRemove, false);
      assert.deepEqual(info.Config.Labels, {
        'ai.det.test': 'docker.test',
        'user.label': 'x',
        [CONTAINER_LABELS.managed]: 'true',
        [CONTAINER_LABELS.cluster]: ctx.clusterId,
        [CONTAINER_LABELS.agent]: ctx.agentId,
        [CONTAINER_LABELS.task]: s.taskId,
        [CONTAINER_LABELS.allocation]: s.allocationId,
      });

      const managed = await runtime.listManaged(ctx.agentId);
      assert.deepEqual(managed, [
        { allocationId: s.allocationId, taskId: s.taskId, containerId: id, running: true, exitCode: null },
      ]);
      assert.deepEqual(await runtime.listManaged(`other-${ctx.agentId}`), []);

      await runtime.kill(s.allocationId, 'SIGKILL', 0);
      const exit = await done;
      assert.equal(exit.failureKind, 'KILLED');
      assert.equal(exit.exitCode, 137);
      assert.deepEqual(await runtime.listManaged(ctx.agentId), []);
    });

    it('listManaged reports the exit code of a stopped container', async () => {
      // A container left behind (e.g. by an agent that died): created and run directly.
      const s = spec();
      const c = await docker.createContainer({
        name: containerName(s.allocationId),
        Image: env.localImage,
        Cmd: ['sh', '-c', 'exit 5'],
        Labels: {
          ...TEST_LABELS,
          [CONTAINER_LABELS.managed]: 'true',
          [CONTAINER_LABELS.agent]: ctx.agentId,
          [CONTAINER_LABELS.task]: s.taskId,
          [CONTAINER_LABELS.allocation]: s.allocationId,
        },
        HostConfig: { NetworkMode: 'host' },
      });
      await c.start();
      await c.wait();
      assert.deepEqual(await runtime.listManaged(ctx.agentId), [
        { allocationId: s.allocationId, taskId: s.taskId, containerId: c.id, running: false, exitCode: 5 },
      ]);
      // Running the allocation again adopts it and reports how it ended, instead of creating another.
      const rec = recorder();
      const exit = await runtime.run(s, ctx, rec.sink);
      assert.deepEqual(exit, { exitCode: 5, failureKind: 'EXIT_NONZERO', message: 'exited with code 5' });
      assert.equal(rec.states[rec.states.length - 1].containerId, c.id);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('a missing executable is START_FAILED with Docker’s message', async () => {
      const rec = recorder();
      const s = spec({ entrypoint: ['/no/such/binary'], command: [] });
      const exit = await runtime.run(s, ctx, rec.sink);
      assert.equal(exit.failureKind, 'START_FAILED');
      assert.equal(exit.exitCode, -1);
      assert.match(exit.message, /^starting container det-itest-.* failed: .*no such file or directory/);
      assert.deepEqual(rec.stateNames(), ['PULLING', 'STARTING', 'TERMINATED']);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('a bad memory limit is START_FAILED at create', async () => {
      const exit = await runtime.run(spec({ memoryLimitBytes: 1024 }), ctx, recorder().sink);
      assert.equal(exit.failureKind, 'START_FAILED');
      assert.match(exit.message, /^creating container det-itest-.* failed: .*[Mm]inimum memory limit/);
    });

    it('asks Docker for the GPUs by uuid (START_FAILED here: this dockerd has no nvidia runtime)', async () => {
      const gpuCtx: RunContext = {
        ...ctx,
        devices: [
          { id: 0, brand: 'NVIDIA H200', uuid: 'GPU-683f45df-28e7-86c0-004d-046e140e4ce4', type: 'cuda', memoryMib: 143771 },
          { id: 1, brand: 'NVIDIA H200', uuid: 'GPU-00000000-0000-0000-0000-000000000001', type: 'cuda', memoryMib: 143771 },
        ],
      };
      const s = spec({ deviceType: 'cuda', deviceIds: [1] });
      // The container exists from STARTING until the failed start; inspect it then (the request
      // goes out before the runtime's attach and start requests do).
      let inspected: Promise<Docker.ContainerInspectInfo> | undefined;
      const rec = recorder();
      const sink: ContainerSink = {
        ...rec.sink,
        state(state, id, exit) {
          rec.sink.state(state, id, exit);
          if (state === 'STARTING') inspected = docker.getContainer(id).inspect();
        },
      };
      const exit = await runtime.run(s, gpuCtx, sink);
      assert.equal(exit.failureKind, 'START_FAILED');
      assert.match(exit.message, /^starting container det-itest-.* failed: .*nvidia/);
      assert.ok(inspected, 'STARTING was reported');
      const created = await inspected;
      assert.deepEqual(
        created.HostConfig.DeviceRequests?.map((r) => [r.Driver, r.DeviceIDs, r.Capabilities]),
        [['nvidia', ['GPU-00000000-0000-0000-0000-000000000001'], [['gpu']]]],
      );
      const bad = await runtime.run(spec({ deviceType: 'cuda', deviceIds: [7] }), gpuCtx, recorder().sink);
      assert.equal(bad.failureKind, 'START_FAILED');
      assert.match(bad.message, /device 7 is not one of this agent's GPUs \(0, 1\)/);
    });
  });

  describe('kill', () => {
    it('sends TERM; a container that traps it exits with its own code, as KILLED', async () => {
      const rec = recorder();
      const s = spec(sh('trap "echo got TERM; exit 3" TERM; echo ready; while true; do sleep 0.1; done'));
      const done = runtime.run(s, ctx, rec.sink);
      await waitFor(() => rec.stdout().includes('ready'), { what: 'the trap to be installed' });
      await runtime.kill(s.allocationId, 'SIGTERM', 20_000);
      const exit = await done;
      assert.deepEqual(exit, { exitCode: 3, failureKind: 'KILLED', message: 'killed (SIGTERM); exited with code 3' });
      assert.deepEqual(rec.stdout(), ['ready', 'got TERM']);
      assert.equal(rec.states[rec.states.length - 1].state, 'TERMINATED');
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('escalates to SIGKILL after the grace period when TERM is ignored', async () => {
      const rec = recorder();
      const s = spec(sh('trap "" TERM; echo ready; while true; do sleep 0.1; done'));
      const done = runtime.run(s, ctx, rec.sink);
      await waitFor(() => rec.stdout().includes('ready'), { what: 'the container to print ready' });
      const started = Date.now();
      await runtime.kill(s.allocationId, 'SIGTERM', 800);
      assert.ok(Date.now() - started >= 750, 'SIGKILL waited for the grace period');
      const exit = await done;
      assert.deepEqual(exit, {
        exitCode: 137,
        failureKind: 'KILLED',
        message: 'killed (SIGTERM, then SIGKILL after the 800 ms grace period); exited with code 137',
      });
    });

    it('is harmless for an unknown or finished allocation', async () => {
      await runtime.kill(`never-ran-${RUN_ID}`, 'SIGTERM', 100);
      const s = spec();
      await runtime.run(s, ctx, recorder().sink);
      await runtime.kill(s.allocationId, 'SIGTERM', 100);
    });

    it('a kill during the pull ends the run as KILLED without a container', async () => {
      const rec = recorder();
      // Pulling from a port that accepts connections but never answers: the pull hangs until killed.
      const net = await import('node:net');
      const sockets = new Set<import('node:net').Socket>();
      const server = net.createServer((sock) => sockets.add(sock));
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as import('node:net').AddressInfo).port;
      try {
        const s = spec({ image: `127.0.0.1:${port}/det-test/hangs:latest` });
        const done = runtime.run(s, ctx, rec.sink);
        await waitFor(() => rec.agent().length > 0, { what: 'the pull to start' });
        await runtime.kill(s.allocationId, 'SIGTERM', 1000);
        const exit = await done;
        assert.equal(exit.failureKind, 'KILLED');
        assert.equal(exit.exitCode, -1);
        assert.match(exit.message, /while pulling/);
        assert.deepEqual(rec.stateNames(), ['PULLING', 'TERMINATED']);
        assert.deepEqual(await containersOf(s.allocationId), []);
      } finally {
        for (const sock of sockets) sock.destroy();
        server.close();
      }
    });
  });

  describe('one container per allocation', () => {
    it('a second run of a running allocation joins it; another runtime adopts it', async () => {
      const s = spec(sh('trap "exit 4" TERM; echo ready; while true; do sleep 0.1; done'));
      const recA = recorder();
      const first = runtime.run(s, ctx, recA.sink);
      await waitFor(() => recA.stdout().includes('ready'), { what: 'the container to print ready' });

      const again = runtime.run(s, ctx, recorder().sink);
      assert.equal(again, first, 'the same run');

      // A second runtime (like an agent restarted while its container ran) finds the container by name.
      const other = new DockerRuntime({ socketPath: env.dockerSocket });
      const recB = recorder();
      const adopted = other.run(s, ctx, recB.sink);
      await waitFor(() => recB.has('RUNNING'), { what: 'the other runtime to adopt the container' });
      const containers = await containersOf(s.allocationId);
      assert.equal(containers.length, 1);
      assert.equal(recB.states.find((x) => x.state === 'RUNNING')!.containerId, containers[0].Id);
      assert.equal(recA.states.find((x) => x.state === 'RUNNING')!.containerId, containers[0].Id);

      await runtime.kill(s.allocationId, 'SIGTERM', 20_000);
      const [a, b] = await Promise.all([first, adopted]);
      assert.deepEqual(a, { exitCode: 4, failureKind: 'KILLED', message: 'killed (SIGTERM); exited with code 4' });
      assert.equal(b.exitCode, 4);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('adoptOnly: a container that is gone ends the run as AGENT_ERROR; none is created', async () => {
      const rec = recorder();
      const s = spec();
      const exit = await runtime.run(s, ctx, rec.sink, undefined, { adoptOnly: true });
      assert.equal(exit.failureKind, 'AGENT_ERROR');
      assert.match(exit.message, /^container det-itest-.* is gone: it was removed while the agent was not running$/);
      assert.deepEqual(rec.stateNames(), ['PULLING', 'TERMINATED']);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('adoptOnly: a container that exited while no agent watched hands over its whole output, then its real exit code', async () => {
      const s = spec({ pullPolicy: 'always' }); // adoption never pulls, whatever the policy
      const c = await docker.createContainer({
        name: containerName(s.allocationId),
        Image: env.localImage,
        Cmd: ['sh', '-c', 'echo one; echo two >&2; printf three; exit 5'],
        Labels: { ...TEST_LABELS, [CONTAINER_LABELS.managed]: 'true', [CONTAINER_LABELS.agent]: ctx.agentId, [CONTAINER_LABELS.allocation]: s.allocationId },
        HostConfig: { NetworkMode: 'host' },
      });
      await c.start();
      await c.wait();
      const rec = recorder();
      const exit = await runtime.run(s, ctx, rec.sink, undefined, { adoptOnly: true });
      assert.deepEqual(exit, { exitCode: 5, failureKind: 'EXIT_NONZERO', message: 'exited with code 5' });
      assert.deepEqual(rec.stdout(), ['one', 'three']);
      assert.deepEqual(rec.stderr(), ['two']);
      assert.deepEqual(rec.agent(), [], 'no pull');
      assert.deepEqual(rec.stateNames(), ['PULLING', 'RUNNING', 'TERMINATED']);
      assert.equal(rec.states[2].containerId, c.id);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });

    it('a replay by another runtime hands over the same lines in the same order: interleaved streams, a line cut at 64 KiB', async () => {
      const s = spec(sh(
        'i=1; while [ $i -le 150 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; ' +
        "head -c 100000 /dev/zero | tr '\\0' x; echo; echo ready; " +
        'while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo after; exit 0',
      ));
      const recA = recorder();
      const abort = new AbortController();
      const first = runtime.run(s, ctx, recA.sink, abort.signal);
      await waitFor(() => recA.stdout().includes('ready'), { what: 'the container to print ready' });
      abort.abort(new Error('agent SIGKILLed'));
      await assert.rejects(first, /agent SIGKILLed/);
      const seen = recA.lines.map((l) => `${l.stream}:${l.text}`);
      assert.equal(seen.length, 150 * 2 + 2 + 1);
      const long = recA.stdout().filter((t) => t.startsWith('xxx'));
      assert.deepEqual(long.map((t) => t.length), [65_536, 100_000 - 65_536], 'the long line is cut at 64 KiB');

      const other = new DockerRuntime({ socketPath: env.dockerSocket });
      const recB = recorder();
      const adopted = other.run(s, ctx, recB.sink, undefined, { adoptOnly: true });
      await waitFor(() => recB.stdout().includes('ready'), { what: 'the replay to reach ready' });
      assert.deepEqual(recB.lines.map((l) => `${l.stream}:${l.text}`), seen, 'the replay repeats the first run exactly');
      assert.deepEqual(
        recB.lines.map((l) => l.timestampMs),
        recA.lines.map((l) => l.timestampMs),
        "lines carry Docker's timestamps, the same in both runs",
      );
      const [c] = await containersOf(s.allocationId);
      const ex = await docker.getContainer(c.Id).exec({ Cmd: ['sh', '-c', ': > /tmp/stop'] });
      await ex.start({ Detach: true });
      const exit = await adopted;
      assert.equal(exit.failureKind, 'NONE');
      assert.deepEqual(recB.lines.map((l) => `${l.stream}:${l.text}`), [...seen, 'stdout:after']);
    });

    it('an aborted run rejects and leaves the container running; a later run adopts it', async () => {
      const s = spec(sh('echo ready; while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo stopping; exit 6'));
      const recA = recorder();
      const abort = new AbortController();
      const first = runtime.run(s, ctx, recA.sink, abort.signal);
      await waitFor(() => recA.stdout().includes('ready'), { what: 'the container to print ready' });
      abort.abort(new Error('agent shutting down'));
      await assert.rejects(first, /agent shutting down/);
      const [c] = await containersOf(s.allocationId);
      assert.equal(c.State, 'running');

      const recB = recorder();
      const second = runtime.run(s, ctx, recB.sink);
      await waitFor(() => recB.has('RUNNING'), { what: 'the run to adopt the container' });
      assert.deepEqual(await containersOf(s.allocationId).then((l) => l.map((x) => x.Id)), [c.Id]);
      const ex = await docker.getContainer(c.Id).exec({ Cmd: ['sh', '-c', ': > /tmp/stop'] });
      await ex.start({ Detach: true });
      const exit = await second;
      assert.deepEqual(exit, { exitCode: 6, failureKind: 'EXIT_NONZERO', message: 'exited with code 6' });
      // From its first line again: a line's position in the output is stable across adoptions.
      assert.deepEqual(recB.stdout(), ['ready', 'stopping'], 'the whole output, the part after the adoption included');
      assert.deepEqual(recB.stateNames(), ['PULLING', 'STARTING', 'RUNNING', 'TERMINATED']);
      assert.deepEqual(await containersOf(s.allocationId), []);
    });
  });
});
