import { strict as assert } from 'node:assert';
import type { AgentState, Victim } from '../../master/scheduler/pool-state';
import { byLeastImportant, hurtsLess, PreemptionIndex, victimsOn, type VictimPlan } from '../../master/scheduler/preemption';
import { schedule, type AgentCapacity, type PendingTask, type PoolPolicy, type RunningTask, type SchedulePlan } from '../../master/scheduler/scheduler';

const task = (id: string, over: Partial<PendingTask> = {}): PendingTask => ({ id, pool: 'default', slots: 1, priority: 42, seq: Number(id.replace(/\D/g, '')) || 0, ...over });
/** An agent with `total` slots 0..total-1 of which those not in `used` are free. */
const agent = (id: string, total: number, used: number[] = [], over: Partial<AgentCapacity> = {}): AgentCapacity => {
  const slotIds = Array.from({ length: total }, (_, i) => i);
  return { id, pool: 'default', schedulable: true, slotIds, freeSlotIds: slotIds.filter((s) => !used.includes(s)), zeroSlotTasks: 0, ...over };
};
const run = (id: string, agentId: string, slotIds: number[], priority: number, over: Partial<RunningTask> = {}): RunningTask => ({
  id, pool: 'default', agentId, slotIds, priority, seq: Number(id.replace(/\D/g, '')) || 0, preemptible: true, preempting: false, ...over,
});
const preemptive: PoolPolicy = { fitting: 'best', preemption: true, maxZeroSlotTasksPerAgent: 100 };
const on = (running: RunningTask[]) => ({ running, defaultPolicy: preemptive });
const victims = (plan: SchedulePlan) => plan.preemptions.map((p) => `${p.taskId}@${p.agentId}`);

/** Applies a plan as the cluster would: places assignments, marks victims as preempting. */
function apply(plan: SchedulePlan, pending: PendingTask[], agents: AgentCapacity[], running: RunningTask[]) {
  const placed = new Set(plan.assignments.map((a) => a.taskId));
  const stopping = new Set(plan.preemptions.map((p) => p.taskId));
  const nextAgents = agents.map((a) => {
    const taken = plan.assignments.filter((x) => x.agentId === a.id).flatMap((x) => x.slotIds);
    return { ...a, freeSlotIds: a.freeSlotIds.filter((s) => !taken.includes(s)) };
  });
  const nextRunning = [
    ...running.map((r) => (stopping.has(r.id) ? { ...r, preempting: true } : r)),
    ...plan.assignments.map((a) => run(a.taskId, a.agentId, a.slotIds, pending.find((t) => t.id === a.taskId)!.priority)),
  ];
  return { pending: pending.filter((t) => !placed.has(t.id)), agents: nextAgents, running: nextRunning };
}

/** The preempted tasks exit: their slots become free again and they are requeued. */
function exitPreempted(state: { pending: PendingTask[]; agents: AgentCapacity[]; running: RunningTask[] }) {
  const gone = state.running.filter((r) => r.preempting);
  return {
    pending: [...state.pending, ...gone.map((r) => task(r.id, { priority: r.priority, seq: r.seq, slots: r.slotIds.length }))],
    agents: state.agents.map((a) => ({ ...a, freeSlotIds: [...a.freeSlotIds, ...gone.filter((r) => r.agentId === a.id).flatMap((r) => r.slotIds)] })),
    running: state.running.filter((r) => !r.preempting),
  };
}

describe('scheduler preemption', () => {
  it('is off unless the pool enables it', () => {
    const running = [run('r1', 'a', [0, 1], 90)];
    const plan = schedule([task('t1', { priority: 1 })], [agent('a', 2, [0, 1])], { running });
    assert.deepEqual(plan.preemptions, []);
    assert.equal(plan.waiting.get('t1'), "waiting for 1 free slot on one agent in resource pool 'default' (at most 0 free now)");
  });
  it('evicts the least important, newest task and makes the preemptor wait for it', () => {
    const running = [run('r1', 'a', [0], 60), run('r2', 'a', [1], 60), run('r3', 'a', [2], 50), run('r4', 'a', [3], 60, { seq: 0 })];
    const plan = schedule([task('t9', { priority: 10 })], [agent('a', 4, [0, 1, 2, 3])], on(running));
    assert.deepEqual(plan.preemptions, [{ taskId: 'r2', forTaskId: 't9', agentId: 'a' }]);
    assert.equal(plan.assignments.length, 0);
    assert.equal(plan.waiting.get('t9'), 'waiting for 1 preempted task on agent a to stop; it is placed once their slots are free');
  });
  it('prefers several less important victims to one more important one', () => {
    const running = [run('r1', 'a', [0], 80), run('r2', 'a', [1], 80), run('r3', 'a', [2, 3], 50)];
    const plan = schedule([task('t9', { priority: 10, slots: 2 })], [agent('a', 4, [0, 1, 2, 3])], on(running));
    assert.deepEqual(victims(plan), ['r2@a', 'r1@a']);
  });
  it('drops victims the others can do without', () => {
    // Greedy takes r1 (least important) then r2; r2 alone frees the 2 slots needed, so r1 is spared.
    const running = [run('r1', 'a', [0], 70), run('r2', 'a', [1, 2], 60), run('r3', 'a', [3], 20)];
    const plan = schedule([task('t9', { priority: 10, slots: 2 })], [agent('a', 4, [0, 1, 2, 3])], on(running));
    assert.deepEqual(victims(plan), ['r2@a']);
  });
  it('counts free slots: evicts only what is missing', () => {
    const running = [run('r1', 'a', [0], 70), run('r2', 'a', [1], 71)];
    const plan = schedule([task('t9', { priority: 10, slots: 3 })], [agent('a', 4, [0, 1]), agent('b', 2, [0, 1])], on([...running, run('r3', 'b', [0, 1], 90)]));
    assert.deepEqual(victims(plan), ['r2@a']);
  });
  it('picks the agent whose victims matter least, then the one with fewest victims, then the lowest id', () => {
    const running = [
      run('r1', 'a', [0], 50), run('r2', 'a', [1], 50),
      run('r3', 'b', [0], 60), run('r4', 'b', [1], 60),
      run('r5', 'c', [0, 1], 60),
      run('r6', 'd', [0, 1], 60),
    ];
    const agents = ['a', 'b', 'c', 'd'].map((id) => agent(id, 2, [0, 1]));
    const plan = schedule([task('t9', { priority: 10, slots: 2 })], agents, on(running));
    assert.deepEqual(victims(plan), ['r5@c']);
  });
  it('does not preempt when the task fits elsewhere', () => {
    const plan = schedule([task('t9', { priority: 10 })], [agent('a', 2, [0, 1]), agent('b', 2, [0])], on([run('r1', 'a', [0, 1], 90)]));
    assert.deepEqual(plan.preemptions, []);
    assert.deepEqual(plan.assignments, [{ taskId: 't9', agentId: 'b', slotIds: [1] }]);
  });
  it('does not preempt non-preemptible tasks', () => {
    const plan = schedule([task('t9', { priority: 10 })], [agent('a', 2, [0, 1])], on([run('r1', 'a', [0, 1], 90, { preemptible: false })]));
    assert.deepEqual(plan.preemptions, []);
    assert.match(plan.waiting.get('t9')!, /no agent has enough preemptible lower-priority tasks to make room/);
  });
  it('does not preempt tasks of equal or higher priority', () => {
    const running = [run('r1', 'a', [0], 42), run('r2', 'a', [1], 30)];
    const plan = schedule([task('t9', { priority: 42 })], [agent('a', 2, [0, 1])], on(running));
    assert.deepEqual(plan.preemptions, []);
    const plan2 = schedule([task('t9', { priority: 41 })], [agent('a', 2, [0, 1])], on(running));
    assert.deepEqual(victims(plan2), ['r1@a']);
  });
  it('does not preempt a task already being preempted, and waits for it instead', () => {
    const running = [run('r1', 'a', [0], 90, { preempting: true }), run('r2', 'a', [1], 80)];
    const plan = schedule([task('t9', { priority: 10 })], [agent('a', 2, [0, 1])], on(running));
    assert.deepEqual(plan.preemptions, []);
    assert.equal(plan.waiting.get('t9'), 'waiting for 1 preempted task on agent a to stop; it is placed once their slots are free');
  });
  it('does not preempt for a task bigger than any agent', () => {
    const plan = schedule([task('t9', { priority: 10, slots: 4 })], [agent('a', 2, [0, 1])], on([run('r1', 'a', [0, 1], 90)]));
    assert.deepEqual(plan.preemptions, []);
    assert.match(plan.waiting.get('t9')!, /largest agent/);
  });
  it('only counts enabled slots a victim would free', () => {
    // Slot 3 is disabled: r1 frees nothing schedulable, so r2 must go.
    const a = agent('a', 4, [1, 2, 3], { slotIds: [0, 1, 2], freeSlotIds: [0] });
    const plan = schedule([task('t9', { priority: 10, slots: 2 })], [a], on([run('r1', 'a', [3], 90), run('r2', 'a', [1, 2], 60)]));
    assert.deepEqual(victims(plan), ['r2@a']);
  });
  it('never preempts on an unschedulable agent', () => {
    const plan = schedule([task('t9', { priority: 10 })], [agent('a', 2, [0, 1], { schedulable: false }), agent('b', 1, [0])], on([run('r1', 'a', [0, 1], 90), run('r2', 'b', [0], 42, { preemptible: false })]));
    assert.deepEqual(plan.preemptions, []);
  });
  it('holds the free slots a preemptor will use back from lower-priority tasks', () => {
    const pending = [task('t1', { priority: 10, slots: 4 }), task('t2', { priority: 50 })];
    const agents = [agent('a', 4, [2, 3])];
    const running = [run('r1', 'a', [2, 3], 60)];
    const plan = schedule(pending, agents, on(running));
    assert.deepEqual(victims(plan), ['r1@a']);
    assert.deepEqual(plan.assignments, []); // without the hold t2 would take slot 0 and t1 would preempt again later
    assert.match(plan.waiting.get('t2')!, /at most 0 free now/);
    const next = schedule(pending, agents, on([{ ...running[0], preempting: true }]));
    assert.deepEqual(next.preemptions, []);
    assert.deepEqual(next.assignments, []);
  });
  it('lets a second preemptor use what the first does not need', () => {
    const plan = schedule([task('t1', { priority: 10 }), task('t2', { priority: 10 })], [agent('a', 2, [0, 1])], on([run('r1', 'a', [0, 1], 90)]));
    assert.deepEqual(victims(plan), ['r1@a']);
    assert.equal(plan.waiting.get('t2'), 'waiting for 1 preempted task on agent a to stop; it is placed once their slots are free');
  });
  it('multiple preemptors do not double count, across passes, until the slots are free', () => {
    const agents = [agent('a', 4, [0, 1, 2, 3])];
    const running = [0, 1, 2, 3].map((s) => run(`r${s + 1}`, 'a', [s], 70));
    let state = { pending: [task('t11', { priority: 10 }), task('t12', { priority: 10 }), task('t13', { priority: 70 })], agents, running };
    // Pass 1: one victim per preemptor; t13 cannot preempt its equals.
    let plan = schedule(state.pending, state.agents, on(state.running));
    assert.deepEqual(plan.preemptions, [{ taskId: 'r4', forTaskId: 't11', agentId: 'a' }, { taskId: 'r3', forTaskId: 't12', agentId: 'a' }]);
    state = apply(plan, state.pending, state.agents, state.running);
    // Pass 2: the victims are still stopping: nothing more is evicted, both preemptors wait on them.
    plan = schedule(state.pending, state.agents, on(state.running));
    assert.deepEqual(plan.preemptions, []);
    assert.deepEqual(plan.assignments, []);
    assert.equal(plan.waiting.get('t11'), 'waiting for 2 preempted tasks on agent a to stop; it is placed once their slots are free');
    assert.equal(plan.waiting.get('t12'), plan.waiting.get('t11'));
    // Pass 3: they exited and were requeued: the preemptors take the slots, the victims wait.
    state = exitPreempted(state);
    plan = schedule(state.pending, state.agents, on(state.running));
    assert.deepEqual(plan.assignments.map((a) => [a.taskId, a.slotIds[0]]), [['t11', 2], ['t12', 3]]);
    assert.deepEqual(plan.preemptions, []);
    assert.deepEqual([...plan.waiting.keys()].sort(), ['r3', 'r4', 't13']);
  });
  it('a newer, more important task claims slots being freed before an older preemptor evicts again', () => {
    const agents = [agent('a', 2, [0, 1]), agent('b', 2, [0, 1])];
    const running = [run('r1', 'a', [0, 1], 70, { preempting: true }), run('r2', 'b', [0, 1], 70)];
    const plan = schedule([task('t1', { priority: 20, slots: 2 }), task('t2', { priority: 5, slots: 2 })], agents, on(running));
    // t2 goes first and waits on a; t1 then needs its own room and evicts r2 on b.
    assert.deepEqual(plan.preemptions, [{ taskId: 'r2', forTaskId: 't1', agentId: 'b' }]);
    assert.match(plan.waiting.get('t2')!, /on agent a/);
    assert.match(plan.waiting.get('t1')!, /on agent b/);
  });
  it('stops evicting once lower-priority room runs out', () => {
    const agents = [agent('a', 2, [0, 1])];
    const running = [run('r1', 'a', [0], 70), run('r2', 'a', [1], 30)];
    const plan = schedule([task('t1', { priority: 40 }), task('t2', { priority: 40 }), task('t3', { priority: 10 })], agents, on(running));
    // t3 (10) takes r1 (70) first; t1 may not evict r2 (30, more important); t2 neither.
    assert.deepEqual(plan.preemptions, [{ taskId: 'r1', forTaskId: 't3', agentId: 'a' }]);
    assert.match(plan.waiting.get('t1')!, /no agent has enough preemptible/);
  });
  it('re-checks a ranked plan after an assignment takes that agent\'s free slot', () => {
    // t1 evicts b1 on b (tie with c, lower id); t2 takes c's free slot; c1 alone no longer makes room for t3.
    const agents = [agent('a', 3, [0, 1, 2]), agent('b', 3, [0, 1]), agent('c', 3, [0, 1])];
    const running = [run('a1', 'a', [0], 70), run('a2', 'a', [1], 70), run('a3', 'a', [2], 70), run('b1', 'b', [0, 1], 90), run('c1', 'c', [0, 1], 90)];
    const plan = schedule([task('t1', { priority: 10, slots: 3 }), task('t2', { priority: 10 }), task('t3', { priority: 10, slots: 3 })], agents, on(running));
    assert.deepEqual(plan.assignments, [{ taskId: 't2', agentId: 'c', slotIds: [2] }]);
    assert.deepEqual(plan.preemptions.map((p) => `${p.forTaskId}:${p.taskId}@${p.agentId}`), ['t1:b1@b', 't3:a3@a', 't3:a2@a', 't3:a1@a']);
  });
  it('re-checks a ranked plan after a claim takes that agent\'s to-be-freed slot', () => {
    // t1 evicts on a; s claims b's slot being freed; b2+b1 then no longer make room for t3, c1 does.
    const agents = [agent('a', 3, [0, 1, 2]), agent('b', 3, [0, 1, 2]), agent('c', 3, [0, 1, 2])];
    const running = [
      run('a0', 'a', [0], 90, { preempting: true }), run('a1', 'a', [1], 90), run('a2', 'a', [2], 90),
      run('b0', 'b', [0], 90, { preempting: true }), run('b1', 'b', [1], 90), run('b2', 'b', [2], 90),
      run('c1', 'c', [0, 1, 2], 60),
    ];
    const plan = schedule([task('t1', { priority: 10, slots: 3 }), task('s2', { priority: 10 }), task('t3', { priority: 10, slots: 3 })], agents, on(running));
    assert.deepEqual(plan.preemptions.map((p) => `${p.forTaskId}:${p.taskId}@${p.agentId}`), ['t1:a2@a', 't1:a1@a', 't3:c1@c']);
    assert.match(plan.waiting.get('s2')!, /on agent b/);
  });
  it('sees an agent improve when an eviction there frees more than its task needed', () => {
    // After t2 evicts x1 (2 slots) for 1 slot, x has 1 slot to be freed: x2 alone then makes room for t3,
    // which beats w's two victims; before, x needed both of its own.
    const agents = [agent('v', 4, [0, 1, 2, 3]), agent('w', 4, [0, 1, 2, 3]), agent('x', 5, [0, 1, 2, 3, 4])];
    const running = [run('v1', 'v', [0, 1, 2, 3], 60), run('w1', 'w', [0], 80), run('w2', 'w', [1, 2, 3], 30), run('x1', 'x', [0, 1], 90), run('x2', 'x', [2, 3, 4], 30)];
    const plan = schedule([task('t1', { priority: 10, slots: 4 }), task('t2', { priority: 10 }), task('t3', { priority: 10, slots: 4 })], agents, on(running));
    assert.deepEqual(plan.preemptions.map((p) => `${p.forTaskId}:${p.taskId}@${p.agentId}`), ['t1:v1@v', 't2:x1@x', 't3:x2@x']);
  });
  it('gives the same plan for the same snapshot in any order', () => {
    const agents = ['a', 'b', 'c', 'd'].map((id, i) => agent(id, 4, i % 2 ? [0, 1, 2, 3] : [0, 1, 2]));
    const running = agents.flatMap((a, i) => [run(`r${i}0`, a.id, [0, 1], 60 + i), run(`r${i}1`, a.id, [2], 70), ...(i % 2 ? [run(`r${i}2`, a.id, [3], 70, { preempting: i === 3 })] : [])]);
    const pending = [task('t1', { priority: 10, slots: 2 }), task('t2', { priority: 10 }), task('t3', { priority: 20, slots: 3 }), task('t4', { priority: 30 }), task('t5', { priority: 65, slots: 2 })];
    const base = schedule(pending, agents, on(running));
    assert.ok(base.preemptions.length >= 3, 'the case should preempt');
    const flat = (p: SchedulePlan) => ({ a: p.assignments, w: [...p.waiting], p: p.preemptions });
    for (let r = 1; r < 8; r++) {
      const rot = <T>(xs: T[]) => [...xs.slice(r % xs.length), ...xs.slice(0, r % xs.length)].reverse();
      assert.deepEqual(flat(schedule(rot(pending), rot(agents), on(rot(running)))), flat(base));
    }
  });
  it('does not mutate its inputs', () => {
    const agents = [agent('a', 2, [0, 1])];
    const running = [run('r1', 'a', [0, 1], 90)];
    const pending = [task('t1', { priority: 10 })];
    const opts = on(running);
    const before = JSON.stringify([agents, running, pending, opts]);
    const plan = schedule(pending, agents, opts);
    assert.equal(plan.preemptions.length, 1);
    assert.equal(JSON.stringify([agents, running, pending, opts]), before);
  });
  it('the victim index finds what a scan over every agent finds', () => {
    let seed = 5;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
    const int = (n: number) => Math.floor(rnd() * n);
    let searches = 0;
    for (let round = 0; round < 300; round++) {
      const agents: AgentState[] = Array.from({ length: 1 + int(10) }, (_, index) => {
        const total = 1 + int(8);
        const victims: Victim[] = [];
        for (let used = 0; used < total; ) {
          const slots = Math.min(total - used, 1 + int(3));
          if (rnd() < 0.8) victims.push({ id: `v${index}-${used}`, priority: [20, 50, 50, 70, 90][int(5)], seq: int(50), slots, taken: false });
          used += slots;
        }
        victims.sort(byLeastImportant);
        const free = Array.from({ length: int(3) }, (_, i) => i);
        return { id: `a${index}`, index, total, free, head: 0, tail: free.length, zero: 0, toBeFreed: 0, stopping: 0, victims, version: 0 };
      });
      const index = new PreemptionIndex(agents);
      for (let step = 0; step < 12; step++) {
        // What the rest of a pass does to agents between searches.
        const x = agents[int(agents.length)];
        const change = int(4);
        if (change === 0 && x.tail > x.head) x.tail--; // an assignment or a hold
        if (change === 1 && x.toBeFreed > 0) x.toBeFreed--; // a claim
        if (change === 2) {
          x.toBeFreed += 1 + int(2); // an eviction that freed more than needed
          index.improve(x);
        }
        if (change !== 3) x.version++;
        const k = 1 + int(6);
        const priority = [10, 40, 60, 80][int(4)];
        if (agents.some((a) => k <= a.total && k <= a.tail - a.head + a.toBeFreed)) continue; // a claim would have taken it
        const got = index.find(k, priority);
        let want: VictimPlan | undefined;
        for (const a of agents) {
          if (k > a.total) continue;
          const plan = victimsOn(a, k - (a.tail - a.head) - a.toBeFreed, priority);
          if (plan && (!want || hurtsLess(plan, want))) want = plan;
        }
        assert.deepEqual(got && { agent: got.agent.id, victims: got.victims.map((v) => v.id) }, want && { agent: want.agent.id, victims: want.victims.map((v) => v.id) }, `round ${round} step ${step}`);
        if (!got) continue;
        searches++;
        for (const v of got.victims) v.taken = true;
        got.agent.version++;
      }
    }
    assert.ok(searches > 500, `only ${searches} searches found victims`);
  });
});
