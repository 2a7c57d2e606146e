import { strict as assert } from 'node:assert';
import { schedule, type AgentCapacity, type PendingTask } from '../../master/scheduler/scheduler';

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
});
