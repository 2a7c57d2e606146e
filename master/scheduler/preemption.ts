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
 * The agents with preemptible tasks, by the priority of their least important untaken victim (a
 * bound on the best plan there), most unimportant level first, and by id within a level. A search
 * stops as soon as no agent left can beat the best plan, so a full cluster does not cost a scan
 * over every agent per preempting task. Levels only fall as victims are taken: stale heap entries
 * are dropped lazily.
 */
export class PreemptionIndex {
  private readonly levels: number[];
  private readonly heaps = new Map<number, MinHeap>();
  /** Per agent index: the level of its live heap entry (undefined: no untaken victims). */
  private readonly current: (number | undefined)[];

  constructor(private readonly agents: readonly AgentState[]) {
    this.current = agents.map((a) => firstUntaken(a));
    const members = new Map<number, number[]>();
    for (const a of agents) for (const v of a.victims) if (!members.has(v.priority)) members.set(v.priority, []); // every level an agent can fall to
    for (const a of agents) {
      const level = this.current[a.index];
      if (level !== undefined) members.get(level)!.push(a.index); // ascending: already a heap
    }
    this.levels = [...members.keys()].sort((x, y) => y - x);
    for (const [level, list] of members) this.heaps.set(level, new MinHeap(byIndex, list));
  }

  /** The least harmful way to make room for a task of k slots and `priority`, if any. */
  find(k: number, priority: number): VictimPlan | undefined {
    let best: VictimPlan | undefined;
    const unbeatable = (level: number) => best !== undefined && best.mostImportant === level && best.victims.length === 1 && best.slots === 1;
    for (const level of this.levels) {
      if (level <= priority || (best && best.mostImportant > level)) break;
      const heap = this.heaps.get(level)!;
      const keep: number[] = [];
      while (heap.size > 0) {
        const i = heap.pop()!;
        if (this.current[i] !== level) continue; // moved to a lower level: its entry there is the live one
        keep.push(i);
        const a = this.agents[i];
        const need = k - freeCount(a) - a.toBeFreed;
        if (need <= 0 || k > a.total) continue; // need <= 0 is a claim, handled before; k > total never fits
        const plan = victimsOn(a, need, priority);
        if (plan && (!best || hurtsLess(plan, best))) best = plan;
        // The rest of this level has higher ids, lower levels more important victims: nothing beats one 1-slot victim here.
        if (unbeatable(level)) break;
      }
      for (const i of keep) heap.push(i);
      if (unbeatable(level)) break;
    }
    return best;
  }

  /** Records that victims of `a` were taken: it may move to a lower level. */
  update(a: AgentState): void {
    const level = firstUntaken(a);
    if (level === this.current[a.index]) return;
    this.current[a.index] = level;
    if (level !== undefined) this.heaps.get(level)!.push(a.index); // levels only fall, and every level has a heap
  }
}

/** The priority of an agent's least important untaken victim. */
function firstUntaken(a: AgentState): number | undefined {
  for (const v of a.victims) if (!v.taken) return v.priority;
  return undefined;
}

const byIndex = (x: number, y: number) => x < y;
