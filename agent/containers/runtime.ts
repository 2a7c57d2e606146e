// The port through which the agent runs task containers. agent/containers/docker.ts is the real
// adapter; unit tests of the agent's session use a fake.
import type { ContainerState, Device, ExitInfo, LogStream, TaskSpec } from '../../common/types';

/** What a run needs to know about the agent it runs on. */
export interface RunContext {
  clusterId: string;
  agentId: string;
  /** Docker network mode of task containers ("host" in tests: the test dockerd has no bridge). */
  networkMode: string;
  /** The agent's devices, to map a spec's deviceIds to GPU uuids. */
  devices: Device[];
}

/** A host directory bind-mounted into the task container. */
export interface BindMount {
  /** Absolute path on the host; must exist. */
  hostPath: string;
  /** Absolute path inside the container. */
  containerPath: string;
  readOnly: boolean;
}

/** A TaskSpec plus what the agent prepared on the host for it. */
export interface RunSpec extends TaskSpec {
  /** Checkpoint and data directories (default none). */
  mounts?: BindMount[];
}

/** One line of output as the runtime hands it over (the session numbers lines). */
export interface RuntimeLogLine {
  stream: LogStream;
  text: string;
  timestampMs: number;
}

/** Pull progress, summed over the image's layers. */
export interface PullProgress {
  image: string;
  /** Docker's latest status, e.g. "3f4a1c: Downloading" or "Pulling from det-test/busybox". */
  status: string;
  currentBytes: number;
  totalBytes: number;
}

/** Where a run reports what happens to its container. */
export interface ContainerSink {
  /** A state change; containerId is '' until the container exists. */
  state(state: ContainerState, containerId: string, exit?: ExitInfo): void;
  /** Lines in order; the runtime awaits the returned promise before handing over more (backpressure). */
  logs(lines: RuntimeLogLine[]): Promise<void> | void;
  pullProgress(p: PullProgress): void;
}

/** A task container found on the host (for reconciliation after a reconnect or restart). */
export interface ManagedContainer {
  allocationId: string;
  taskId: string;
  containerId: string;
  running: boolean;
  /** Exit code of a stopped container; null while it runs or if it never ran. */
  exitCode: number | null;
}

/** How a run treats the allocation's container. */
export interface RunOptions {
  /**
   * The container exists already (found after an agent restart): adopt it, never pull or create.
   * If it is gone, the run ends as AGENT_ERROR instead of starting the task a second time.
   */
  adoptOnly?: boolean;
}

/** Runs task containers. */
export interface ContainerRuntime {
  /** Checks that the container engine answers; throws DetError DET_ERR_DOCKER_UNREACHABLE if not. */
  ping(signal?: AbortSignal): Promise<void>;
  /**
   * Runs the allocation's container to completion: PULLING → STARTING → RUNNING → TERMINATED.
   * Task failures (pull, start, non-zero exit, kill) resolve as ExitInfo after sink.state('TERMINATED').
   * Rejects only when `signal` aborts: the container is then left as it is, for a later run to adopt.
   * A second run of an allocation already running in this runtime joins the first (same result).
   * The container's stdout/stderr lines are handed over from its FIRST line on every run, an
   * adopted container's included, always split the same way: a line's position in the output is
   * stable across agent restarts (the manager numbers lines by it).
   */
  run(spec: RunSpec, ctx: RunContext, sink: ContainerSink, signal?: AbortSignal, opts?: RunOptions): Promise<ExitInfo>;
  /** Sends `signal` (default SIGTERM), then SIGKILL after the grace period; harmless if already gone. */
  kill(allocationId: string, signal: string, gracePeriodMs: number): Promise<void>;
  /** Force-removes an allocation's container (killing it if it runs); harmless if gone. */
  discard(allocationId: string): Promise<void>;
  /** Task containers of this agent, running or not. */
  listManaged(agentId: string): Promise<ManagedContainer[]>;
}
