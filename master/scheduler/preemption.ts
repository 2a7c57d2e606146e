// Victim choice for preemption: on one agent, the running tasks to evict so
// that a waiting task fits, and which agent's eviction hurts least.
import { MinHeap } from './heap';
import { freeCount, type AgentState, type Victim } from './pool-state';

/** Evicting `victims` on `agent` (with its free and to-be-freed slots) makes room for the task. */
export interface VictimPlan {
  agent: AgentState;
  victims: Victim[];
  /** Enabled slots the victims free. */
  slots: number;
  /** The smallest priority number among the victims (the most important one evicted). */
  mostImportant: number;
}

/** Orders victims least important first: highest priority number, then newest, then id (descending). */
export function byLeastImportant(a: Victim, b: Victim): number {
  return b.priority - a.priority || b.seq - a.seq || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

/**
 * The victims on one agent that free `need` more slots for a task of `priority`: only strictly
 * lower-priority tasks (higher number) not already taken. Greedy least important first, which makes
 * the most important victim as unimportant as possible; then any victim the rest can do without is
 * dropped, most important first, so no victim is needless. Undefined when the agent cannot make room.
 */
export function victimsOn(agent: AgentState, need: number, priority: number): VictimPlan | undefined {
  const chosen: Victim[] = [];
  let slots = 0;
  for (const v of agent.victims) {
    if (v.priority <= priority) break; // sorted: the rest are at least as important
    if (v.taken) continue;
    chosen.push(v);
    slots += v.slots;
    if (slots >= need) break;
  }
  if (slots < need) return undefined;
  for (let i = chosen.length - 1; i >= 0; i--) {
    if (slots - chosen[i].slots >= need) {
      slots -= chosen[i].slots;
      chosen.splice(i, 1);
    }
  }
  let mostImportant = Infinity;
  for (const v of chosen) mostImportant = Math.min(mostImportant, v.priority);
  return { agent, victims: chosen, slots, mostImportant };
}

/** Whether plan `a` hurts less than `b`: less important victims, then fewer, then fewer slots, then lower agent id. */
export function hurtsLess(a: VictimPlan, b: VictimPlan): boolean {
  if (a.mostImportant !== b.mostImportant) return a.mostImportant > b.mostImportant;
  if (a.victims.length !== b.victims.length) return a.victims.length < b.victims.length;
  if (a.slots !== b.slots) return a.slots < b.slots;
  return a.agent.index < b.agent.index;
}

/**
 * Finds the least harmful plan without a scan over every agent per preempting task. For each task
 * shape (slots, priority) met in a pass it keeps the agents ranked by their plan for that shape, built
 * once. Between searches an agent's plan only gets worse (assignments, holds and claims take its free
 * and to-be-freed slots, other tasks take its victims) with one exception, handled apart: an
 * eviction that frees more than its task needs leaves to-be-freed slots, which can only improve that
 * agent. So a ranked plan is re-checked only when it reaches the top with its agent changed since
 * (AgentState.version), and improved agents are re-ranked from a log when a ranking is next used.
 */
export class PreemptionIndex {
  private readonly candidates: readonly AgentState[];
  private readonly rankings = new Map<string, Ranking>();
  private readonly improved: AgentState[] = [];

  constructor(agents: readonly AgentState[]) {
    this.candidates = agents.filter((a) => a.victims.length > 0);
  }

  /** The least harmful way to make room for a task of k slots and `priority`, if any. */
  find(k: number, priority: number): VictimPlan | undefined {
    const key = `${k}/${priority}`;
    let r = this.rankings.get(key);
    if (!r) {
      r = new Ranking(k, priority);
      for (const a of this.candidates) r.offer(a);
      r.seen = this.improved.length;
      this.rankings.set(key, r);
    }
    for (; r.seen < this.improved.length; r.seen++) r.offer(this.improved[r.seen]);
    return r.best();
  }

  /** Records that `a` got more to-be-freed slots: its plans may have improved. */
  improve(a: AgentState): void {
    this.improved.push(a);
  }
}

/** Agents ranked by their plan for one task shape; entries go stale when their agent changes. */
class Ranking {
  private readonly plans: VictimPlan[] = [];
  private readonly versions: number[] = [];
  /** Per agent index: its newest entry (older ones are dropped when they surface). */
  private readonly newest = new Map<number, number>();
  private readonly heap = new MinHeap((x, y) => hurtsLess(this.plans[x], this.plans[y]));
  seen = 0;

  constructor(private readonly k: number, private readonly priority: number) {}

  /** Ranks an agent's current plan, if it has one. */
  offer(a: AgentState): void {
    const need = this.k - freeCount(a) - a.toBeFreed;
    if (need <= 0 || this.k > a.total) return; // need <= 0 is a claim, tried before any search; k > total never fits
    const plan = victimsOn(a, need, this.priority);
    if (!plan) return;
    this.plans.push(plan);
    this.versions.push(a.version);
    this.newest.set(a.index, this.plans.length - 1);
    this.heap.push(this.plans.length - 1);
  }

  /** The best current plan: stale tops are re-checked (they can only have got worse). */
  best(): VictimPlan | undefined {
    for (;;) {
      const i = this.heap.peek();
      if (i === undefined) return undefined;
      const plan = this.plans[i];
      if (this.versions[i] === plan.agent.version) return plan;
      this.heap.pop();
      if (this.newest.get(plan.agent.index) === i) this.offer(plan.agent);
    }
  }
}
