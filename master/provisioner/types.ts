// Types shared by the provisioner's pure core (decider.ts, launch-errors.ts),
// its providers (aws/, local/) and the service that runs them (service.ts).

/** What a provider says about one of its instances. */
export type InstanceState = 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated';

/** One instance a provider launched (and tagged as this cluster's). */
export interface InstanceInfo {
  id: string;
  pool: string;
  instanceType: string;
  /** Subnet (EC2) or '' (local). */
  subnetId: string;
  state: InstanceState;
  launchedAtMs: number;
  spot: boolean;
}

/** A request to start `count` instances of one offering. */
export interface LaunchRequest {
  pool: string;
  instanceType: string;
  subnetId: string;
  spot: boolean;
  count: number;
  /** Idempotency key: retrying the same request never launches twice. */
  clientToken: string;
}

/** Classification of a failed launch, which decides fallback vs backoff. */
export type LaunchErrorKind = 'capacity' | 'limit' | 'auth' | 'other';

/** A failed launch as the provider reports it (throw this from Provider.launch). */
export class LaunchError extends Error {
  constructor(
    readonly kind: LaunchErrorKind,
    /** Provider error code, e.g. InsufficientInstanceCapacity. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'LaunchError';
  }
}

/** The port every provider implements (Determined's Provider: list, launch, terminate). */
export interface Provider {
  /** "aws" or "local". */
  readonly type: string;
  /** This cluster's instances of a pool that are not terminated. */
  list(pool: string): Promise<InstanceInfo[]>;
  /** Launches instances; throws LaunchError on failure. */
  launch(req: LaunchRequest): Promise<InstanceInfo[]>;
  /** Terminates instances (idempotent). */
  terminate(ids: string[]): Promise<void>;
}

/** One instance type a pool may launch and the slots its agent offers. */
export interface Offering {
  instanceType: string;
  slots: number;
}

/** A pool's provisioning settings (from master.yaml). */
export interface PoolScaling {
  pool: string;
  /** In order of preference; capacity errors fall back along it. */
  instanceTypes: Offering[];
  /** In order of preference; '' for providers without subnets. */
  subnetIds: string[];
  spot: boolean;
  /** Never fall back to on-demand. */
  spotOnly: boolean;
  minInstances: number;
  maxInstances: number;
  maxIdleAgentPeriodMs: number;
  maxAgentStartingPeriodMs: number;
  /** How long a disconnected agent's instance is kept before it is terminated. */
  maxDisconnectedPeriodMs: number;
  /** Moving work off lightly used instances (consolidation.ts); absent = off. */
  consolidation?: ConsolidationSettings;
}

/** `consolidation:` of a pool: move tasks off lightly used instances so that they can be terminated. */
export interface ConsolidationSettings {
  enabled: boolean;
  /**
   * A task is moved only while its latest checkpoint is at most this old, so a move repeats at
   * most this much work; a task that never stored a checkpoint is never moved.
   */
  maxCheckpointAgeMs: number;
  /** An instance is emptied only after its tasks could have moved elsewhere for this long (hysteresis). */
  minUnderusedPeriodMs: number;
}

/** One task running on an instance, as consolidation sees it. */
export interface TaskView {
  id: string;
  slots: number;
  /** When the task's latest checkpoint was stored; null: none yet (never moved). */
  lastCheckpointAtMs: number | null;
  /** Already being stopped (moved, preempted, killed): it still holds its slots. */
  stopping: boolean;
}

/** The decider's view of one tracked instance and its agent. */
export interface InstanceView {
  id: string;
  instanceType: string;
  subnetId: string;
  state: InstanceState;
  launchedAtMs: number;
  /** Agent has registered at least once. */
  agentEverConnected: boolean;
  agentConnected: boolean;
  /** Since when the agent has been disconnected (after having connected); null if connected or never. */
  disconnectedSinceMs: number | null;
  /** Disabled agents get no new work (set before termination, or after a spot notice). */
  agentDisabled: boolean;
  /** Allocations on the agent. NEVER terminate while > 0. */
  runningTasks: number;
  /** Since when the agent has had no work; null while busy or not connected. */
  idleSinceMs: number | null;
  /** Slots the agent offers (or the offering's slots while starting). */
  slots: number;
  /** Slots free on the agent (all slots while starting). */
  freeSlots: number;
  /** The tasks on the agent (consolidation; absent = unknown, never moved). */
  tasks?: TaskView[];
  /** Disabled by consolidation (a cordon): lifted again when its slots are needed. */
  cordoned?: boolean;
  /** Since when every task of the agent could have moved to other agents; null: not now (service-tracked). */
  underusedSinceMs?: number | null;
}

/** A queued task in the pool. */
export interface PendingTask {
  id: string;
  slots: number;
}

/** A failed offering remembered so launches skip it for a while. */
export interface FailedOffering {
  instanceType: string;
  subnetId: string;
  spot: boolean;
  untilMs: number;
}

/** The pool's launch-error memory (persisted so a master restart keeps it). */
export interface LaunchMemory {
  failedOfferings: FailedOffering[];
  /** Consecutive limit/auth/other failures; 0 after a success. */
  consecutiveFailures: number;
  /** No launch before this time; 0 = any time. */
  nextLaunchAtMs: number;
  lastError: { atMs: number; kind: LaunchErrorKind; code: string; message: string; instanceType: string; subnetId: string } | null;
}

/** Everything the decider decides over. */
export interface ScaleSnapshot {
  nowMs: number;
  pool: PoolScaling;
  instances: InstanceView[];
  /** Queued tasks of the pool, oldest first. */
  pending: PendingTask[];
  memory: LaunchMemory;
}

/** What to do now. */
export interface ScalePlan {
  launch: { instanceType: string; subnetId: string; spot: boolean; count: number }[];
  terminate: { id: string; reason: string }[];
  /** Agents (by instance id) to disable before a later termination. */
  disable: { id: string; reason: string }[];
  /** Tasks no offering of the pool can ever fit. */
  unschedulable: { taskId: string; reason: string }[];
  /** Agents to disable so that they empty (consolidation); terminated once they run nothing. */
  cordon: { id: string; reason: string }[];
  /** Cordoned agents to enable again (their slots are needed, or their tasks no longer fit elsewhere). */
  uncordon: { id: string; reason: string }[];
  /** Tasks to stop and requeue (without counting a restart) so they resume elsewhere from their checkpoint. */
  move: { id: string; taskId: string; reason: string }[];
  /** Instances whose tasks could all move elsewhere now (the service tracks since when, for underusedSinceMs). */
  underused: string[];
}
