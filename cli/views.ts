// fromProto adapters: the plain objects det prints with --json (camelCase
// fields, states without their enum prefix, hyperparameters as an object).
import { DetError } from '../common/errors';
import type { CheckpointStorageSpec } from '../common/types';
import type { Agent__Output } from '../common/proto-gen/determined/api/v1/Agent';
import type { Checkpoint__Output } from '../common/proto-gen/determined/api/v1/Checkpoint';
import type { CheckpointStorage__Output } from '../common/proto-gen/determined/agent/v1/CheckpointStorage';
import { storageFromProto } from '../common/wire/storage';
import type { Experiment__Output } from '../common/proto-gen/determined/api/v1/Experiment';
import type { GetMasterResponse__Output } from '../common/proto-gen/determined/api/v1/GetMasterResponse';
import type { Slot__Output } from '../common/proto-gen/determined/api/v1/Slot';
import type { Trial__Output } from '../common/proto-gen/determined/api/v1/Trial';
import type { TrialLog__Output } from '../common/proto-gen/determined/api/v1/TrialLog';
import { stateName } from './format';

/** The master as `det master info --json` prints it. */
export interface MasterView {
  version: string;
  masterId: string;
  clusterId: string;
  clusterName: string;
  database: string;
  startedAtMs: number;
  /** now - startedAtMs, by this machine's clock. */
  uptimeMs: number;
  tls: boolean;
  connectedAgents: number;
}

/** A slot; `type` is "CPU" or "CUDA". */
export interface SlotView {
  agentId?: string;
  id: number;
  type: string;
  brand: string;
  uuid: string;
  memoryMib: number;
  enabled: boolean;
  allocationId: string;
  trialId: number;
}

/** An agent; `state` is "CONNECTED" or "DISCONNECTED". */
export interface AgentView {
  id: string;
  hostname: string;
  resourcePool: string;
  state: string;
  enabled: boolean;
  version: string;
  address: string;
  labels: Record<string, string>;
  registeredAtMs: number;
  lastSeenMs: number;
  /** Cloud instance of a provisioned agent ('' for static agents). */
  instanceId: string;
  instanceType: string;
  /** Why it is disabled ('' when enabled). */
  disabledReason: string;
  /** Requeued allocations whose containers still run there (no new work until they are gone). */
  fencedAllocationIds: string[];
  slots: SlotView[];
}

/** An experiment; `state` is e.g. "ACTIVE", `trialStates` keys are plain state names. */
export interface ExperimentView {
  id: number;
  name: string;
  state: string;
  resourcePool: string;
  image: string;
  slotsPerTrial: number;
  priority: number;
  numTrials: number;
  trialStates: Record<string, number>;
  createdAtMs: number;
  endedAtMs: number;
  configYaml: string;
}

/** A trial; `exitCode` is null until a container exited. */
export interface TrialView {
  id: number;
  experimentId: number;
  state: string;
  hparams: unknown;
  restarts: number;
  taskId: string;
  allocationId: string;
  agentId: string;
  slotIds: number[];
  exitCode: number | null;
  message: string;
  createdAtMs: number;
  endedAtMs: number;
}

/** A checkpoint; `state` is "COMPLETED" or "DELETED", `storage` is the experiment's checkpoint_storage. */
export interface CheckpointView {
  uuid: string;
  experimentId: number;
  trialId: number;
  allocationId: string;
  name: string;
  state: string;
  createdAtMs: number;
  reportedAtMs: number;
  totalSize: number;
  fileCount: number;
  metadata: unknown;
  location: string;
  storage: CheckpointStorageSpec;
}

/** One log line. */
export interface LogView {
  trialId: number;
  sequence: number;
  timestampMs: number;
  stream: string;
  text: string;
  allocationId: string;
}

/** GetMasterResponse -> MasterView. */
export function masterView(m: GetMasterResponse__Output, now: number): MasterView {
  return {
    version: m.version,
    masterId: m.masterId,
    clusterId: m.clusterId,
    clusterName: m.clusterName,
    database: m.database,
    startedAtMs: m.startedAtMs,
    uptimeMs: m.startedAtMs > 0 ? Math.max(0, now - m.startedAtMs) : 0,
    tls: m.tls,
    connectedAgents: m.connectedAgents,
  };
}

/** Slot -> SlotView (with its agent when listed across agents). */
export function slotView(s: Slot__Output, agentId?: string): SlotView {
  return {
    ...(agentId !== undefined ? { agentId } : {}),
    id: s.id,
    type: stateName(s.type),
    brand: s.brand,
    uuid: s.uuid,
    memoryMib: s.memoryMib,
    enabled: s.enabled,
    allocationId: s.allocationId,
    trialId: s.trialId,
  };
}

/** Agent -> AgentView. */
export function agentView(a: Agent__Output): AgentView {
  return {
    id: a.id,
    hostname: a.hostname,
    resourcePool: a.resourcePool,
    state: stateName(a.state),
    enabled: a.enabled,
    version: a.version,
    address: a.address,
    labels: { ...a.labels },
    registeredAtMs: a.registeredAtMs,
    lastSeenMs: a.lastSeenMs,
    instanceId: a.instanceId,
    instanceType: a.instanceType,
    disabledReason: a.disabledReason,
    fencedAllocationIds: [...a.fencedAllocationIds],
    slots: a.slots.map((s) => slotView(s)),
  };
}

/** Experiment -> ExperimentView. */
export function experimentView(e: Experiment__Output): ExperimentView {
  const trialStates: Record<string, number> = {};
  for (const [state, n] of Object.entries(e.trialStates ?? {})) trialStates[stateName(state)] = n;
  return {
    id: e.id,
    name: e.name,
    state: stateName(e.state),
    resourcePool: e.resourcePool,
    image: e.image,
    slotsPerTrial: e.slotsPerTrial,
    priority: e.priority,
    numTrials: e.numTrials,
    trialStates,
    createdAtMs: e.createdAtMs,
    endedAtMs: e.endedAtMs,
    configYaml: e.configYaml,
  };
}

/** A JSON object field (hyperparameters, metadata); the raw text when it is not JSON. */
function parseHparams(json: string): unknown {
  if (!json) return {};
  try {
    return JSON.parse(json);
  } catch {
    return json;
  }
}

/** Trial -> TrialView. */
export function trialView(t: Trial__Output): TrialView {
  return {
    id: t.id,
    experimentId: t.experimentId,
    state: stateName(t.state),
    hparams: parseHparams(t.hparamsJson),
    restarts: t.restarts,
    taskId: t.taskId,
    allocationId: t.allocationId,
    agentId: t.agentId,
    slotIds: [...t.slotIds],
    exitCode: t.exitCode ?? null,
    message: t.message,
    createdAtMs: t.createdAtMs,
    endedAtMs: t.endedAtMs,
  };
}

/** TrialLog -> LogView. */
export function logView(trialId: number, l: TrialLog__Output): LogView {
  return { trialId, sequence: l.sequence, timestampMs: l.timestampMs, stream: l.stream, text: l.text, allocationId: l.allocationId };
}

/** The storage a checkpoint names -> its checkpoint_storage config (empty fields left out). */
export function storageSpecFromProto(s: CheckpointStorage__Output | null): CheckpointStorageSpec {
  const spec = storageFromProto(s);
  if (spec) return spec;
  throw new DetError('DET_ERR_INTERNAL', `the master sent an unknown checkpoint storage type ${JSON.stringify(s?.type ?? '')}: is det older than the master?`);
}

/** Checkpoint -> CheckpointView. */
export function checkpointView(c: Checkpoint__Output): CheckpointView {
  return {
    uuid: c.uuid,
    experimentId: c.experimentId,
    trialId: c.trialId,
    allocationId: c.allocationId,
    name: c.name,
    state: stateName(c.state),
    createdAtMs: c.createdAtMs,
    reportedAtMs: c.reportedAtMs,
    totalSize: c.totalSize,
    fileCount: c.fileCount,
    metadata: parseHparams(c.metadataJson),
    location: c.location,
    storage: storageSpecFromProto(c.storage),
  };
}

/** Whether an experiment state (plain name) is final: it ended, or is being (or failed to be) deleted. */
export function isFinalExperimentState(state: string): boolean {
  return state === 'COMPLETED' || state === 'CANCELED' || state === 'ERROR' || state === 'DELETING' || state === 'DELETE_FAILED';
}

/** Whether a trial state (plain name) is final. */
export function isFinalTrialState(state: string): boolean {
  return state === 'COMPLETED' || state === 'CANCELED' || state === 'ERROR';
}
