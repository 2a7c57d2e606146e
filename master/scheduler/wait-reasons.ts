// Why a task still waits after a pass, in words for `det trial`/`det task`.
// Reasons are worded from the pool's state at the end of the pass. Thousands of
// queued tasks share a few reasons: each reason words itself once per task size.
import type { AgentState, PoolState } from './pool-state';

/** What kept a task from being placed. */
export type WaitKind =
  | { kind: 'no-agents'; pool: string }
  | { kind: 'too-big'; pool: PoolState }
  | { kind: 'slots'; pool: PoolState }
  | { kind: 'zero-cap'; pool: PoolState }
  | { kind: 'preempted'; agent: AgentState };

/** One reason to wait, shared by every task that waits for it. */
export class WaitReason {
  private readonly texts = new Map<number, string>();

  constructor(private readonly why: WaitKind) {}

  /** The message for a task of `slots` slots. */
  text(slots: number): string {
    let text = this.texts.get(slots);
    if (text === undefined) {
      text = describe(this.why, slots);
      this.texts.set(slots, text);
    }
    return text;
  }
}

function describe(why: WaitKind, slots: number): string {
  const s = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  switch (why.kind) {
    case 'no-agents':
      return `waiting for an agent: no connected, enabled agents in resource pool '${why.pool}'`;
    case 'too-big':
      return `needs ${slots} slots on one agent but the largest agent in resource pool '${why.pool.name}' has ${s(why.pool.largest, 'enabled slot')}; it stays queued until a large enough agent joins or slots are enabled`;
    case 'slots': {
      const base = `waiting for ${s(slots, 'free slot')} on one agent in resource pool '${why.pool.name}' (at most ${why.pool.mostFree()} free now)`;
      return why.pool.policy.preemption ? `${base}; no agent has enough preemptible lower-priority tasks to make room` : base;
    }
    case 'zero-cap':
      return `waiting for an agent in resource pool '${why.pool.name}' with fewer than ${s(why.pool.policy.maxZeroSlotTasksPerAgent, 'zero-slot task')}: all ${why.pool.agents.length} agents are at the cap`;
    case 'preempted':
      return `waiting for ${s(why.agent.stopping, 'preempted task')} on agent ${why.agent.id} to stop; it is placed once their slots are free`;
  }
}
