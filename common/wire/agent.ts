// Adapters between the agent protocol's protobuf messages and the plain types
// in common/types.ts. Only this file knows the protobuf spellings.
import { DetError } from '../errors';
import type { AgentMessage, AgentMessage__Output } from '../proto-gen/determined/agent/v1/AgentMessage';
import type { MasterMessage, MasterMessage__Output } from '../proto-gen/determined/agent/v1/MasterMessage';
import type { Device__Output, Device as DeviceMsg } from '../proto-gen/determined/agent/v1/Device';
import type { ExitInfo__Output, ExitInfo as ExitInfoMsg } from '../proto-gen/determined/agent/v1/ExitInfo';
import type { TaskSpec__Output, TaskSpec as TaskSpecMsg } from '../proto-gen/determined/agent/v1/TaskSpec';
import type { LogLine__Output, LogLine as LogLineMsg } from '../proto-gen/determined/agent/v1/LogLine';
import type { ContainerReport__Output, ContainerReport as ContainerReportMsg } from '../proto-gen/determined/agent/v1/ContainerReport';
import type { CheckpointStorage__Output } from '../proto-gen/determined/agent/v1/CheckpointStorage';
import { storageFromProto, storageToProto } from './storage';
import type { CheckpointCompleted__Output, CheckpointCompleted as CheckpointCompletedMsg } from '../proto-gen/determined/agent/v1/CheckpointCompleted';
import type { DataInput__Output, DataInput as DataInputMsg } from '../proto-gen/determined/agent/v1/DataInput';
import type {
  AgentToMaster, CheckpointReport, CheckpointStorageSpec, ContainerReport, ContainerState, DataInput, Device, DeviceType, ExitInfo, FailureKind, LogLine, LogStream,
  MasterToAgent, PullPolicy, TaskSpec,
} from '../types';

function strip<P extends string>(prefix: P, value: string): string {
  return value.startsWith(prefix) ? value.slice(prefix.length) : value;
}

function protocolError(msg: string): DetError {
  return new DetError('DET_ERR_PROTOCOL', msg);
}

const deviceTypeToProto = (t: DeviceType) => (t === 'cuda' ? 'DEVICE_TYPE_CUDA' : 'DEVICE_TYPE_CPU');
const deviceTypeFromProto = (t: string): DeviceType => (t === 'DEVICE_TYPE_CUDA' ? 'cuda' : 'cpu');

function deviceToProto(d: Device): DeviceMsg {
  return { id: d.id, brand: d.brand, uuid: d.uuid, type: deviceTypeToProto(d.type), memoryMib: d.memoryMib };
}
function deviceFromProto(d: Device__Output): Device {
  return { id: d.id, brand: d.brand, uuid: d.uuid, type: deviceTypeFromProto(d.type), memoryMib: d.memoryMib };
}

function stateFromProto(s: string): ContainerState {
  const v = strip('CONTAINER_STATE_', s);
  if (v === 'PULLING' || v === 'STARTING' || v === 'RUNNING' || v === 'TERMINATED') return v;
  throw protocolError(`unknown container state ${s}`);
}

function exitToProto(e: ExitInfo): ExitInfoMsg {
  return { exitCode: e.exitCode, failureKind: `FAILURE_KIND_${e.failureKind}`, message: e.message };
}
function exitFromProto(e: ExitInfo__Output | null | undefined): ExitInfo | undefined {
  if (!e) return undefined;
  return { exitCode: e.exitCode, failureKind: strip('FAILURE_KIND_', e.failureKind) as FailureKind, message: e.message };
}

function logToProto(l: LogLine): LogLineMsg {
  return { sequence: l.sequence, timestampMs: l.timestampMs, stream: `LOG_STREAM_${l.stream.toUpperCase() as Uppercase<LogStream>}`, text: l.text };
}
function logFromProto(l: LogLine__Output): LogLine {
  return { sequence: l.sequence, timestampMs: l.timestampMs, stream: strip('LOG_STREAM_', l.stream).toLowerCase() as LogStream, text: l.text };
}

function reportToProto(r: ContainerReport): ContainerReportMsg {
  return { allocationId: r.allocationId, containerId: r.containerId, state: `CONTAINER_STATE_${r.state}`, lastLogSequence: r.lastLogSequence, exit: r.exit ? exitToProto(r.exit) : null };
}
function reportFromProto(r: ContainerReport__Output): ContainerReport {
  return { allocationId: r.allocationId, containerId: r.containerId, state: stateFromProto(r.state), lastLogSequence: r.lastLogSequence, exit: exitFromProto(r.exit) };
}

function taskStorageFromProto(c: CheckpointStorage__Output | null | undefined): CheckpointStorageSpec {
  const spec = storageFromProto(c);
  if (spec) return spec;
  throw protocolError(c && c.type !== '' ? `unknown checkpoint storage type ${JSON.stringify(c.type)}` : 'task spec without checkpoint_storage');
}

function dataToProto(d: DataInput): DataInputMsg {
  return { source: d.source, target: d.target, region: d.region ?? '', endpointUrl: d.endpointUrl ?? '', forcePathStyle: d.forcePathStyle ?? false };
}
function dataFromProto(d: DataInput__Output): DataInput {
  return { source: d.source, target: d.target, ...(d.region ? { region: d.region } : {}), ...(d.endpointUrl ? { endpointUrl: d.endpointUrl } : {}), ...(d.forcePathStyle ? { forcePathStyle: true } : {}) };
}

function checkpointToProto(c: CheckpointReport): CheckpointCompletedMsg {
  return { ...c, metadataJson: JSON.stringify(c.metadata) };
}
function checkpointFromProto(c: CheckpointCompleted__Output): CheckpointReport {
  let metadata: unknown;
  try {
    metadata = JSON.parse(c.metadataJson || '{}');
  } catch {
    throw protocolError(`checkpoint ${c.uuid}: metadata_json is not JSON`);
  }
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) throw protocolError(`checkpoint ${c.uuid}: metadata_json is not a JSON object`);
  return {
    allocationId: c.allocationId, uuid: c.uuid, name: c.name, createdAtMs: c.createdAtMs, totalSize: c.totalSize, fileCount: c.fileCount,
    metadata: metadata as Record<string, unknown>, location: c.location,
  };
}

/** TaskSpec -> protobuf. */
export function taskSpecToProto(s: TaskSpec): TaskSpecMsg {
  return { ...s, deviceType: deviceTypeToProto(s.deviceType), checkpointStorage: storageToProto(s.checkpointStorage), data: s.data.map(dataToProto) };
}
/** protobuf -> TaskSpec. */
export function taskSpecFromProto(s: TaskSpec__Output): TaskSpec {
  return {
    taskId: s.taskId, allocationId: s.allocationId, image: s.image, entrypoint: s.entrypoint, command: s.command, env: s.env,
    deviceIds: s.deviceIds, deviceType: deviceTypeFromProto(s.deviceType), memoryLimitBytes: s.memoryLimitBytes,
    pullPolicy: (s.pullPolicy === 'always' ? 'always' : 'missing') as PullPolicy, labels: s.labels, killGracePeriodMs: s.killGracePeriodMs,
    trialId: s.trialId, checkpointStorage: taskStorageFromProto(s.checkpointStorage), data: s.data.map(dataFromProto), latestCheckpointUuid: s.latestCheckpointUuid,
  };
}

/** Agent message -> protobuf. */
export function agentMessageToProto(m: AgentToMaster): AgentMessage {
  switch (m.kind) {
    case 'register':
      return { register: { ...m.register, devices: m.register.devices.map(deviceToProto), containers: m.register.containers.map(reportToProto) } };
    case 'heartbeat':
      return { heartbeat: { sentAtMs: m.sentAtMs } };
    case 'containerState':
      return { containerStateChanged: { allocationId: m.allocationId, containerId: m.containerId, state: `CONTAINER_STATE_${m.state}`, exit: m.exit ? exitToProto(m.exit) : null } };
    case 'logs':
      return { containerLogs: { allocationId: m.allocationId, lines: m.lines.map(logToProto) } };
    case 'pullProgress':
      return { pullProgress: { allocationId: m.allocationId, image: m.image, status: m.status, currentBytes: m.currentBytes, totalBytes: m.totalBytes } };
    case 'spotInterruption':
      return { spotInterruption: { action: m.action, actionTimeMs: m.actionTimeMs } };
    case 'checkpoint':
      return { checkpointCompleted: checkpointToProto(m.checkpoint) };
  }
}

/** protobuf -> agent message; DET_ERR_PROTOCOL when empty or malformed. */
export function agentMessageFromProto(m: AgentMessage__Output): AgentToMaster {
  switch (m.msg) {
    case 'register': {
      const r = m.register!;
      return {
        kind: 'register',
        register: {
          agentId: r.agentId, version: r.version, resourcePool: r.resourcePool, devices: r.devices.map(deviceFromProto), labels: r.labels,
          containers: r.containers.map(reportFromProto), hostname: r.hostname, instanceId: r.instanceId, instanceType: r.instanceType,
        },
      };
    }
    case 'heartbeat':
      return { kind: 'heartbeat', sentAtMs: m.heartbeat!.sentAtMs };
    case 'containerStateChanged': {
      const c = m.containerStateChanged!;
      return { kind: 'containerState', allocationId: c.allocationId, containerId: c.containerId, state: stateFromProto(c.state), exit: exitFromProto(c.exit) };
    }
    case 'containerLogs':
      return { kind: 'logs', allocationId: m.containerLogs!.allocationId, lines: m.containerLogs!.lines.map(logFromProto) };
    case 'pullProgress': {
      const p = m.pullProgress!;
      return { kind: 'pullProgress', allocationId: p.allocationId, image: p.image, status: p.status, currentBytes: p.currentBytes, totalBytes: p.totalBytes };
    }
    case 'spotInterruption':
      return { kind: 'spotInterruption', action: m.spotInterruption!.action, actionTimeMs: m.spotInterruption!.actionTimeMs };
    case 'checkpointCompleted':
      return { kind: 'checkpoint', checkpoint: checkpointFromProto(m.checkpointCompleted!) };
    default:
      throw protocolError('empty agent message');
  }
}

/** Master message -> protobuf. */
export function masterMessageToProto(m: MasterToAgent): MasterMessage {
  switch (m.kind) {
    case 'registered':
      return { registered: m.registered };
    case 'start':
      return { startContainer: { spec: taskSpecToProto(m.spec) } };
    case 'kill':
      return { killContainer: { allocationId: m.allocationId, signal: m.signal, gracePeriodMs: m.gracePeriodMs } };
    case 'drain':
      return { drain: {} };
    case 'shutdown':
      return { shutdown: { reason: m.reason } };
  }
}

/** protobuf -> master message; DET_ERR_PROTOCOL when empty. */
export function masterMessageFromProto(m: MasterMessage__Output): MasterToAgent {
  switch (m.msg) {
    case 'registered':
      return { kind: 'registered', registered: m.registered! };
    case 'startContainer':
      return { kind: 'start', spec: taskSpecFromProto(m.startContainer!.spec!) };
    case 'killContainer':
      return { kind: 'kill', allocationId: m.killContainer!.allocationId, signal: m.killContainer!.signal || 'SIGTERM', gracePeriodMs: m.killContainer!.gracePeriodMs };
    case 'drain':
      return { kind: 'drain' };
    case 'shutdown':
      return { kind: 'shutdown', reason: m.shutdown!.reason };
    default:
      throw protocolError('empty master message');
  }
}
