// Store records and cluster state -> admin API protobuf messages.
import type { Agent } from '../../common/proto-gen/determined/api/v1/Agent';
import type { Checkpoint } from '../../common/proto-gen/determined/api/v1/Checkpoint';
import type { Experiment } from '../../common/proto-gen/determined/api/v1/Experiment';
import type { Slot } from '../../common/proto-gen/determined/api/v1/Slot';
import type { Trial } from '../../common/proto-gen/determined/api/v1/Trial';
import type { TrialLog } from '../../common/proto-gen/determined/api/v1/TrialLog';
import { storageToProto } from '../../common/wire/storage';
import type { AgentEntry } from '../cluster/agents';
import type { CheckpointRecord, ExperimentRecord, TrialLogRecord, TrialRecord } from '../store/store';

/** Experiment record (+ its trials) -> protobuf. */
export function experimentToProto(e: ExperimentRecord, trials: TrialRecord[]): Experiment {
  const counts: Record<string, number> = {};
  for (const t of trials) counts[t.state] = (counts[t.state] ?? 0) + 1;
  const config = e.config as { image?: string; resources?: { slotsPerTrial?: number } };
  return {
    id: e.id, name: e.name, state: `EXPERIMENT_STATE_${e.state}`, configYaml: e.configYaml, createdAtMs: e.createdAtMs, endedAtMs: e.endedAtMs ?? 0,
    numTrials: trials.length, trialStates: counts, resourcePool: e.resourcePool, image: config.image ?? '', slotsPerTrial: config.resources?.slotsPerTrial ?? 0, priority: e.priority,
  };
}

/** Trial record -> protobuf. */
export function trialToProto(t: TrialRecord): Trial {
  return {
    id: t.id, experimentId: t.experimentId, state: `TRIAL_STATE_${t.state}`, hparamsJson: JSON.stringify(t.hparams), restarts: t.restarts, taskId: t.taskId,
    allocationId: t.allocationId ?? '', agentId: t.agentId ?? '', ...(t.exitCode === null ? {} : { exitCode: t.exitCode }), message: t.message,
    createdAtMs: t.createdAtMs, endedAtMs: t.endedAtMs ?? 0, slotIds: t.slotIds,
  };
}

/** An agent's slots -> protobuf, with what uses each. */
export function slotsToProto(a: AgentEntry, trialOf: (allocationId: string) => number | undefined): Slot[] {
  return a.devices.map((d) => {
    const alloc = a.usedSlots.get(d.id) ?? '';
    return { id: d.id, type: d.type === 'cuda' ? 'SLOT_TYPE_CUDA' : 'SLOT_TYPE_CPU', brand: d.brand, uuid: d.uuid, memoryMib: d.memoryMib, enabled: a.enabled && !a.disabledSlots.has(d.id), allocationId: alloc, trialId: alloc ? trialOf(alloc) ?? 0 : 0 };
  });
}

/** Agent entry -> protobuf. */
export function agentToProto(a: AgentEntry, trialOf: (allocationId: string) => number | undefined): Agent {
  return {
    id: a.id, version: a.version, resourcePool: a.pool, state: a.channel ? 'AGENT_STATE_CONNECTED' : 'AGENT_STATE_DISCONNECTED', enabled: a.enabled,
    slots: slotsToProto(a, trialOf), hostname: a.hostname, labels: a.labels, registeredAtMs: a.registeredAtMs, lastSeenMs: a.lastSeenMs, address: a.channel?.address ?? '',
    instanceId: a.instanceId, instanceType: a.instanceType, disabledReason: a.disabledReason, fencedAllocationIds: [...a.fenced].sort(),
  };
}

/** Stored log line -> protobuf. */
export function trialLogToProto(l: TrialLogRecord): TrialLog {
  return { sequence: l.sequence, timestampMs: l.timestampMs, stream: l.stream, text: l.text, allocationId: l.allocationId };
}

/** Checkpoint record -> protobuf. */
export function checkpointToProto(c: CheckpointRecord): Checkpoint {
  return {
    uuid: c.uuid, experimentId: c.experimentId, trialId: c.trialId, allocationId: c.allocationId, name: c.name, state: `CHECKPOINT_STATE_${c.state}`,
    createdAtMs: c.createdAtMs, reportedAtMs: c.reportedAtMs, totalSize: c.totalSize, fileCount: c.fileCount, metadataJson: JSON.stringify(c.metadata),
    location: c.location, storage: storageToProto(c.storage),
  };
}
