// The scheduling core: pure, over a snapshot. Per resource pool: priority
// (lower first) then FIFO; a task's slots must fit on one agent; best fit
// (the agent with the fewest free slots that still fit) packs work tightly.
// Lower-priority tasks may run on capacity a blocked bigger task cannot use.

/** A task waiting for slots. */
export interface PendingTask {
  id: string;
  pool: string;
  slots: number;
  /** 1..99, lower runs first. */
  priority: number;
  /** Submission order; lower is older. */
  seq: number;
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
}

/** Place a task on slots of an agent. */
export interface Assignment {
  taskId: string;
  agentId: string;
  slotIds: number[];
}

/** The plan of one pass. */
export interface SchedulePlan {
  assignments: Assignment[];
  /** Why each still-waiting task waits. */
  waiting: Map<string, string>;
}

/** Orders tasks: priority, then submission order. */
export function byPriorityThenFifo(a: PendingTask, b: PendingTask): number {
  return a.priority - b.priority || a.seq - b.seq;
}

/** One scheduling pass. Pure: inputs are not mutated. */
export function schedule(pending: readonly PendingTask[], agents: readonly AgentCapacity[]): SchedulePlan {
  const free = new Map<string, number[]>();
  const byPool = new Map<string, AgentCapacity[]>();
  for (const a of [...agents].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0))) {
    if (!a.schedulable) continue;
    free.set(a.id, [...a.freeSlotIds].sort((x, y) => x - y));
    const list = byPool.get(a.pool) ?? [];
    list.push(a);
    byPool.set(a.pool, list);
  }
  const assignments: Assignment[] = [];
  const waiting = new Map<string, string>();
  for (const task of [...pending].sort(byPriorityThenFifo)) {
    const candidates = byPool.get(task.pool) ?? [];
    let best: AgentCapacity | undefined;
    for (const agent of candidates) {
      const f = free.get(agent.id)!.length;
      if (f < task.slots) continue;
      // Best fit; zero-slot tasks go to the agent with the most free slots instead.
      if (!best || (task.slots === 0 ? f > free.get(best.id)!.length : f < free.get(best.id)!.length)) best = agent;
    }
    if (!best) {
      waiting.set(task.id, waitReason(task, candidates, free));
      continue;
    }
    const slots = free.get(best.id)!;
    assignments.push({ taskId: task.id, agentId: best.id, slotIds: slots.splice(0, task.slots) });
  }
  return { assignments, waiting };
}

function waitReason(task: PendingTask, candidates: AgentCapacity[], free: Map<string, number[]>): string {
  const pool = `resource pool '${task.pool}'`;
  if (candidates.length === 0) return `waiting for an agent: no connected, enabled agents in ${pool}`;
  const largest = Math.max(...candidates.map((a) => a.slotIds.length));
  if (task.slots > largest) {
    return `needs ${task.slots} slots on one agent but the largest agent in ${pool} has ${largest}; it stays queued until a large enough agent joins`;
  }
  const mostFree = Math.max(...candidates.map((a) => free.get(a.id)!.length));
  return `waiting for ${task.slots} free slot${task.slots === 1 ? '' : 's'} on one agent in ${pool} (at most ${mostFree} free now)`;
}
