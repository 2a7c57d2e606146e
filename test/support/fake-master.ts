// A fake det-master for tests: a real grpc.Server on 127.0.0.1:0 serving the
// admin API (determined.api.v1.Determined) from the same api.proto, with
// handlers supplied by the test, plus factories for canned data and a canned
// cluster that serves all of it consistently.
import * as grpc from '@grpc/grpc-js';
import { ERROR_CODE_METADATA_KEY, ERRORS, type ErrorCode } from '../../common/errors';
import { apiProto } from '../../common/proto/load';
import type { ProvisionerPool } from '../../common/proto-gen/determined/api/v1/ProvisionerPool';
import type { Agent } from '../../common/proto-gen/determined/api/v1/Agent';
import type { Checkpoint } from '../../common/proto-gen/determined/api/v1/Checkpoint';
import type { DeterminedHandlers } from '../../common/proto-gen/determined/api/v1/Determined';
import type { Experiment } from '../../common/proto-gen/determined/api/v1/Experiment';
import type { GetMasterResponse } from '../../common/proto-gen/determined/api/v1/GetMasterResponse';
import type { ResourcePool } from '../../common/proto-gen/determined/api/v1/ResourcePool';
import type { Slot } from '../../common/proto-gen/determined/api/v1/Slot';
import type { Trial } from '../../common/proto-gen/determined/api/v1/Trial';
import type { TrialLog } from '../../common/proto-gen/determined/api/v1/TrialLog';

/** One received call, for assertions. */
export interface RecordedCall {
  method: string;
  request: unknown;
}

/** A running fake master. */
export interface FakeMaster {
  /** "127.0.0.1:PORT". */
  address: string;
  port: number;
  /** Every call received, in order. */
  calls: RecordedCall[];
  /** Stops the server (cancelling open streams); calling it twice is harmless. */
  close(): Promise<void>;
}

/** Starts a fake master (on `port`, default any free one); methods without a handler answer UNIMPLEMENTED. */
export async function startFakeMaster(handlers: Partial<DeterminedHandlers>, port = 0): Promise<FakeMaster> {
  const server = new grpc.Server();
  const calls: RecordedCall[] = [];
  const service = apiProto().determined.api.v1.Determined.service;
  const impl: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(service)) {
    const handler = (handlers as grpc.UntypedServiceImplementation)[method];
    impl[method] = (call: { request: unknown }, callback?: grpc.sendUnaryData<unknown>) => {
      calls.push({ method, request: call.request });
      if (handler) return (handler as (c: unknown, cb?: unknown) => void)(call, callback);
      const err = { code: grpc.status.UNIMPLEMENTED, details: `fake master: no handler for ${method}` };
      if (callback) callback(err);
      else failStream(call as unknown as grpc.ServerWritableStream<unknown, unknown>, err);
    };
  }
  server.addService(service, impl);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  let closed: Promise<void> | undefined;
  return {
    address: `127.0.0.1:${bound}`,
    port: bound,
    calls,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.forceShutdown();
        resolve();
      })),
  };
}

/** A gRPC error as the master sends it: status from the registry, code in the trailer. */
export function detError(code: ErrorCode, message: string): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  metadata.set(ERROR_CODE_METADATA_KEY, code);
  return { code: ERRORS[code].grpc, details: message, metadata };
}

/** Ends a server stream with an error status (grpc-js sends a stream's status on 'error'). */
export function failStream(call: grpc.ServerWritableStream<unknown, unknown>, status: Partial<grpc.StatusObject>): void {
  call.emit('error', status);
}

/** Factories for canned messages; pass overrides for what a test cares about. */
export const mock = {
  master(o: Partial<GetMasterResponse> = {}): GetMasterResponse {
    return {
      version: '0.1.0',
      masterId: 'master-1',
      clusterId: 'cluster-abc',
      clusterName: 'test-cluster',
      database: 'sqlite',
      startedAtMs: 1_700_000_000_000,
      tls: false,
      connectedAgents: 2,
      ...o,
    };
  },
  slot(o: Partial<Slot> = {}): Slot {
    return { id: 0, type: 'SLOT_TYPE_CUDA', brand: 'NVIDIA H200', uuid: 'GPU-0000', memoryMib: 143_771, enabled: true, allocationId: '', trialId: 0, ...o };
  },
  agent(o: Partial<Agent> = {}): Agent {
    return {
      id: 'agent-1',
      version: '0.1.0',
      resourcePool: 'default',
      state: 'AGENT_STATE_CONNECTED',
      enabled: true,
      slots: [],
      hostname: 'ip-10-0-0-1',
      labels: {},
      registeredAtMs: 1_700_000_000_000,
      lastSeenMs: 1_700_000_100_000,
      address: '10.0.0.1:40000',
      ...o,
    };
  },
  experiment(o: Partial<Experiment> = {}): Experiment {
    return {
      id: 1,
      name: 'mnist',
      state: 'EXPERIMENT_STATE_ACTIVE',
      configYaml: 'name: mnist\n',
      createdAtMs: 1_700_000_000_000,
      endedAtMs: 0,
      numTrials: 1,
      trialStates: {},
      resourcePool: 'default',
      image: 'python:3.12-slim',
      slotsPerTrial: 1,
      priority: 42,
      ...o,
    };
  },
  trial(o: Partial<Trial> = {}): Trial {
    return {
      id: 1,
      experimentId: 1,
      state: 'TRIAL_STATE_QUEUED',
      hparamsJson: '{"lr":0.1}',
      restarts: 0,
      taskId: 'exp-1.trial-1',
      allocationId: '',
      agentId: '',
      message: '',
      createdAtMs: 1_700_000_000_000,
      endedAtMs: 0,
      slotIds: [],
      ...o,
    };
  },
  checkpoint(o: Partial<Checkpoint> = {}): Checkpoint {
    return {
      uuid: 'ckpt-0001',
      experimentId: 1,
      trialId: 7,
      allocationId: 'alloc-7',
      name: 'step-100',
      state: 'CHECKPOINT_STATE_COMPLETED',
      createdAtMs: 1_700_000_050_000,
      reportedAtMs: 1_700_000_051_000,
      totalSize: 1536,
      fileCount: 2,
      metadataJson: '{"step":100}',
      location: 's3://ckpts/exp/ckpt-0001/.det-manifest.json',
      storage: { type: 's3', bucket: 'ckpts', prefix: 'exp', region: '', endpointUrl: '', forcePathStyle: false },
      ...o,
    };
  },
  pool(o: Partial<ResourcePool> = {}): ResourcePool {
    return { name: 'default', description: 'the default pool', numAgents: 1, slotsTotal: 8, slotsUsed: 0, queuedTasks: 0, isDefault: true, ...o };
  },
  /** Lines 1..n of a trial: "TEXT-PREFIX i". */
  logs(n: number, prefix = 'line', stream = 'stdout'): TrialLog[] {
    return Array.from({ length: n }, (_, i) => ({ sequence: i + 1, timestampMs: 1_700_000_000_000 + i * 1000, stream, text: `${prefix} ${i + 1}`, allocationId: 'alloc-1' }));
  },
};

/** What a canned cluster serves; tests mutate it freely between calls. */
export interface FakeCluster {
  master: GetMasterResponse;
  agents: Agent[];
  pools: ResourcePool[];
  experiments: { experiment: Experiment; trials: Trial[] }[];
  /** Stored lines per trial id. */
  logs: Map<number, TrialLog[]>;
  /** Lines per streamed message (default 2). */
  logBatchSize?: number;
  /** Provisioned pools for GetProvisionerStatus (default none). */
  provisioner?: ProvisionerPool[];
  /** Checkpoints for ListCheckpoints / GetCheckpoint (default none); DeleteExperiment removes an experiment's. */
  checkpoints?: Checkpoint[];
  /** Answer to CreateExperiment (default: INVALID_ARGUMENT). */
  create?: (configYaml: string) => { experiment: Experiment; trials: Trial[] } | Partial<grpc.StatusObject>;
}

function isStatus(x: unknown): x is Partial<grpc.StatusObject> {
  return typeof x === 'object' && x !== null && 'code' in x;
}

/**
 * Handlers serving `cluster`: NOT_FOUND (with the registered trailer code) for
 * unknown ids, and a TrialLogs stream that honours after_sequence and tail and
 * sends the lines in batches, yielding between them so streams interleave, then ends.
 */
export function clusterHandlers(cluster: FakeCluster): DeterminedHandlers {
  const findExperiment = (id: number) => cluster.experiments.find((e) => e.experiment.id === id);
  const findTrial = (id: number) => cluster.experiments.flatMap((e) => e.trials).find((t) => t.id === id);
  const findAgent = (id: string) => cluster.agents.find((a) => a.id === id);
  const setSlot = (agentId: string, slotId: number, enabled: boolean, cb: (err: Partial<grpc.StatusObject> | null, res?: { slot: Slot }) => void) => {
    const slot = findAgent(agentId)?.slots?.find((s) => s.id === slotId);
    if (!slot) return cb(detError('DET_ERR_INVALID_ARGUMENT', `agent ${agentId} has no slot ${slotId}`));
    slot.enabled = enabled;
    cb(null, { slot });
  };
  return {
    GetMaster: (_call, cb) => cb(null, cluster.master),
    ListAgents: (call, cb) => cb(null, { agents: cluster.agents.filter((a) => !call.request.resourcePool || a.resourcePool === call.request.resourcePool) }),
    GetAgent: (call, cb) => {
      const agent = findAgent(call.request.agentId);
      if (!agent) return cb(detError('DET_ERR_AGENT_NOT_FOUND', `agent ${call.request.agentId} not found`));
      cb(null, { agent });
    },
    ListSlots: (call, cb) => {
      const agent = findAgent(call.request.agentId);
      if (!agent) return cb(detError('DET_ERR_AGENT_NOT_FOUND', `agent ${call.request.agentId} not found`));
      cb(null, { slots: agent.slots ?? [] });
    },
    DisableAgent: (call, cb) => {
      const agent = findAgent(call.request.agentId);
      if (!agent) return cb(detError('DET_ERR_AGENT_NOT_FOUND', `agent ${call.request.agentId} not found`));
      Object.assign(agent, { enabled: false, disabledReason: `disabled by user${call.request.drain ? ' (draining)' : ''}` });
      cb(null, { agent });
    },
    EnableAgent: (call, cb) => {
      const agent = findAgent(call.request.agentId);
      if (!agent) return cb(detError('DET_ERR_AGENT_NOT_FOUND', `agent ${call.request.agentId} not found`));
      Object.assign(agent, { enabled: true, disabledReason: '' });
      cb(null, { agent });
    },
    DisableSlot: (call, cb) => setSlot(call.request.agentId, call.request.slotId, false, cb),
    EnableSlot: (call, cb) => setSlot(call.request.agentId, call.request.slotId, true, cb),
    ListResourcePools: (_call, cb) => cb(null, { resourcePools: cluster.pools }),
    GetProvisionerStatus: (call, cb) => cb(null, { pools: (cluster.provisioner ?? []).filter((p) => !call.request.resourcePool || p.resourcePool === call.request.resourcePool) }),
    CreateExperiment: (call, cb) => {
      const answer = cluster.create?.(call.request.configYaml) ?? detError('DET_ERR_EXPERIMENT_CONFIG_INVALID', 'fake master: no create answer set');
      if (isStatus(answer)) return cb(answer);
      cluster.experiments.unshift(answer);
      cb(null, answer);
    },
    ListExperiments: (_call, cb) => cb(null, { experiments: cluster.experiments.map((e) => e.experiment) }),
    GetExperiment: (call, cb) => {
      const e = findExperiment(call.request.experimentId);
      if (!e) return cb(detError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${call.request.experimentId} not found`));
      cb(null, e);
    },
    KillExperiment: (call, cb) => {
      const e = findExperiment(call.request.experimentId);
      if (!e) return cb(detError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${call.request.experimentId} not found`));
      e.experiment.state = 'EXPERIMENT_STATE_STOPPING_CANCELED';
      cb(null, { experiment: e.experiment });
    },
    ListTrials: (call, cb) => {
      const e = findExperiment(call.request.experimentId);
      if (!e) return cb(detError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${call.request.experimentId} not found`));
      cb(null, { trials: e.trials });
    },
    GetTrial: (call, cb) => {
      const trial = findTrial(call.request.trialId);
      if (!trial) return cb(detError('DET_ERR_TRIAL_NOT_FOUND', `trial ${call.request.trialId} not found`));
      cb(null, { trial });
    },
    ListCheckpoints: (call, cb) => {
      const { experimentId, trialId } = call.request;
      if (experimentId > 0 && !findExperiment(experimentId)) return cb(detError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${experimentId} not found`));
      if (trialId > 0 && !findTrial(trialId)) return cb(detError('DET_ERR_TRIAL_NOT_FOUND', `trial ${trialId} not found`));
      const checkpoints = (cluster.checkpoints ?? []).filter((c) => (!experimentId || c.experimentId === experimentId) && (!trialId || c.trialId === trialId));
      cb(null, { checkpoints });
    },
    GetCheckpoint: (call, cb) => {
      const checkpoint = (cluster.checkpoints ?? []).find((c) => c.uuid === call.request.uuid);
      if (!checkpoint) return cb(detError('DET_ERR_CHECKPOINT_NOT_FOUND', `checkpoint ${call.request.uuid} not found`));
      cb(null, { checkpoint });
    },
    DeleteExperiment: (call, cb) => {
      const id = call.request.experimentId;
      const e = findExperiment(id);
      if (!e) return cb(detError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${id} not found`));
      const state = String(e.experiment.state).replace('EXPERIMENT_STATE_', '');
      if (state === 'ACTIVE') return cb(detError('DET_ERR_EXPERIMENT_NOT_ENDED', `experiment ${id} is ACTIVE; kill it first (det experiment kill ${id})`));
      const mine = (cluster.checkpoints ?? []).filter((c) => c.experimentId === id);
      cluster.checkpoints = (cluster.checkpoints ?? []).filter((c) => c.experimentId !== id);
      cluster.experiments = cluster.experiments.filter((x) => x !== e);
      cb(null, { checkpointsDeleted: mine.length, objectsDeleted: mine.reduce((n, c) => n + Number(c.fileCount ?? 0) + 1, 0) });
    },
    TrialLogs: (call) => {
      const { trialId, afterSequence, tail } = call.request;
      if (!findTrial(trialId)) {
        return failStream(call, detError('DET_ERR_TRIAL_NOT_FOUND', `trial ${trialId} not found`));
      }
      let lines = (cluster.logs.get(trialId) ?? []).filter((l) => Number(l.sequence) > afterSequence);
      if (tail > 0) lines = lines.slice(-tail);
      const size = cluster.logBatchSize ?? 2;
      let i = 0;
      let cancelled = false;
      call.on('cancelled', () => (cancelled = true));
      const next = () => {
        if (cancelled) return;
        if (i >= lines.length) return call.end();
        call.write({ logs: lines.slice(i, i + size) });
        i += size;
        setTimeout(next, 1);
      };
      next();
    },
  };
}

/** A small cluster: two agents (8 GPUs, 2 CPUs), one pool, one experiment with two trials. */
export function cannedCluster(): FakeCluster {
  return {
    master: mock.master(),
    agents: [
      mock.agent({
        id: 'agent-gpu',
        hostname: 'ip-10-0-0-1',
        slots: Array.from({ length: 8 }, (_, i) => mock.slot({ id: i, uuid: `GPU-${i}`, ...(i < 2 ? { allocationId: 'alloc-7', trialId: 7 } : {}) })),
      }),
      mock.agent({
        id: 'agent-cpu',
        hostname: 'ip-10-0-0-2',
        state: 'AGENT_STATE_DISCONNECTED',
        enabled: false,
        slots: [0, 1].map((id) => mock.slot({ id, type: 'SLOT_TYPE_CPU', brand: 'Intel Xeon', uuid: '', memoryMib: 0 })),
      }),
    ],
    pools: [mock.pool()],
    experiments: [
      {
        experiment: mock.experiment({ id: 1, numTrials: 2, trialStates: { RUNNING: 1, QUEUED: 1 } }),
        trials: [
          mock.trial({ id: 7, state: 'TRIAL_STATE_RUNNING', agentId: 'agent-gpu', allocationId: 'alloc-7', slotIds: [0, 1] }),
          mock.trial({ id: 8, state: 'TRIAL_STATE_QUEUED', hparamsJson: '{"lr":0.01}', message: 'waiting for 2 slots in pool default' }),
        ],
      },
    ],
    logs: new Map([
      [7, mock.logs(5, 'seven')],
      [8, mock.logs(3, 'eight', 'stderr')],
    ]),
  };
}
