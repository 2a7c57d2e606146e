// The master's persistence port. Two implementations (sqlite.ts, postgres.ts)
// pass the same suite (test/integration/store.test.ts).
import type { CheckpointStorageSpec, ContainerState, Device, FailureKind, LogStream } from '../../common/types';

/** A trial's lifecycle state (see master/task/trial-machine.ts). */
export type TrialState = 'QUEUED' | 'ASSIGNED' | 'PULLING' | 'STARTING' | 'RUNNING' | 'COMPLETED' | 'ERROR' | 'CANCELED';

/**
 * An experiment's state: derived from its trials (see master/task/experiment-state.ts) while it runs, then
 * DELETING / DELETE_FAILED once a user deletes it (see master/checkpoints/deletion.ts).
 */
export type ExperimentState = 'ACTIVE' | 'STOPPING_CANCELED' | 'COMPLETED' | 'CANCELED' | 'ERROR' | 'DELETING' | 'DELETE_FAILED';

/** Allocation state: ASSIGNED before the agent reports, then the container's state. */
export type AllocationState = 'ASSIGNED' | ContainerState;

/** A stored experiment. */
export interface ExperimentRecord {
  id: number;
  name: string;
  state: ExperimentState;
  /** The YAML exactly as submitted. */
  configYaml: string;
  /** The validated config with defaults filled in (JSON-serialisable). */
  config: unknown;
  resourcePool: string;
  priority: number;
  killRequested: boolean;
  createdAtMs: number;
  endedAtMs: number | null;
}

/** A stored trial. */
export interface TrialRecord {
  id: number;
  experimentId: number;
  state: TrialState;
  hparams: Record<string, unknown>;
  restarts: number;
  /** Task id `${experimentId}.${id}`, e.g. "3.7"; fixed at creation. */
  taskId: string;
  /** Current or last allocation, null before the first assignment. */
  allocationId: string | null;
  agentId: string | null;
  slotIds: number[];
  exitCode: number | null;
  /** Why it failed, or why it is still queued. */
  message: string;
  createdAtMs: number;
  endedAtMs: number | null;
}

/** One attempt of a trial's task on an agent. */
export interface AllocationRecord {
  id: string;
  trialId: number;
  taskId: string;
  agentId: string;
  slotIds: number[];
  state: AllocationState;
  containerId: string;
  createdAtMs: number;
  endedAtMs: number | null;
  exitCode: number | null;
  failureKind: FailureKind | null;
  message: string;
}

/** An agent as last seen by the master. */
export interface AgentRecord {
  id: string;
  resourcePool: string;
  version: string;
  hostname: string;
  devices: Device[];
  labels: Record<string, string>;
  enabled: boolean;
  /** Why it is disabled ('' when enabled). */
  disabledReason: string;
  /** Slots the scheduler must not use. */
  disabledSlots: number[];
  registeredAtMs: number;
  lastSeenMs: number;
}

/** One stored log line of a trial. */
export interface TrialLogRecord {
  trialId: number;
  /** Per-trial sequence, 1, 2, 3... without gaps, assigned by the store. */
  sequence: number;
  allocationId: string;
  timestampMs: number;
  stream: LogStream;
  text: string;
}

/** A checkpoint's state: COMPLETED once reported, DELETED once its objects are gone from storage. */
export type CheckpointState = 'COMPLETED' | 'DELETED';

/** A checkpoint a trial stored and its agent reported (files + manifest under `<uuid>/` in the experiment's storage). */
export interface CheckpointRecord {
  uuid: string;
  experimentId: number;
  trialId: number;
  allocationId: string;
  /** The checkpoint directory name the trial chose. */
  name: string;
  state: CheckpointState;
  /** When the agent saw it complete. */
  createdAtMs: number;
  /** When the master recorded it. */
  reportedAtMs: number;
  totalSize: number;
  fileCount: number;
  /** User metadata (JSON object). */
  metadata: Record<string, unknown>;
  /** The experiment's checkpoint_storage (never credentials). */
  storage: CheckpointStorageSpec;
  /** Display location of its manifest (s3://bucket/prefix/<uuid>/.det-manifest.json or a path). */
  location: string;
}

/** Which checkpoints listCheckpoints returns; absent fields do not filter. */
export interface CheckpointFilter {
  experimentId?: number;
  trialId?: number;
}

/** A new experiment before ids are assigned. */
export type NewExperiment = Omit<ExperimentRecord, 'id'>;
/** A new trial before ids are assigned; taskId is derived by the store as `${experimentId}.${trialId}`. */
export type NewTrial = Omit<TrialRecord, 'id' | 'experimentId' | 'taskId'>;
/** Fields of a trial that change over its life. */
export type TrialPatch = Partial<Pick<TrialRecord, 'state' | 'restarts' | 'allocationId' | 'agentId' | 'slotIds' | 'exitCode' | 'message' | 'endedAtMs'>>;
/** Fields of an experiment that change over its life. */
export type ExperimentPatch = Partial<Pick<ExperimentRecord, 'state' | 'killRequested' | 'endedAtMs'>>;

/** Which backend a Store is. */
export type StoreKind = 'sqlite' | 'postgres';

/** The master's persistence port. All methods may reject with a DetError. */
export interface Store {
  readonly kind: StoreKind;
  /** Cluster id, created on first open and stable afterwards. */
  clusterId(): Promise<string>;

  /** Inserts an experiment and its trials atomically; returns them with ids. */
  createExperiment(exp: NewExperiment, trials: NewTrial[]): Promise<{ experiment: ExperimentRecord; trials: TrialRecord[] }>;
  getExperiment(id: number): Promise<ExperimentRecord | undefined>;
  /** Newest first. */
  listExperiments(): Promise<ExperimentRecord[]>;
  /** Changes only the fields present in `patch`; rejects with DET_ERR_EXPERIMENT_NOT_FOUND for an unknown id. */
  updateExperiment(id: number, patch: ExperimentPatch): Promise<void>;

  getTrial(id: number): Promise<TrialRecord | undefined>;
  /** Trials of one experiment by id. */
  listTrials(experimentId: number): Promise<TrialRecord[]>;
  /** Trials not in a terminal state (COMPLETED, ERROR, CANCELED), by id. */
  listActiveTrials(): Promise<TrialRecord[]>;
  /** Changes only the fields present in `patch`; rejects with DET_ERR_TRIAL_NOT_FOUND for an unknown id. */
  updateTrial(id: number, patch: TrialPatch): Promise<void>;

  /** Inserts or replaces an allocation by id. */
  putAllocation(alloc: AllocationRecord): Promise<void>;
  getAllocation(id: string): Promise<AllocationRecord | undefined>;

  /** Inserts or replaces an agent by id. */
  putAgent(agent: AgentRecord): Promise<void>;
  listAgents(): Promise<AgentRecord[]>;

  /**
   * Appends lines to a trial's log in one transaction, assigning the next sequence numbers; returns the stored
   * records. NUL and lone surrogates in text become U+FFFD. Rejects with DET_ERR_TRIAL_NOT_FOUND for an unknown trial.
   */
  appendTrialLogs(trialId: number, lines: Omit<TrialLogRecord, 'trialId' | 'sequence'>[]): Promise<TrialLogRecord[]>;
  /** Lines with sequence > afterSequence in order, at most `limit`. */
  trialLogs(trialId: number, afterSequence: number, limit: number): Promise<TrialLogRecord[]>;
  /** Highest stored sequence of a trial's log (0 when empty). */
  lastTrialLogSequence(trialId: number): Promise<number>;

  /** The provisioner's persisted state of a pool (JSON text), if any. */
  getProvisionerState(pool: string): Promise<string | undefined>;
  /** Replaces the provisioner's persisted state of a pool. */
  putProvisionerState(pool: string, state: string): Promise<void>;

  /**
   * Records a checkpoint; idempotent on uuid: resolves false (changing nothing) when it is already recorded.
   * Rejects with DET_ERR_TRIAL_NOT_FOUND for an unknown trial and DET_ERR_INVALID_ARGUMENT when the trial
   * belongs to another experiment.
   */
  addCheckpoint(rec: CheckpointRecord): Promise<boolean>;
  getCheckpoint(uuid: string): Promise<CheckpointRecord | undefined>;
  /** Checkpoints matching the filter (all when empty), ordered by createdAtMs, then uuid. */
  listCheckpoints(filter: CheckpointFilter): Promise<CheckpointRecord[]>;
  /** The trial's newest COMPLETED checkpoint (by createdAtMs, then reportedAtMs), if any. */
  latestCheckpoint(trialId: number): Promise<CheckpointRecord | undefined>;
  /** Rejects with DET_ERR_CHECKPOINT_NOT_FOUND for an unknown uuid. */
  setCheckpointState(uuid: string, state: CheckpointState): Promise<void>;
  /**
   * Removes the experiment and all its rows (trials, allocations, trial logs, checkpoints) in one transaction.
   * Rejects with DET_ERR_EXPERIMENT_NOT_FOUND (removing nothing) for an unknown id.
   */
  deleteExperiment(id: number): Promise<void>;

  /** Closes connections; further calls reject with DET_ERR_SHUTTING_DOWN. Calling twice is harmless. */
  close(): Promise<void>;
}
