// The scheduling core: pure, over a snapshot (no I/O, no clock, inputs not
// mutated). Per resource pool: priority (lower first), then FIFO, then id. A
// task's slots must fit on one agent, chosen by the pool's fitting policy;
// lower-priority tasks may run on capacity a blocked bigger task cannot use.
// Zero-slot tasks take no slot but count against a per-agent cap.
//
// Preemption (per pool, off by default): a task that fits nowhere may evict
// preemptible running tasks of strictly lower priority on one agent. It then
// waits; the slots those tasks free are "to be freed" and claimed, in priority
// order, by waiting tasks in later passes (and the free slots such a task will
// also use are held back from lower-priority tasks), so no pass evicts twice
// for the same need. Evicted tasks are requeued by the caller.
import { freeCount, PoolState, type AgentState, type Victim } from './pool-state';
import { byLeastImportant, PreemptionIndex } from './preemption';
import { DEFAULT_POOL_POLICY, type AgentCapacity, type Assignment, type PendingTask, type PoolPolicy, type Preemption, type RunningTask, type SchedulePlan, type ScheduleOptions } from './types';
import { WaitReason } from './wait-reasons';

export * from './types';

/** Orders tasks: priority, then submission order, then id. */
export function byPriorityThenFifo(a: PendingTask, b: PendingTask): number {
  return a.priority - b.priority || a.seq - b.seq || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** One pool's state plus the pass's memos for waiting and preemption. */
interface PoolPass {
  state: PoolState;
  /** Agents that have (had) tasks being preempted. */
  stopping: AgentState[];
  /** Agents with preemptible running tasks, ranked per task shape. */
  preemptable: PreemptionIndex;
  /** Smallest k for which no to-be-freed claim works (reset when to-be-freed grows). */
  noClaimFrom: number;
  /** Smallest k for which no preemption works; sound because tasks come in priority order and room only shrinks. */
  noPreemptFrom: number;
  tooBig: WaitReason;
  noSlots: WaitReason;
  zeroCap: WaitReason;
  /** Per agent with tasks being preempted: waiting for them. */
  preempted: Map<AgentState, WaitReason>;
}

/** One scheduling pass. Pure: inputs are not mutated; the same snapshot in any order gives the same plan. */
export function schedule(pending: readonly PendingTask[], agents: readonly AgentCapacity[], opts: ScheduleOptions = {}): SchedulePlan {
  const pools = buildPools(agents, opts);
  const assignments: Assignment[] = [];
  const preemptions: Preemption[] = [];
  const waitTasks: PendingTask[] = [];
  const waitReasons: WaitReason[] = [];
  const wait = (task: PendingTask, why: WaitReason) => {
    waitTasks.push(task);
    waitReasons.push(why);
  };
  const noAgents = new Map<string, WaitReason>();
  for (const task of [...pending].sort(byPriorityThenFifo)) {
    const pool = pools.get(task.pool);
    if (!pool) {
      let why = noAgents.get(task.pool);
      if (!why) noAgents.set(task.pool, (why = new WaitReason({ kind: 'no-agents', pool: task.pool })));
      wait(task, why);
      continue;
    }
    const st = pool.state;
    const k = task.slots;
    if (k <= 0) {
      const a = st.pickZero();
      if (a) {
        a.zero++;
        assignments.push({ taskId: task.id, agentId: a.id, slotIds: [] });
      } else wait(task, pool.zeroCap);
      continue;
    }
    if (k > st.largest) {
      wait(task, pool.tooBig);
      continue;
    }
    const fit = st.fit(k);
    if (fit) {
      assignments.push({ taskId: task.id, agentId: fit.id, slotIds: st.take(fit, k) });
      continue;
    }
    const waitsOn = claim(pool, k) ?? (st.policy.preemption ? preempt(pool, task, preemptions) : undefined);
    wait(task, waitsOn ? preemptedReason(pool, waitsOn) : pool.noSlots);
  }
  // Worded now, from the state at the end of the pass.
  const waiting = new Map<string, string>();
  for (let i = 0; i < waitTasks.length; i++) waiting.set(waitTasks[i].id, waitReasons[i].text(waitTasks[i].slots));
  return { assignments, waiting, preemptions };
}

function preemptedReason(pool: PoolPass, agent: AgentState): WaitReason {
  let why = pool.preempted.get(agent);
  if (!why) pool.preempted.set(agent, (why = new WaitReason({ kind: 'preempted', agent })));
  return why;
}

/** Claims slots that tasks already being preempted will free (plus free slots there), if some agent has enough. */
function claim(pool: PoolPass, k: number): AgentState | undefined {
  if (k >= pool.noClaimFrom) return undefined;
  let best: AgentState | undefined;
  let bestFromFree = Infinity;
  for (const a of pool.stopping) {
    if (a.toBeFreed === 0 || k > a.total || freeCount(a) + a.toBeFreed < k) continue;
    const fromFree = Math.max(0, k - a.toBeFreed);
    if (fromFree < bestFromFree || (fromFree === bestFromFree && a.index < best!.index)) {
      best = a;
      bestFromFree = fromFree;
    }
  }
  if (!best) {
    pool.noClaimFrom = k; // to-be-freed and free counts only shrink until the next eviction
    return undefined;
  }
  best.toBeFreed -= Math.min(best.toBeFreed, k);
  best.version++;
  pool.state.reserve(best, bestFromFree);
  return best;
}

/** Evicts the least harmful set of lower-priority tasks on one agent for `task`; the agent, or undefined when none can make room. */
function preempt(pool: PoolPass, task: PendingTask, out: Preemption[]): AgentState | undefined {
  const k = task.slots;
  if (k >= pool.noPreemptFrom) return undefined;
  const plan = pool.preemptable.find(k, task.priority);
  if (!plan) {
    pool.noPreemptFrom = k;
    return undefined;
  }
  const a = plan.agent;
  for (const v of plan.victims) {
    v.taken = true;
    out.push({ taskId: v.id, forTaskId: task.id, agentId: a.id });
  }
  if (a.stopping === 0) pool.stopping.push(a);
  a.stopping += plan.victims.length;
  // The task uses the victims' slots first, then slots already to be freed, then free slots.
  const fromVictims = Math.min(plan.slots, k);
  const fromToBeFreed = Math.min(a.toBeFreed, k - fromVictims);
  const fromFree = k - fromVictims - fromToBeFreed;
  const left = plan.slots - fromVictims;
  a.toBeFreed += left - fromToBeFreed;
  a.version++;
  if (left > 0) {
    pool.noClaimFrom = Infinity;
    pool.preemptable.improve(a);
  }
  pool.state.reserve(a, fromFree);
  return a;
}

function policyOf(opts: ScheduleOptions, pool: string): PoolPolicy {
  const p = opts.policies;
  const found = p instanceof Map ? p.get(pool) : p && Object.prototype.hasOwnProperty.call(p, pool) ? (p as Record<string, PoolPolicy>)[pool] : undefined;
  return found ?? opts.defaultPolicy ?? DEFAULT_POOL_POLICY;
}

/** Working copies of the schedulable agents, by pool, in id order. */
function buildPools(agents: readonly AgentCapacity[], opts: ScheduleOptions): Map<string, PoolPass> {
  const sorted = agents.filter((a) => a.schedulable).sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  const byPool = new Map<string, AgentState[]>();
  const byId = new Map<string, { state: AgentState; input: AgentCapacity }>();
  for (const a of sorted) {
    if (byId.has(a.id)) continue; // a duplicate id is a caller bug; the first (in id order) wins
    const list = byPool.get(a.pool) ?? [];
    const free = sortedCopy(a.freeSlotIds);
    const state: AgentState = { id: a.id, index: list.length, total: a.slotIds.length, free, head: 0, tail: free.length, zero: a.zeroSlotTasks ?? 0, toBeFreed: 0, stopping: 0, victims: [], version: 0 };
    list.push(state);
    byPool.set(a.pool, list);
    byId.set(a.id, { state, input: a });
  }
  const enabledSets = new Map<string, Set<number>>();
  for (const r of opts.running ?? []) {
    const agent = byId.get(r.agentId);
    if (!agent) continue;
    let enabled = enabledSets.get(r.agentId);
    if (!enabled) enabledSets.set(r.agentId, (enabled = new Set(agent.input.slotIds)));
    let slots = 0;
    for (const s of r.slotIds) if (enabled.has(s)) slots++;
    const a = agent.state;
    if (r.preempting) {
      a.stopping++;
      a.toBeFreed += slots;
    } else if (r.preemptible && slots > 0) {
      a.victims.push({ id: r.id, priority: r.priority, seq: r.seq, slots, taken: false } satisfies Victim);
    }
  }
  const pools = new Map<string, PoolPass>();
  for (const [name, list] of byPool) {
    for (const a of list) a.victims.sort(byLeastImportant);
    const state = new PoolState(name, policyOf(opts, name), list);
    pools.set(name, {
      state,
      stopping: list.filter((a) => a.stopping > 0),
      preemptable: new PreemptionIndex(list),
      noClaimFrom: Infinity,
      noPreemptFrom: Infinity,
      tooBig: new WaitReason({ kind: 'too-big', pool: state }),
      noSlots: new WaitReason({ kind: 'slots', pool: state }),
      zeroCap: new WaitReason({ kind: 'zero-cap', pool: state }),
      preempted: new Map(),
    });
  }
  return pools;
}

function sortedCopy(xs: readonly number[]): number[] {
  const out = xs.slice();
  for (let i = 1; i < out.length; i++) if (out[i - 1] > out[i]) return out.sort((x, y) => x - y);
  return out;
}
