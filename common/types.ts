// Plain TypeScript types for what crosses the master <-> agent boundary.
// Business code uses these; common/wire/ converts them to and from protobuf.

/** Kind of a schedulable slot. */
export type DeviceType = 'cpu' | 'cuda';

/** One slot an agent offers. */
export interface Device {
  id: number;
  brand: string;
  uuid: string;
  type: DeviceType;
  memoryMib: number;
}

/** Where a task container is in its life on the agent. */
export type ContainerState = 'PULLING' | 'STARTING' | 'RUNNING' | 'TERMINATED';

/** Why a terminated container did not succeed ('NONE' = exit code 0). */
export type FailureKind = 'NONE' | 'EXIT_NONZERO' | 'PULL_FAILED' | 'START_FAILED' | 'KILLED' | 'AGENT_ERROR';

/** Outcome of a terminated container. */
export interface ExitInfo {
  /** Process exit code; -1 when the process never ran. */
  exitCode: number;
  failureKind: FailureKind;
  message: string;
}

/** Image pull policy: pull only when absent, or always. */
export type PullPolicy = 'missing' | 'always';

/** Everything an agent needs to run one task container. */
export interface TaskSpec {
  taskId: string;
  allocationId: string;
  image: string;
  entrypoint: string[];
  command: string[];
  env: Record<string, string>;
  deviceIds: number[];
  deviceType: DeviceType;
  /** 0 = no limit. */
  memoryLimitBytes: number;
  pullPolicy: PullPolicy;
  labels: Record<string, string>;
  killGracePeriodMs: number;
  /** The trial this allocation runs (0 for tasks that are not trials). */
  trialId: number;
  /** Where the trial's checkpoints go (the experiment's checkpoint_storage). */
  checkpointStorage: CheckpointStorageSpec;
  /** S3 prefixes synced into the container, read-only, before it starts. */
  data: DataInput[];
  /** The trial's latest complete checkpoint, restored into DET_LATEST_CHECKPOINT; '' for none. */
  latestCheckpointUuid: string;
}

/** A checkpoint storage config as the experiment gives it (see common/storage/index.ts); never holds credentials. */
export type CheckpointStorageSpec =
  | { type: 'shared_fs'; host_path: string }
  | { type: 's3'; bucket: string; prefix?: string; region?: string; endpoint_url?: string; force_path_style?: boolean };

/** One data input: an S3 prefix mounted read-only into the container. */
export interface DataInput {
  /** s3://bucket/prefix/ */
  source: string;
  /** Absolute path inside the container. */
  target: string;
  /** Region (default: the SDK's chain). */
  region?: string;
  /** S3-compatible endpoint (default: AWS). */
  endpointUrl?: string;
  /** Path-style requests (default false). */
  forcePathStyle?: boolean;
}

/** A checkpoint the agent stored (manifest written last) and reports to the master. */
export interface CheckpointReport {
  allocationId: string;
  uuid: string;
  /** The checkpoint directory's name inside DET_CHECKPOINT_DIR. */
  name: string;
  createdAtMs: number;
  totalSize: number;
  fileCount: number;
  /** The user's .det-metadata.json object ({} when none). */
  metadata: Record<string, unknown>;
  /** Where the manifest is, for display (s3://... or a path). */
  location: string;
}

/** Source of a log line. */
export type LogStream = 'stdout' | 'stderr' | 'agent';

/** One line of container or agent output, numbered per allocation. */
export interface LogLine {
  sequence: number;
  timestampMs: number;
  stream: LogStream;
  text: string;
}

/** A task container an agent reports on (re)registration. */
export interface ContainerReport {
  allocationId: string;
  containerId: string;
  state: ContainerState;
  lastLogSequence: number;
  exit?: ExitInfo;
}

/** The agent's first message. */
export interface Registration {
  agentId: string;
  version: string;
  resourcePool: string;
  devices: Device[];
  labels: Record<string, string>;
  containers: ContainerReport[];
  hostname: string;
  /** Cloud instance id (EC2) or local provider instance name; '' for static agents. */
  instanceId: string;
  /** Cloud instance type; '' for static agents. */
  instanceType: string;
}

/** Messages an agent sends to the master. */
export type AgentToMaster =
  | { kind: 'register'; register: Registration }
  | { kind: 'heartbeat'; sentAtMs: number }
  | { kind: 'containerState'; allocationId: string; containerId: string; state: ContainerState; exit?: ExitInfo }
  | { kind: 'logs'; allocationId: string; lines: LogLine[] }
  | { kind: 'pullProgress'; allocationId: string; image: string; status: string; currentBytes: number; totalBytes: number }
  | { kind: 'spotInterruption'; action: string; actionTimeMs: number }
  | { kind: 'checkpoint'; checkpoint: CheckpointReport };

/** The master's answer to a registration. */
export interface RegisteredInfo {
  masterId: string;
  clusterId: string;
  heartbeatTtlMs: number;
  heartbeatIntervalMs: number;
  expectedAllocationIds: string[];
}

/** Messages the master sends to an agent. */
export type MasterToAgent =
  | { kind: 'registered'; registered: RegisteredInfo }
  | { kind: 'start'; spec: TaskSpec }
  | { kind: 'kill'; allocationId: string; signal: string; gracePeriodMs: number }
  | { kind: 'drain' }
  | { kind: 'shutdown'; reason: string };

/** Metadata key that carries the cluster join token on agent calls. */
export const AGENT_TOKEN_METADATA_KEY = 'x-det-agent-token';

/** Container label keys the agent sets on every task container. */
export const CONTAINER_LABELS = {
  managed: 'ai.det.managed',
  cluster: 'ai.det.cluster-id',
  agent: 'ai.det.agent-id',
  task: 'ai.det.task-id',
  allocation: 'ai.det.allocation-id',
} as const;

// Set by scripts/bundle-agent.ts (esbuild define) in the one-file agent bundle; absent when run from dist/.
declare const __DET_VERSION__: string | undefined;
declare const __DET_COMMIT__: string | undefined;

/** The software version of every det process. */
export const VERSION: string = typeof __DET_VERSION__ === 'string' ? __DET_VERSION__ : (require('../../package.json') as { version: string }).version;

/** The git commit the agent bundle was built from; "unknown" when not run from a bundle. */
export const COMMIT: string = typeof __DET_COMMIT__ === 'string' ? __DET_COMMIT__ : 'unknown';
