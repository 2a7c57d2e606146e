// The mutable working copy of one resource pool during a pass. Agents sit in
// buckets by free slot count (0..largest), each bucket a heap by agent id, so
// best fit (lowest non-empty bucket >= k) and worst fit (highest non-empty
// bucket) cost O(largest) per task instead of a scan over all agents. Free
// counts only go down within a pass, which makes lazy deletion from the bucket
// heaps and the "nothing with >= k free" memo sound.
import { MinHeap } from './heap';
import type { PoolPolicy } from './types';

/** A running task that may be evicted, as the pass sees it. */
export interface Victim {
  id: string;
  priority: number;
  seq: number;
  /** Its enabled slots on the agent: what evicting it frees for scheduling. */
  slots: number;
  /** Chosen as a victim earlier in this pass. */
  taken: boolean;
}

/** One schedulable agent during a pass. */
export interface AgentState {
  readonly id: string;
  /** Position in the pool's agents (id order): the deterministic tie-break. */
  readonly index: number;
  /** Enabled slots. */
  readonly total: number;
  /** Sorted free slot ids; those in [head, tail) are still free. */
  readonly free: readonly number[];
  head: number;
  tail: number;
  /** Zero-slot tasks there, including those placed this pass. */
  zero: number;
  /** Enabled slots that tasks being preempted will free and no waiting task has claimed yet. */
  toBeFreed: number;
  /** Tasks being preempted there, including those chosen this pass. */
  stopping: number;
  /** Preemptible running tasks not already being preempted, least important first. */
  readonly victims: Victim[];
  /** Bumped on every change of its free or to-be-freed slots or victims (for preemption rankings). */
  version: number;
}

/** Free slots of an agent now. */
export function freeCount(a: AgentState): number {
  return a.tail - a.head;
}

/** One pool's agents, bucketed by free slots. */
export class PoolState {
  /** Most enabled slots of any agent. */
  readonly largest: number;
  private readonly count: number[];
  private readonly buckets: MinHeap[];
  private maxFree: number;
  /** Smallest k for which nothing fits now (free counts only shrink). */
  private noFitFrom = Infinity;
  private zeroHeap: MinHeap | undefined;
  private zeroKey: { zero: Int32Array; free: Int32Array } | undefined;

  /** `agents` in id order, each with `index` equal to its position. */
  constructor(readonly name: string, readonly policy: PoolPolicy, readonly agents: readonly AgentState[]) {
    let largest = 0;
    let maxFree = 0;
    for (const a of agents) {
      largest = Math.max(largest, a.total);
      maxFree = Math.max(maxFree, freeCount(a));
    }
    this.largest = largest;
    this.maxFree = maxFree;
    const top = Math.max(largest, maxFree);
    this.count = new Array<number>(top + 1).fill(0);
    const members: number[][] = Array.from({ length: top + 1 }, () => []);
    for (const a of agents) {
      this.count[freeCount(a)]++;
      members[freeCount(a)].push(a.index); // ascending index: already a heap
    }
    const byIndex = (x: number, y: number) => x < y;
    this.buckets = members.map((m) => new MinHeap(byIndex, m));
  }

  /** The agent a task of k >= 1 slots goes to under the pool's fitting policy, if any fits now. */
  fit(k: number): AgentState | undefined {
    if (k >= this.noFitFrom) return undefined;
    const max = this.mostFree();
    if (k > max) {
      this.noFitFrom = k;
      return undefined;
    }
    if (this.policy.fitting === 'worst') return this.top(max);
    for (let f = k; f <= max; f++) if (this.count[f] > 0) return this.top(f);
    return undefined; // unreachable: count[max] > 0
  }

  /** Most free slots on one agent now. */
  mostFree(): number {
    while (this.maxFree > 0 && this.count[this.maxFree] === 0) this.maxFree--;
    return this.maxFree;
  }

  /** Takes the k lowest free slot ids of an agent for an assignment. */
  take(a: AgentState, k: number): number[] {
    const ids = a.free.slice(a.head, a.head + k);
    this.move(a, () => (a.head += k));
    return ids;
  }

  /** Holds k free slots of an agent for a task that waits for preempted tasks there. */
  reserve(a: AgentState, k: number): void {
    if (k > 0) this.move(a, () => (a.tail -= k));
  }

  /** The agent a zero-slot task goes to: fewest zero-slot tasks under the cap, then most free slots, then id. */
  pickZero(): AgentState | undefined {
    const key = this.zeroKey ?? this.initZero();
    const heap = this.zeroHeap!;
    const cap = this.policy.maxZeroSlotTasksPerAgent;
    for (;;) {
      const i = heap.peek();
      if (i === undefined) return undefined;
      const a = this.agents[i];
      if (a.zero >= cap) {
        heap.pop(); // counts only grow within a pass: it stays full
        continue;
      }
      if (key.zero[i] === a.zero && key.free[i] === freeCount(a)) return a;
      // Stale key: keys only get worse, so re-inserting with the current one keeps the heap exact.
      heap.pop();
      key.zero[i] = a.zero;
      key.free[i] = freeCount(a);
      heap.push(i);
    }
  }

  private initZero(): { zero: Int32Array; free: Int32Array } {
    const key = { zero: new Int32Array(this.agents.length), free: new Int32Array(this.agents.length) };
    for (const a of this.agents) {
      key.zero[a.index] = a.zero;
      key.free[a.index] = freeCount(a);
    }
    const less = (x: number, y: number) => key.zero[x] - key.zero[y] || key.free[y] - key.free[x] || x - y;
    this.zeroHeap = new MinHeap((x, y) => less(x, y) < 0);
    for (const a of this.agents) this.zeroHeap.push(a.index);
    this.zeroKey = key;
    return key;
  }

  /** The lowest-id agent with exactly f free slots; drops entries of agents that have moved on. */
  private top(f: number): AgentState {
    const heap = this.buckets[f];
    for (;;) {
      const i = heap.peek()!;
      const a = this.agents[i];
      if (freeCount(a) === f) return a;
      heap.pop();
    }
  }

  private move(a: AgentState, change: () => void): void {
    a.version++;
    this.count[freeCount(a)]--;
    change();
    const f = freeCount(a);
    this.count[f]++;
    this.buckets[f].push(a.index); // the old entry goes stale: free counts never come back up
  }
}
