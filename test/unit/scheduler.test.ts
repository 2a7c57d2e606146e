import { strict as assert } from 'node:assert';
import { byPriorityThenFifo, schedule, type AgentCapacity, type PendingTask, type PoolPolicy, type SchedulePlan } from '../../master/scheduler/scheduler';

const task = (id: string, over: Partial<PendingTask> = {}): PendingTask => ({ id, pool: 'default', slots: 1, priority: 42, seq: Number(id.replace(/\D/g, '')) || 0, ...over });
const agent = (id: string, total: number, free = total, over: Partial<AgentCapacity> = {}): AgentCapacity => ({
  id, pool: 'default', schedulable: true, slotIds: Array.from({ length: total }, (_, i) => i), freeSlotIds: Array.from({ length: total }, (_, i) => i).slice(total - free), ...over,
});

describe('scheduler', () => {
  it('places in priority order, then FIFO', () => {
    const plan = schedule([task('t1'), task('t2', { priority: 10 }), task('t3')], [agent('a', 2)]);
    assert.deepEqual(plan.assignments.map((a) => a.taskId), ['t2', 't1']);
    assert.match(plan.waiting.get('t3')!, /waiting for 1 free slot/);
  });
  it('fits all of a task’s slots on one agent', () => {
    const plan = schedule([task('t1', { slots: 3 })], [agent('a', 2), agent('b', 4)]);
    assert.deepEqual(plan.assignments, [{ taskId: 't1', agentId: 'b', slotIds: [0, 1, 2] }]);
  });
  it('best fit packs onto the fullest agent that fits', () => {
    const plan = schedule([task('t1')], [agent('a', 4, 4), agent('b', 4, 1)]);
    assert.equal(plan.assignments[0].agentId, 'b');
    assert.deepEqual(plan.assignments[0].slotIds, [3]);
  });
  it('ties go to the lowest agent id', () => {
    const plan = schedule([task('t1')], [agent('z', 2), agent('m', 2)]);
    assert.equal(plan.assignments[0].agentId, 'm');
  });
  it('explains a task bigger than any agent', () => {
    const plan = schedule([task('t1', { slots: 8 })], [agent('a', 2)]);
    assert.equal(plan.assignments.length, 0);
    assert.match(plan.waiting.get('t1')!, /needs 8 slots on one agent but the largest agent in resource pool 'default' has 2/);
  });
  it('explains an empty pool', () => {
    const plan = schedule([task('t1', { pool: 'gpu' })], [agent('a', 2)]);
    assert.match(plan.waiting.get('t1')!, /no connected, enabled agents in resource pool 'gpu'/);
  });
  it('lets smaller tasks use capacity a blocked big task cannot', () => {
    const plan = schedule([task('t1', { slots: 4 }), task('t2')], [agent('a', 4, 2)]);
    assert.deepEqual(plan.assignments.map((a) => a.taskId), ['t2']);
    assert.ok(plan.waiting.has('t1'));
  });
  it('skips unschedulable agents and other pools', () => {
    const plan = schedule([task('t1')], [agent('a', 2, 2, { schedulable: false }), agent('b', 2, 2, { pool: 'other' })]);
    assert.equal(plan.assignments.length, 0);
  });
  it('zero-slot tasks go to the agent with the most free slots and take none', () => {
    const plan = schedule([task('t1', { slots: 0 })], [agent('a', 4, 1), agent('b', 4, 3)]);
    assert.deepEqual(plan.assignments, [{ taskId: 't1', agentId: 'b', slotIds: [] }]);
  });
  it('does not mutate its inputs', () => {
    const agents = [agent('a', 2)];
    const before = JSON.stringify(agents);
    schedule([task('t1'), task('t2')], agents);
    assert.equal(JSON.stringify(agents), before);
  });

  it('breaks FIFO ties by seq, then by id', () => {
    const plan = schedule([task('b', { seq: 2 }), task('c', { seq: 1 }), task('a', { seq: 2 })], [agent('x', 2)]);
    assert.deepEqual(plan.assignments.map((a) => a.taskId), ['c', 'a']);
    assert.deepEqual([...plan.waiting.keys()], ['b']);
  });
  it('orders priority before FIFO across many tasks', () => {
    const tasks = [task('t1', { priority: 50 }), task('t2', { priority: 1 }), task('t3', { priority: 99 }), task('t4', { priority: 1 }), task('t5')];
    const plan = schedule(tasks, [agent('a', 5)]);
    assert.deepEqual(plan.assignments.map((a) => a.taskId), ['t2', 't4', 't5', 't1', 't3']);
    assert.deepEqual(plan.assignments.map((a) => a.slotIds[0]), [0, 1, 2, 3, 4]);
  });
  it('worst fit spreads onto the agent with the most free slots', () => {
    const agents = [agent('a', 4, 4), agent('b', 4, 1)];
    assert.equal(schedule([task('t1')], agents, { policies: { default: policy({ fitting: 'worst' }) } }).assignments[0].agentId, 'a');
    assert.equal(schedule([task('t1')], agents, { policies: new Map([['default', policy({ fitting: 'best' })]]) }).assignments[0].agentId, 'b');
  });
  it('best fit packs agents one by one, worst fit spreads one task per agent', () => {
    const tasks = ['t1', 't2', 't3', 't4'].map((id) => task(id));
    const agents = [agent('a', 2), agent('b', 2), agent('c', 2), agent('d', 2)];
    const packed = schedule(tasks, agents, { defaultPolicy: policy({ fitting: 'best' }) });
    assert.deepEqual(packed.assignments.map((a) => a.agentId), ['a', 'a', 'b', 'b']);
    const spread = schedule(tasks, agents, { defaultPolicy: policy({ fitting: 'worst' }) });
    assert.deepEqual(spread.assignments.map((a) => a.agentId), ['a', 'b', 'c', 'd']);
  });
  it('uses each pool’s own policy and the default policy for the others', () => {
    const agents = [agent('a', 4, 4, { pool: 'p1' }), agent('b', 4, 1, { pool: 'p1' }), agent('c', 4, 4, { pool: 'p2' }), agent('d', 4, 1, { pool: 'p2' })];
    const plan = schedule([task('t1', { pool: 'p1' }), task('t2', { pool: 'p2' })], agents, { policies: { p1: policy({ fitting: 'worst' }) } });
    assert.deepEqual(plan.assignments.map((a) => a.agentId), ['a', 'd']);
  });
  it('does not split a task across agents even when the pool has enough free slots in all', () => {
    const plan = schedule([task('t1', { slots: 3 })], [agent('a', 4, 2), agent('b', 4, 2)]);
    assert.equal(plan.assignments.length, 0);
    assert.equal(plan.waiting.get('t1'), "waiting for 3 free slots on one agent in resource pool 'default' (at most 2 free now)");
  });
  it('words wait reasons from the state at the end of the pass', () => {
    const plan = schedule([task('t1', { slots: 4, priority: 1 }), task('t2'), task('t3'), task('t4')], [agent('a', 4, 3)]);
    assert.deepEqual(plan.assignments.map((a) => a.taskId), ['t2', 't3', 't4']);
    assert.match(plan.waiting.get('t1')!, /at most 0 free now/);
  });
  it('counts only enabled slots: a task bigger than the enabled slots says so', () => {
    const plan = schedule([task('t1', { slots: 3 })], [agent('a', 4, 2, { slotIds: [0, 1], freeSlotIds: [0, 1] })]);
    assert.match(plan.waiting.get('t1')!, /largest agent in resource pool 'default' has 2 enabled slots/);
  });
  it('zero-slot tasks go where the fewest zero-slot tasks run, up to the cap', () => {
    const agents = [agent('a', 4, 4, { zeroSlotTasks: 1 }), agent('b', 4, 0, { zeroSlotTasks: 0 })];
    const plan = schedule([task('z1', { slots: 0 }), task('z2', { slots: 0 }), task('z3', { slots: 0 }), task('z4', { slots: 0 })], agents, { defaultPolicy: policy({ maxZeroSlotTasksPerAgent: 2 }) });
    // b has fewer (0 < 1); then a and b tie at 1 and a has more free slots; then only b is under the cap.
    assert.deepEqual(plan.assignments.map((a) => [a.taskId, a.agentId]), [['z1', 'b'], ['z2', 'a'], ['z3', 'b']]);
    assert.equal(plan.waiting.get('z4'), "waiting for an agent in resource pool 'default' with fewer than 2 zero-slot tasks: all 2 agents are at the cap");
  });
  it('zero-slot tasks need no free slot and do not use any', () => {
    const plan = schedule([task('z1', { slots: 0 }), task('t2', { slots: 2 })], [agent('a', 2, 2)]);
    assert.deepEqual(plan.assignments, [{ taskId: 'z1', agentId: 'a', slotIds: [] }, { taskId: 't2', agentId: 'a', slotIds: [0, 1] }]);
  });
  it('never places on an unschedulable agent, whatever it has free', () => {
    const plan = schedule([task('t1'), task('z2', { slots: 0 })], [agent('a', 8, 8, { schedulable: false }), agent('b', 1, 0)]);
    assert.deepEqual(plan.assignments.map((a) => [a.taskId, a.agentId]), [['z2', 'b']]);
    assert.match(plan.waiting.get('t1')!, /at most 0 free now/);
  });
  it('gives the same plan for the same snapshot in any order', () => {
    const rnd = rng(7);
    for (let round = 0; round < 20; round++) {
      const { tasks, agents } = randomSnapshot(rnd);
      for (const fitting of ['best', 'worst'] as const) {
        const opts = { defaultPolicy: policy({ fitting, maxZeroSlotTasksPerAgent: 3 }) };
        const a = schedule(tasks, agents, opts);
        const b = schedule(shuffle(tasks, rnd), shuffle(agents, rnd).map((x) => ({ ...x, freeSlotIds: shuffle(x.freeSlotIds, rnd) })), opts);
        assert.deepEqual(flat(b), flat(a));
      }
    }
  });
  it('matches a plain scan over all agents on random snapshots', () => {
    const rnd = rng(11);
    for (let round = 0; round < 200; round++) {
      const { tasks, agents } = randomSnapshot(rnd);
      for (const fitting of ['best', 'worst'] as const) {
        const pol = policy({ fitting, maxZeroSlotTasksPerAgent: 3 });
        const plan = schedule(tasks, agents, { defaultPolicy: pol });
        assert.deepEqual(plan.assignments, reference(tasks, agents, pol), `round ${round} ${fitting}`);
        assert.equal(plan.assignments.length + plan.waiting.size, tasks.length);
      }
    }
  });
});

function policy(over: Partial<PoolPolicy> = {}): PoolPolicy {
  return { fitting: 'best', preemption: false, maxZeroSlotTasksPerAgent: 100, ...over };
}

function flat(p: SchedulePlan) {
  return { assignments: p.assignments, waiting: [...p.waiting], preemptions: p.preemptions };
}

/** The placement rules restated as a scan over every agent per task (the spec, not the fast path). */
function reference(tasks: PendingTask[], agents: AgentCapacity[], pol: PoolPolicy) {
  const live = agents.filter((a) => a.schedulable).map((a) => ({ ...a, free: [...a.freeSlotIds].sort((x, y) => x - y), zero: a.zeroSlotTasks ?? 0 }));
  const out: { taskId: string; agentId: string; slotIds: number[] }[] = [];
  for (const t of [...tasks].sort(byPriorityThenFifo)) {
    let best: (typeof live)[number] | undefined;
    for (const a of live) {
      if (a.pool !== t.pool) continue;
      if (t.slots === 0) {
        if (a.zero >= pol.maxZeroSlotTasksPerAgent) continue;
        if (!best || a.zero < best.zero || (a.zero === best.zero && (a.free.length > best.free.length || (a.free.length === best.free.length && a.id < best.id)))) best = a;
      } else {
        if (a.free.length < t.slots) continue;
        const better = pol.fitting === 'best' ? a.free.length < best?.free.length! : a.free.length > best?.free.length!;
        if (!best || better || (a.free.length === best.free.length && a.id < best.id)) best = a;
      }
    }
    if (!best) continue;
    if (t.slots === 0) best.zero++;
    out.push({ taskId: t.id, agentId: best.id, slotIds: best.free.splice(0, t.slots) });
  }
  return out;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(xs: readonly T[], rnd: () => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

function randomSnapshot(rnd: () => number): { tasks: PendingTask[]; agents: AgentCapacity[] } {
  const int = (n: number) => Math.floor(rnd() * n);
  const pools = ['p0', 'p1'];
  const agents: AgentCapacity[] = Array.from({ length: 1 + int(12) }, (_, i) => {
    const total = int(9);
    const slotIds = Array.from({ length: total }, (_, s) => s);
    return { id: `a${int(1000)}-${i}`, pool: pools[int(2)], schedulable: rnd() < 0.9, slotIds, freeSlotIds: slotIds.filter(() => rnd() < 0.6), zeroSlotTasks: int(4) };
  });
  const tasks: PendingTask[] = Array.from({ length: int(40) }, (_, i) => ({ id: `t${i}`, pool: pools[int(2)], slots: [0, 1, 1, 1, 2, 3, 4, 8][int(8)], priority: [1, 42, 42, 99][int(4)], seq: int(20) }));
  return { tasks, agents };
}
