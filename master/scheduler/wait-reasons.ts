// Why a task still waits after a pass, in words for `det trial`/`det task`.
// Reasons are worded from the pool's state at the end of the pass, and cached
// per (pool, kind, slots) since thousands of queued tasks share a few reasons.
import type { AgentState, PoolState } from './pool-state';

/** What kept a task from being placed. */
export type WaitKind =
  | { kind: 'no-agents'; pool: string }
  | { kind: 'too-big'; pool: PoolState }
  | { kind: 'slots'; pool: PoolState }
  | { kind: 'zero-cap'; pool: PoolState }
  | { kind: 'preempted'; pool: PoolState; agent: AgentState };

/** Builds wait reasons, sharing equal strings. */
export class WaitReasons {
  private readonly cache = new Map<string, string>();

  /** The message for a task of `slots` slots that waits for `why`. */
  text(why: WaitKind, slots: number): string {
    const key = why.kind === 'preempted' ? `${why.kind}\0${why.agent.id}` : `${why.kind}\0${typeof why.pool === 'string' ? why.pool : why.pool.name}\0${slots}`;
    let text = this.cache.get(key);
    if (text === undefined) {
      text = describe(why, slots);
      this.cache.set(key, text);
    }
    return text;
  }
}

function describe(why: WaitKind, slots: number): string {
  const s = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  if (why.kind === 'no-agents') return `waiting for an agent: no connected, enabled agents in resource pool '${why.pool}'`;
  const pool = `resource pool '${why.pool.name}'`;
  switch (why.kind) {
    case 'too-big':
      return `needs ${slots} slots on one agent but the largest agent in ${pool} has ${s(why.pool.largest, 'enabled slot')}; it stays queued until a large enough agent joins or slots are enabled`;
    case 'slots': {
      const base = `waiting for ${s(slots, 'free slot')} on one agent in ${pool} (at most ${why.pool.mostFree()} free now)`;
      return why.pool.policy.preemption ? `${base}; no agent has enough preemptible lower-priority tasks to make room` : base;
    }
    case 'zero-cap':
      return `waiting for an agent in ${pool} with fewer than ${s(why.pool.policy.maxZeroSlotTasksPerAgent, 'zero-slot task')}: all ${why.pool.agents.length} agents are at the cap`;
    case 'preempted':
      return `waiting for ${s(why.agent.stopping, 'preempted task')} on agent ${why.agent.id} to stop; it is placed once their slots are free`;
  }
}
