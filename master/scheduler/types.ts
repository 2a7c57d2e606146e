// The scheduler's inputs and outputs: a read-only snapshot in, a plan out.

/** A task waiting for slots. */
export interface PendingTask {
  id: string;
  pool: string;
  /** Slots it needs on one agent; 0 for a CPU-only aux task. */
  slots: number;
  /** 1..99, lower runs first (default 42, see DEFAULT_PRIORITY). */
  priority: number;
  /** Submission order; lower is older. */
  seq: number;
}

/** A task holding slots now; only preemption looks at these. */
export interface RunningTask {
  id: string;
  pool: string;
  agentId: string;
  slotIds: number[];
  priority: number;
  seq: number;
  /** Whether a higher-priority task may evict it. */
  preemptible: boolean;
  /** Already told to stop for a preemption; its slots are "to be freed". */
  preempting: boolean;
}

/** What the scheduler needs to know of an agent. */
export interface AgentCapacity {
  id: string;
  pool: string;
  /** Connected and enabled. */
  schedulable: boolean;
  /** All enabled slot ids. */
  slotIds: number[];
  /** Enabled slot ids not in use. */
  freeSlotIds: number[];
  /** Zero-slot tasks running there now (default 0). */
  zeroSlotTasks?: number;
}

/** How a resource pool places and preempts. */
export interface PoolPolicy {
  /** `best` packs (fewest free slots that fit), `worst` spreads (most free slots). */
  fitting: 'best' | 'worst';
  /** Whether a waiting task may evict running tasks of strictly lower priority. */
  preemption: boolean;
  /** Cap on zero-slot tasks per agent. */
  maxZeroSlotTasksPerAgent: number;
}

/** Place a task on slots of an agent. */
export interface Assignment {
  taskId: string;
  agentId: string;
  slotIds: number[];
}

/** Stop a running task so that a higher-priority one can use its slots. */
export interface Preemption {
  taskId: string;
  forTaskId: string;
  agentId: string;
}

/** The plan of one pass. */
export interface SchedulePlan {
  assignments: Assignment[];
  /** Why each still-waiting task waits. */
  waiting: Map<string, string>;
  /** Running tasks to stop (SIGTERM + grace, then requeue); empty without preemption. */
  preemptions: Preemption[];
}

/** Optional inputs of a pass; without them a pass behaves as before preemption and policies existed. */
export interface ScheduleOptions {
  /** Running tasks, needed for preemption and to know slots already being freed. */
  running?: readonly RunningTask[];
  /** Policy per pool name. */
  policies?: ReadonlyMap<string, PoolPolicy> | Readonly<Record<string, PoolPolicy>>;
  /** Policy of pools not in `policies` (default DEFAULT_POOL_POLICY). */
  defaultPolicy?: PoolPolicy;
}

/** The priority of a task that does not set one. */
export const DEFAULT_PRIORITY = 42;

/** Best fit, no preemption, at most 100 zero-slot tasks per agent. */
export const DEFAULT_POOL_POLICY: Readonly<PoolPolicy> = Object.freeze({ fitting: 'best', preemption: false, maxZeroSlotTasksPerAgent: 100 });
