// Messages between the fleet benchmark (bench/fleet.ts) and its agent simulator process
// (bench/fleet/sim.ts) over the Node IPC channel of child_process.fork.

/** What the simulator is told to do (passed as its one argument, JSON). */
export interface SimConfig {
  /** Master host:port. */
  address: string;
  /** Cluster join token. */
  token: string;
  /** Number of simulated agents. */
  agents: number;
  /** gRPC channels (TCP connections) the agents' streams are spread over. */
  channels: number;
  /** Registrations are spread evenly over this long. */
  rampMs: number;
  /** Slots (CPU devices) per agent. */
  slotsPerAgent: number;
  /** Task run time when the task's command is not `sleep N`. */
  defaultTaskMs: number;
  /** Log lines each task sends (half after RUNNING, half before TERMINATED). */
  logLinesPerTask: number;
  /** Agent id prefix; ids are `${prefix}${index}`, zero-padded. */
  idPrefix: string;
}

/** Counters of the simulator since it started; the bench takes differences between two snapshots. */
export interface SimStats {
  /** Agents whose stream is registered now. */
  registeredNow: number;
  /** Registered messages received (re-registrations included). */
  registrations: number;
  /** Streams that ended while the simulator was not stopping, by status text. */
  streamEnds: Record<string, number>;
  heartbeatsSent: number;
  messagesSent: number;
  startsReceived: number;
  killsReceived: number;
  /** TERMINATED reports sent with exit code 0. */
  tasksSucceeded: number;
  /** Tasks running on simulated agents now. */
  tasksRunning: number;
  /** Heartbeat intervals and TTLs the master handed out: min and max. */
  intervalMs: { min: number; max: number };
  ttlMs: { min: number; max: number };
  /** Largest gap between two messages of one agent, as a fraction of that agent's TTL (1.0 = the TTL), since the last peak reset. */
  maxGapOfTtl: number;
  /** Largest delay of a heartbeat behind its schedule (simulator event-loop lag shows here), since the last peak reset. */
  maxHeartbeatLateMs: number;
  /** Time from writing Register to receiving Registered, over all registrations: p50, p99, max in ms. */
  registerMs: { p50: number; p99: number; max: number };
  /** Event-loop delay of the simulator since the last peak reset: p99 and max in ms. */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
}

/** bench -> sim. */
export type ToSim =
  /** Counters now; `resetPeaks` restarts the peak values (loop delay, heartbeat lateness, message gap). */
  | { type: 'stats'; resetPeaks: boolean }
  | { type: 'stop' };

/** sim -> bench. */
export type FromSim =
  | { type: 'stats'; stats: SimStats }
  | { type: 'stopped'; stats: SimStats }
  | { type: 'fatal'; message: string };
