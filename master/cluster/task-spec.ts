// Builds the TaskSpec an agent runs for one trial attempt. Pure.
import type { CheckpointStorageSpec, DeviceType, TaskSpec } from '../../common/types';
import type { ExperimentConfig } from '../experiment/config';

/** Inputs for one attempt of a trial. */
export interface TaskSpecInput {
  clusterId: string;
  experimentId: number;
  trialId: number;
  taskId: string;
  allocationId: string;
  agentId: string;
  slotIds: number[];
  deviceType: DeviceType;
  hparams: Record<string, unknown>;
  restarts: number;
  config: ExperimentConfig;
  /** The experiment's checkpoint storage (with the master's default filled in). */
  checkpointStorage: CheckpointStorageSpec;
  /** The trial's latest complete checkpoint, '' for none. */
  latestCheckpointUuid: string;
}

/** The container spec, including the DET_* environment a trial sees. */
export function buildTaskSpec(i: TaskSpecInput): TaskSpec {
  const env: Record<string, string> = {
    ...i.config.environmentVariables,
    DET_CLUSTER_ID: i.clusterId,
    DET_EXPERIMENT_ID: String(i.experimentId),
    DET_TRIAL_ID: String(i.trialId),
    DET_TASK_ID: i.taskId,
    DET_ALLOCATION_ID: i.allocationId,
    DET_AGENT_ID: i.agentId,
    DET_SLOT_IDS: JSON.stringify(i.slotIds),
    DET_HPARAMS: JSON.stringify(i.hparams),
    DET_TRIAL_RESTARTS: String(i.restarts),
  };
  return {
    taskId: i.taskId,
    allocationId: i.allocationId,
    image: i.config.image,
    entrypoint: i.config.entrypoint,
    command: i.config.command,
    env,
    deviceIds: i.slotIds,
    deviceType: i.deviceType,
    memoryLimitBytes: i.config.resources.memoryLimitBytes,
    pullPolicy: i.config.pullPolicy,
    labels: { 'ai.det.experiment-id': String(i.experimentId), 'ai.det.trial-id': String(i.trialId) },
    killGracePeriodMs: i.config.killGracePeriodMs,
    trialId: i.trialId,
    checkpointStorage: i.checkpointStorage,
    data: i.config.data,
    latestCheckpointUuid: i.latestCheckpointUuid,
  };
}
