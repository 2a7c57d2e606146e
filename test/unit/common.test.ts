import { strict as assert } from 'node:assert';
import { backoffDelay, RECONNECT_BACKOFF, type BackoffOptions } from '../../common/backoff';
import { heartbeatTiming, MIN_HEARTBEAT_INTERVAL_MS, HEARTBEATS_PER_SECOND } from '../../master/agents/heartbeat';
import { createLogger, redactSecrets, redactUrl } from '../../common/log';
import { agentMessageFromProto, agentMessageToProto, masterMessageFromProto, masterMessageToProto } from '../../common/wire/agent';
import { packageDefinition } from '../../common/proto/load';
import { DetError } from '../../common/errors';
import type { AgentToMaster, MasterToAgent, TaskSpec } from '../../common/types';
import type { AgentMessage__Output } from '../../common/proto-gen/determined/agent/v1/AgentMessage';
import type { MasterMessage__Output } from '../../common/proto-gen/determined/agent/v1/MasterMessage';
import type { MethodDefinition } from '@grpc/proto-loader';

describe('backoffDelay', () => {
  const opts: BackoffOptions = { baseMs: 100, maxMs: 1000, jitter: 0.5 };
  const noJitter = () => 0;

  it('grows exponentially, then stays at the cap', () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, opts, noJitter)), [100, 200, 400, 800, 1000, 1000, 1000]);
  });

  const edges: { name: string; attempt: number; want: number }[] = [
    { name: 'a huge attempt is capped without overflow', attempt: 10_000, want: 1000 },
    { name: 'a negative attempt counts as the first', attempt: -3, want: 100 },
  ];
  for (const tc of edges) {
    it(tc.name, () => {
      assert.equal(backoffDelay(tc.attempt, opts, noJitter), tc.want);
    });
  }

  const jitter: { name: string; o: BackoffOptions; random: number; want: number }[] = [
    { name: 'random 0 gives the full delay', o: opts, random: 0, want: 800 },
    { name: 'random 1 takes off the jitter share', o: opts, random: 1, want: 400 },
    { name: 'random 0.5 lies between', o: opts, random: 0.5, want: 600 },
    { name: 'full jitter reaches 0', o: { ...opts, jitter: 1 }, random: 1, want: 0 },
    { name: 'no jitter ignores random', o: { ...opts, jitter: 0 }, random: 1, want: 800 },
    { name: 'jitter above 1 is clamped', o: { ...opts, jitter: 3 }, random: 1, want: 0 },
  ];
  for (const tc of jitter) {
    it(`jitter: ${tc.name}`, () => {
      assert.equal(backoffDelay(3, tc.o, () => tc.random), tc.want);
    });
  }

  it('with Math.random stays within [exp*(1-jitter), exp]', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const exp = Math.min(RECONNECT_BACKOFF.maxMs, RECONNECT_BACKOFF.baseMs * 2 ** attempt);
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, RECONNECT_BACKOFF);
        assert.ok(d >= Math.floor(exp * (1 - RECONNECT_BACKOFF.jitter)) && d <= exp, `attempt ${attempt}: ${d}`);
      }
    }
  });
});

describe('heartbeatTiming', () => {
  it('uses the minimum interval for small fleets', () => {
    for (const agents of [0, 1, 10, 250]) assert.equal(heartbeatTiming(agents, () => 0).intervalMs, MIN_HEARTBEAT_INTERVAL_MS, `${agents} agents`);
  });

  it('scales the interval up for large fleets to stay within the heartbeat budget', () => {
    const t = heartbeatTiming(2000, () => 0);
    assert.ok(t.intervalMs > MIN_HEARTBEAT_INTERVAL_MS);
    assert.equal(t.intervalMs, 40_000);
    assert.ok(2000 / (t.intervalMs / 1000) <= HEARTBEATS_PER_SECOND);
    assert.ok(heartbeatTiming(4000, () => 0).intervalMs > t.intervalMs, 'grows with the fleet');
  });

  const ttl: { random: number; factor: number }[] = [
    { random: 0, factor: 3 },
    { random: 0.5, factor: 3.5 },
    { random: 1, factor: 4 },
  ];
  for (const tc of ttl) {
    it(`TTL with random ${tc.random} is ${tc.factor}x the interval`, () => {
      for (const agents of [1, 2000]) {
        const t = heartbeatTiming(agents, () => tc.random);
        assert.equal(t.ttlMs, Math.round(t.intervalMs * tc.factor));
      }
    });
  }

  it('TTL with Math.random lies between 3x and 4x the interval', () => {
    for (let i = 0; i < 100; i++) {
      const t = heartbeatTiming(i * 40);
      assert.ok(t.ttlMs >= 3 * t.intervalMs && t.ttlMs <= 4 * t.intervalMs, JSON.stringify(t));
    }
  });
});

describe('log redaction', () => {
  const urls: { given: string; want: string }[] = [
    { given: 'postgres://u:secret@h/db', want: 'postgres://u:***@h/db' },
    { given: 'connect postgresql://det:p%40ss@db.internal:5432/det?sslmode=require now', want: 'connect postgresql://det:***@db.internal:5432/det?sslmode=require now' },
    { given: 'postgres://h:5432/db', want: 'postgres://h:5432/db' },
    { given: 'https://example.com/a:b', want: 'https://example.com/a:b' },
  ];
  for (const tc of urls) {
    it(`redactUrl(${tc.given})`, () => {
      assert.equal(redactUrl(tc.given), tc.want);
    });
  }

  it('redactSecrets hides secret keys and URL passwords at any depth without mutating', () => {
    const input = {
      password: 'hunter2',
      agent_token: 'tok-1',
      agentToken: 'tok-2',
      nested: { token: 'tok-3', list: [{ secret: 's' }, 'mysql://a:b@c/d'] },
      db: 'postgres://u:secret@h/db',
      port: 8080,
      empty_token: '',
    };
    const copy = JSON.parse(JSON.stringify(input));
    assert.deepEqual(redactSecrets(input), {
      password: '[redacted]',
      agent_token: '[redacted]',
      agentToken: '[redacted]',
      nested: { token: '[redacted]', list: [{ secret: '[redacted]' }, 'mysql://a:***@c/d'] },
      db: 'postgres://u:***@h/db',
      port: 8080,
      empty_token: '',
    });
    assert.deepEqual(input, copy, 'input unchanged');
  });

  describe('createLogger', () => {
    const capture = (level: 'debug' | 'info' = 'debug') => {
      const lines: string[] = [];
      return { lines, log: createLogger('test', { level, sink: (l) => lines.push(l) }) };
    };

    it('never prints token values passed under agent_token or token', () => {
      const { lines, log } = capture();
      log.info('registered', { agent_token: 'tok-AAAA', token: 'tok-BBBB', agent: 'a1' });
      log.child('sub').warn('retry', { token: 'tok-CCCC' });
      log.error('failed', { agentToken: 'tok-DDDD', db: 'postgres://u:pw-EEEE@h/db' });
      const out = lines.join('\n');
      assert.equal(lines.length, 3);
      for (const secret of ['tok-AAAA', 'tok-BBBB', 'tok-CCCC', 'tok-DDDD', 'pw-EEEE']) assert.ok(!out.includes(secret), `${secret} leaked:\n${out}`);
      assert.match(lines[0], /agent_token=\[redacted\] token=\[redacted\] agent=a1$/);
      assert.match(lines[1], /\[test\.sub\] retry token=\[redacted\]$/);
    });

    it('never prints a token nested inside an object field', () => {
      const { lines, log } = capture();
      log.info('config', { config: { agentToken: 'tok-NESTED', port: 8080 } });
      assert.ok(!lines.join('\n').includes('tok-NESTED'), lines.join('\n'));
    });

    it('drops lines below the level', () => {
      const { lines, log } = capture('info');
      log.debug('hidden');
      log.info('shown');
      assert.equal(lines.length, 1);
      assert.match(lines[0], / INFO  \[test\] shown$/);
    });
  });
});

describe('agent wire adapters', () => {
  // Serialize with the real protobuf definitions, as the gRPC stream does.
  const connect = packageDefinition()['determined.agent.v1.AgentService'] as unknown as { Connect: MethodDefinition<unknown, unknown, AgentMessage__Output, MasterMessage__Output> };
  const agentRoundTrip = (m: AgentToMaster) => agentMessageFromProto(connect.Connect.requestDeserialize(connect.Connect.requestSerialize(agentMessageToProto(m)) as Buffer));
  const masterRoundTrip = (m: MasterToAgent) => masterMessageFromProto(connect.Connect.responseDeserialize(connect.Connect.responseSerialize(masterMessageToProto(m)) as Buffer));
  /** Drops undefined properties, which the adapters may add for absent optional fields. */
  const plain = <T>(x: T): T => JSON.parse(JSON.stringify(x));

  const spec: TaskSpec = {
    taskId: 't1',
    allocationId: 'a1',
    image: 'busybox:1.36',
    entrypoint: ['sh', '-c'],
    command: ['echo hi'],
    env: { DET_TRIAL_ID: '1' },
    deviceIds: [0, 3],
    deviceType: 'cuda',
    memoryLimitBytes: 512 * 2 ** 20,
    pullPolicy: 'always',
    labels: { 'ai.det.task-id': 't1' },
    killGracePeriodMs: 10_000,
    trialId: 7,
    checkpointStorage: { type: 's3', bucket: 'ckpts', prefix: 'team-a', endpoint_url: 'http://127.0.0.1:4569', force_path_style: true },
    data: [{ source: 's3://datasets/mnist/', target: '/data/mnist', endpointUrl: 'http://127.0.0.1:4569', forcePathStyle: true }, { source: 's3://b/x', target: '/data/x' }],
    latestCheckpointUuid: '1f0c2a4e-7d7b-4a3e-9a55-2f1f0b3c9d10',
  };

  const agentMessages: { name: string; msg: AgentToMaster }[] = [
    {
      name: 'register',
      msg: {
        kind: 'register',
        register: {
          agentId: 'agent-1',
          version: '0.1.0',
          resourcePool: 'gpu',
          instanceId: 'i-0123456789abcdef0',
          instanceType: 'g5.xlarge',
          devices: [
            { id: 0, brand: 'NVIDIA H200', uuid: 'GPU-1', type: 'cuda', memoryMib: 143_771 },
            { id: 1, brand: 'cpu', uuid: '', type: 'cpu', memoryMib: 0 },
          ],
          labels: { instance: 'p5' },
          containers: [
            { allocationId: 'a1', containerId: 'c1', state: 'RUNNING', lastLogSequence: 42 },
            { allocationId: 'a2', containerId: 'c2', state: 'TERMINATED', lastLogSequence: 7, exit: { exitCode: 137, failureKind: 'KILLED', message: 'SIGKILL' } },
          ],
          hostname: 'ip-10-0-0-1',
        },
      },
    },
    { name: 'heartbeat', msg: { kind: 'heartbeat', sentAtMs: 1_700_000_000_000 } },
    { name: 'containerState without exit', msg: { kind: 'containerState', allocationId: 'a1', containerId: '', state: 'PULLING' } },
    { name: 'containerState exited 0', msg: { kind: 'containerState', allocationId: 'a1', containerId: 'c1', state: 'TERMINATED', exit: { exitCode: 0, failureKind: 'NONE', message: '' } } },
    { name: 'containerState with exit', msg: { kind: 'containerState', allocationId: 'a1', containerId: 'c1', state: 'TERMINATED', exit: { exitCode: -1, failureKind: 'PULL_FAILED', message: 'manifest unknown' } } },
    {
      name: 'logs',
      msg: {
        kind: 'logs',
        allocationId: 'a1',
        lines: [
          { sequence: 1, timestampMs: 10, stream: 'stdout', text: 'out' },
          { sequence: 2, timestampMs: 11, stream: 'stderr', text: 'err' },
          { sequence: 3, timestampMs: 12, stream: 'agent', text: 'pulling' },
        ],
      },
    },
    { name: 'pullProgress', msg: { kind: 'pullProgress', allocationId: 'a1', image: 'busybox:1.36', status: 'Downloading', currentBytes: 1024, totalBytes: 4096 } },
    { name: 'spotInterruption', msg: { kind: 'spotInterruption', action: 'terminate', actionTimeMs: 1_700_000_120_000 } },
    {
      name: 'checkpoint',
      msg: {
        kind: 'checkpoint',
        checkpoint: { allocationId: 'a1', uuid: 'u1', name: 'step-100', createdAtMs: 1_700_000_000_000, totalSize: 5 * 2 ** 30, fileCount: 3, metadata: { step: 100, loss: 0.25 }, location: 's3://ckpts/team-a/u1/.det-manifest.json' },
      },
    },
  ];
  for (const tc of agentMessages) {
    it(`round-trips agent message ${tc.name} through protobuf`, () => {
      assert.deepEqual(plain(agentRoundTrip(tc.msg)), plain(tc.msg));
    });
  }

  const masterMessages: { name: string; msg: MasterToAgent }[] = [
    { name: 'registered', msg: { kind: 'registered', registered: { masterId: 'm1', clusterId: 'c1', heartbeatTtlMs: 20_000, heartbeatIntervalMs: 5000, expectedAllocationIds: ['a1', 'a2'] } } },
    { name: 'start', msg: { kind: 'start', spec } },
    { name: 'start on CPU', msg: { kind: 'start', spec: { ...spec, deviceType: 'cpu', deviceIds: [], pullPolicy: 'missing', memoryLimitBytes: 0 } } },
    { name: 'start with shared_fs and no data', msg: { kind: 'start', spec: { ...spec, checkpointStorage: { type: 'shared_fs', host_path: '/mnt/ckpt' }, data: [], latestCheckpointUuid: '' } } },
    { name: 'kill', msg: { kind: 'kill', allocationId: 'a1', signal: 'SIGINT', gracePeriodMs: 3000 } },
    { name: 'drain', msg: { kind: 'drain' } },
    { name: 'shutdown', msg: { kind: 'shutdown', reason: 'master asked' } },
  ];
  for (const tc of masterMessages) {
    it(`round-trips master message ${tc.name} through protobuf`, () => {
      assert.deepEqual(plain(masterRoundTrip(tc.msg)), plain(tc.msg));
    });
  }

  it('covers every message kind', () => {
    assert.deepEqual(new Set(agentMessages.map((t) => t.msg.kind)), new Set(['register', 'heartbeat', 'containerState', 'logs', 'pullProgress', 'spotInterruption', 'checkpoint']));
    assert.deepEqual(new Set(masterMessages.map((t) => t.msg.kind)), new Set(['registered', 'start', 'kill', 'drain', 'shutdown']));
  });

  it('rejects a checkpoint report whose metadata is not a JSON object', () => {
    const bytes = connect.Connect.requestSerialize({ checkpointCompleted: { allocationId: 'a', uuid: 'u', metadataJson: '[1]' } } as never) as Buffer;
    assert.throws(() => agentMessageFromProto(connect.Connect.requestDeserialize(bytes)), /checkpoint u: metadata_json is not a JSON object/);
  });

  it('rejects a task spec without checkpoint storage', () => {
    const bytes = connect.Connect.responseSerialize({ startContainer: { spec: { taskId: 't', allocationId: 'a' } } } as never) as Buffer;
    assert.throws(() => masterMessageFromProto(connect.Connect.responseDeserialize(bytes)), /task spec without checkpoint_storage/);
  });

  it('kill with an empty signal defaults to SIGTERM', () => {
    assert.equal((masterRoundTrip({ kind: 'kill', allocationId: 'a1', signal: '', gracePeriodMs: 0 }) as { signal: string }).signal, 'SIGTERM');
  });

  const enums: { name: string; proto: () => unknown; want: string }[] = [
    { name: "stream 'stderr' is LOG_STREAM_STDERR", proto: () => (agentMessageToProto({ kind: 'logs', allocationId: 'a', lines: [{ sequence: 1, timestampMs: 0, stream: 'stderr', text: '' }] }).containerLogs!.lines![0].stream), want: 'LOG_STREAM_STDERR' },
    { name: "failure 'PULL_FAILED' is FAILURE_KIND_PULL_FAILED", proto: () => agentMessageToProto({ kind: 'containerState', allocationId: 'a', containerId: '', state: 'TERMINATED', exit: { exitCode: -1, failureKind: 'PULL_FAILED', message: '' } }).containerStateChanged!.exit!.failureKind, want: 'FAILURE_KIND_PULL_FAILED' },
    { name: "device 'cuda' is DEVICE_TYPE_CUDA", proto: () => masterMessageToProto({ kind: 'start', spec }).startContainer!.spec!.deviceType, want: 'DEVICE_TYPE_CUDA' },
    { name: "state 'RUNNING' is CONTAINER_STATE_RUNNING", proto: () => agentMessageToProto({ kind: 'containerState', allocationId: 'a', containerId: 'c', state: 'RUNNING' }).containerStateChanged!.state, want: 'CONTAINER_STATE_RUNNING' },
  ];
  for (const tc of enums) {
    it(`maps enum: ${tc.name}`, () => {
      assert.equal(tc.proto(), tc.want);
    });
  }

  it('maps protobuf enums back to plain values', () => {
    const m = agentMessageFromProto({
      msg: 'containerStateChanged',
      containerStateChanged: { allocationId: 'a', containerId: 'c', state: 'CONTAINER_STATE_TERMINATED', exit: { exitCode: 1, failureKind: 'FAILURE_KIND_PULL_FAILED', message: 'x' } },
    } as AgentMessage__Output);
    assert.deepEqual(plain(m), { kind: 'containerState', allocationId: 'a', containerId: 'c', state: 'TERMINATED', exit: { exitCode: 1, failureKind: 'PULL_FAILED', message: 'x' } });
    const logs = agentMessageFromProto({ msg: 'containerLogs', containerLogs: { allocationId: 'a', lines: [{ sequence: 1, timestampMs: 0, stream: 'LOG_STREAM_STDERR', text: '' }] } } as AgentMessage__Output);
    assert.equal((logs as { lines: { stream: string }[] }).lines[0].stream, 'stderr');
  });

  const protocolErrors: { name: string; fn: () => unknown; want: RegExp }[] = [
    { name: 'an empty agent message', fn: () => agentMessageFromProto(connect.Connect.requestDeserialize(Buffer.alloc(0))), want: /empty agent message/ },
    { name: 'an empty master message', fn: () => masterMessageFromProto(connect.Connect.responseDeserialize(Buffer.alloc(0))), want: /empty master message/ },
    {
      name: 'an unknown container state',
      fn: () => agentMessageFromProto({ msg: 'containerStateChanged', containerStateChanged: { allocationId: 'a', containerId: '', state: 'CONTAINER_STATE_UNSPECIFIED', exit: null } } as AgentMessage__Output),
      want: /unknown container state CONTAINER_STATE_UNSPECIFIED/,
    },
  ];
  for (const tc of protocolErrors) {
    it(`rejects ${tc.name} with DET_ERR_PROTOCOL`, () => {
      assert.throws(tc.fn, (err: unknown) => err instanceof DetError && err.code === 'DET_ERR_PROTOCOL' && tc.want.test(err.message));
    });
  }
});
