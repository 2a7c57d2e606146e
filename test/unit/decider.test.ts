import { strict as assert } from 'node:assert';
import { decide } from '../../master/provisioner/decider';
import { testPool } from '../support/pool-scaling';
import type { InstanceView, LaunchMemory, PendingTask, PoolScaling, ScalePlan, ScaleSnapshot } from '../../master/provisioner/types';

const MIN = 60_000;
const NOW = 1_000 * MIN;

const pool = testPool;
const memory = (over: Partial<LaunchMemory> = {}): LaunchMemory => ({ failedOfferings: [], consecutiveFailures: 0, nextLaunchAtMs: 0, lastError: null, ...over });
/** A connected agent; busy with `running` tasks using `slots - free` slots, or idle since `idleMinAgo`. */
const agent = (id: string, over: Partial<InstanceView> & { idleMinAgo?: number } = {}): InstanceView => {
  const { idleMinAgo, ...rest } = over;
  const running = rest.runningTasks ?? 0;
  return {
    id, instanceType: 'g5.12xlarge', subnetId: 'subnet-a', state: 'running', launchedAtMs: NOW - 60 * MIN,
    agentEverConnected: true, agentConnected: true, disconnectedSinceMs: null, agentDisabled: false,
    runningTasks: running, idleSinceMs: running === 0 ? NOW - (idleMinAgo ?? 1) * MIN : null,
    slots: 4, freeSlots: running === 0 ? 4 : 0, ...rest,
  };
};
/** An instance whose agent has not connected yet, launched `minAgo` minutes ago. */
const booting = (id: string, minAgo: number, over: Partial<InstanceView> = {}): InstanceView => agent(id, {
  state: 'pending', launchedAtMs: NOW - minAgo * MIN, agentEverConnected: false, agentConnected: false, idleSinceMs: null, ...over,
});
const tasks = (...slots: number[]): PendingTask[] => slots.map((n, i) => ({ id: `t${i + 1}`, slots: n }));
const snap = (over: Partial<ScaleSnapshot> = {}): ScaleSnapshot => ({ nowMs: NOW, pool: pool(), instances: [], pending: [], memory: memory(), ...over });

/** The parts of a plan a row asserts; omitted parts must be empty. */
interface Expect {
  launch?: ScalePlan['launch'];
  terminate?: string[];
  disable?: string[];
  unschedulable?: string[];
}

const rows: { name: string; s: ScaleSnapshot; want: Expect; also?: (p: ScalePlan) => void }[] = [
  {
    name: 'no demand, no instances: nothing',
    s: snap(),
    want: {},
  },
  {
    name: 'demand fits on free slots of a connected agent: no launch',
    s: snap({ instances: [agent('i-1', { runningTasks: 1, freeSlots: 3 })], pending: tasks(1, 2) }),
    want: {},
  },
  {
    name: 'demand fits on a starting instance: no launch',
    s: snap({ instances: [booting('i-1', 2)], pending: tasks(2, 1, 1) }),
    want: {},
  },
  {
    name: 'only what does not fit on starting capacity is launched',
    s: snap({ instances: [booting('i-1', 2)], pending: tasks(4, 1) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }] },
  },
  {
    name: 'disabled agents are not capacity',
    s: snap({ instances: [agent('i-1', { agentDisabled: true, runningTasks: 1, freeSlots: 3 })], pending: tasks(1) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }] },
  },
  {
    name: 'bin-packing: seven 1-slot tasks and a 2-slot task need three 4-slot instances, spread over subnets',
    s: snap({ pending: tasks(1, 1, 1, 1, 1, 1, 1, 2) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 2 }, { instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }] },
  },
  {
    name: 'bin-packing: first instance type that fits each task',
    s: snap({ pool: pool({ instanceTypes: [{ instanceType: 'g5.xlarge', slots: 1 }, { instanceType: 'g5.12xlarge', slots: 4 }], subnetIds: ['subnet-a'] }), pending: tasks(1, 4, 1) }),
    want: { launch: [{ instanceType: 'g5.xlarge', subnetId: 'subnet-a', spot: false, count: 2 }, { instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 1 }] },
  },
  {
    name: 'max_instances caps launches (counting every non-terminated instance)',
    s: snap({ pool: pool({ maxInstances: 3 }), instances: [agent('i-1', { runningTasks: 1 }), agent('i-2', { state: 'shutting-down', runningTasks: 1 }), agent('i-3', { state: 'terminated' })], pending: tasks(4, 4, 4) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }] },
  },
  {
    name: 'min_instances: launch up to min without demand',
    s: snap({ pool: pool({ minInstances: 3 }), instances: [agent('i-1')] }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }, { instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 1 }] },
  },
  {
    name: 'min_instances: idle agents at min are kept',
    s: snap({ pool: pool({ minInstances: 2 }), instances: [agent('i-1', { idleMinAgo: 60 }), agent('i-2', { idleMinAgo: 60 })] }),
    want: {},
  },
  {
    name: 'unschedulable: a task bigger than every instance type is reported, not launched for',
    s: snap({ pending: [{ id: 'big', slots: 16 }, { id: 'ok', slots: 1 }] }),
    want: { unschedulable: ['big'], launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 1 }] },
    also: (p) => assert.equal(p.unschedulable[0].reason, 'needs 16 slots but the largest instance type of pool gpu (g5.12xlarge) offers 4'),
  },
  {
    name: 'starting timeout: agent never connected within max_agent_starting_period -> terminate (capacity relaunched)',
    s: snap({ instances: [booting('i-1', 10, { state: 'running' }), booting('i-2', 9)], pending: tasks(4, 4) }),
    want: { terminate: ['i-1'], launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }] },
    also: (p) => assert.match(p.terminate[0].reason, /did not connect within 10m/),
  },
  {
    name: 'disconnected timeout: disconnected longer than max_disconnected_period -> terminate; shorter -> keep',
    s: snap({ instances: [
      agent('i-1', { agentConnected: false, disconnectedSinceMs: NOW - 6 * MIN, idleSinceMs: null }),
      agent('i-2', { agentConnected: false, disconnectedSinceMs: NOW - 4 * MIN, idleSinceMs: null }),
    ] }),
    want: { terminate: ['i-1'] },
    also: (p) => assert.match(p.terminate[0].reason, /disconnected for 6m/),
  },
  {
    name: 'idle past max_idle_agent_period: disable first',
    s: snap({ instances: [agent('i-1', { idleMinAgo: 6 }), agent('i-2', { idleMinAgo: 4 })] }),
    want: { disable: ['i-1'] },
  },
  {
    name: 'idle and already disabled on the previous pass: terminate',
    s: snap({ instances: [agent('i-1', { idleMinAgo: 6, agentDisabled: true })] }),
    want: { terminate: ['i-1'] },
  },
  {
    name: 'longest idle first, above min only',
    s: snap({ pool: pool({ minInstances: 1 }), instances: [agent('i-1', { idleMinAgo: 7 }), agent('i-2', { idleMinAgo: 30 }), agent('i-3', { idleMinAgo: 9 })] }),
    want: { disable: ['i-2', 'i-3'] },
  },
  {
    name: 'idle capacity needed by pending demand is kept',
    s: snap({ instances: [agent('i-1', { idleMinAgo: 30 }), agent('i-2', { idleMinAgo: 20 })], pending: tasks(2, 2) }),
    want: { disable: ['i-1'] },
  },
  {
    name: 'demand goes to busy agents before idle ones, so the idle one still goes',
    s: snap({ instances: [agent('i-1', { idleMinAgo: 30 }), agent('i-2', { runningTasks: 1, freeSlots: 2 })], pending: tasks(1, 1) }),
    want: { disable: ['i-1'] },
  },
  {
    name: 'busy is never terminated: over max, past every period, disabled, disconnected, never connected',
    s: snap({ pool: pool({ maxInstances: 1 }), pending: tasks(4), instances: [
      agent('i-1', { runningTasks: 2, idleSinceMs: NOW - 100 * MIN, freeSlots: 2 }),
      agent('i-2', { runningTasks: 1, agentDisabled: true, idleSinceMs: NOW - 100 * MIN }),
      agent('i-3', { runningTasks: 1, agentConnected: false, disconnectedSinceMs: NOW - 100 * MIN }),
      booting('i-4', 100, { runningTasks: 1 }),
    ] }),
    want: {},
  },
  {
    name: 'backoff window: no launch at all (terminations still happen)',
    s: snap({ pool: pool({ minInstances: 2 }), memory: memory({ nextLaunchAtMs: NOW + 1, consecutiveFailures: 1 }), pending: tasks(4), instances: [booting('i-1', 11)] }),
    want: { terminate: ['i-1'] },
  },
  {
    name: 'backoff over: after limit errors only one launch request probes',
    s: snap({ memory: memory({ nextLaunchAtMs: NOW, consecutiveFailures: 2 }), pending: tasks(4, 4, 4) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 2 }] },
  },
  {
    name: 'failed offering skipped: next subnet',
    s: snap({ memory: memory({ failedOfferings: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, untilMs: NOW + 1 }] }), pending: tasks(4, 4) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 2 }] },
  },
  {
    name: 'failed offering in every subnet: next instance type',
    s: snap({
      pool: pool({ instanceTypes: [{ instanceType: 'g5.12xlarge', slots: 4 }, { instanceType: 'g6.12xlarge', slots: 4 }] }),
      memory: memory({ failedOfferings: ['subnet-a', 'subnet-b'].map((subnetId) => ({ instanceType: 'g5.12xlarge', subnetId, spot: false, untilMs: NOW + 1 })) }),
      pending: tasks(4),
    }),
    want: { launch: [{ instanceType: 'g6.12xlarge', subnetId: 'subnet-a', spot: false, count: 1 }] },
  },
  {
    name: 'expired failed offering is used again',
    s: snap({ memory: memory({ failedOfferings: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, untilMs: NOW }] }), pending: tasks(4) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 1 }] },
  },
  {
    name: 'every offering failed: nothing to launch',
    s: snap({ memory: memory({ failedOfferings: ['subnet-a', 'subnet-b'].map((subnetId) => ({ instanceType: 'g5.12xlarge', subnetId, spot: false, untilMs: NOW + 1 })) }), pending: tasks(4) }),
    want: {},
  },
  {
    name: 'spot preferred',
    s: snap({ pool: pool({ spot: true, subnetIds: ['subnet-a'] }), pending: tasks(4) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: true, count: 1 }] },
  },
  {
    name: 'spot capacity failed: fall back to on-demand',
    s: snap({ pool: pool({ spot: true, subnetIds: ['subnet-a'] }), memory: memory({ failedOfferings: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: true, untilMs: NOW + 1 }] }), pending: tasks(4) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false, count: 1 }] },
  },
  {
    name: 'spot capacity failed and spot_only: no on-demand fallback',
    s: snap({ pool: pool({ spot: true, spotOnly: true, subnetIds: ['subnet-a'] }), memory: memory({ failedOfferings: [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: true, untilMs: NOW + 1 }] }), pending: tasks(4) }),
    want: {},
  },
  {
    name: 'providers without subnets launch with subnet ""',
    s: snap({ pool: pool({ subnetIds: [] }), pending: tasks(1) }),
    want: { launch: [{ instanceType: 'g5.12xlarge', subnetId: '', spot: false, count: 1 }] },
  },
];

describe('provisioner decide', () => {
  for (const row of rows) {
    it(row.name, () => {
      const plan = decide(row.s);
      assert.deepEqual(plan.launch, row.want.launch ?? [], 'launch');
      assert.deepEqual(plan.terminate.map((t) => t.id), row.want.terminate ?? [], 'terminate');
      assert.deepEqual(plan.disable.map((t) => t.id), row.want.disable ?? [], 'disable');
      assert.deepEqual(plan.unschedulable.map((t) => t.taskId), row.want.unschedulable ?? [], 'unschedulable');
      for (const x of [...plan.terminate, ...plan.disable, ...plan.unschedulable]) assert.ok(x.reason.length > 0);
      row.also?.(plan);
    });
  }

  it('idle: disable, then the next decision terminates the same agent', () => {
    const first = decide(snap({ instances: [agent('i-1', { idleMinAgo: 6 })] }));
    assert.deepEqual(first.disable.map((d) => d.id), ['i-1']);
    assert.deepEqual(first.terminate, []);
    const second = decide(snap({ nowMs: NOW + 10_000, instances: [agent('i-1', { idleMinAgo: 6, agentDisabled: true })] }));
    assert.deepEqual(second.terminate.map((t) => t.id), ['i-1']);
    assert.deepEqual(second.disable, []);
    // Work that landed on it between the two decisions keeps it.
    const busy = decide(snap({ nowMs: NOW + 10_000, instances: [agent('i-1', { agentDisabled: true, runningTasks: 1, idleSinceMs: null })] }));
    assert.deepEqual(busy, { launch: [], terminate: [], disable: [], unschedulable: [], cordon: [], uncordon: [], move: [], underused: [] });
  });

  it('is deterministic: instance order does not matter and inputs are not mutated', () => {
    const instances = [agent('i-3', { idleMinAgo: 9 }), agent('i-1', { idleMinAgo: 9 }), agent('i-2', { idleMinAgo: 9 }), booting('i-4', 11)];
    const s = snap({ pool: pool({ minInstances: 2 }), instances, pending: tasks(4) });
    const before = JSON.stringify(s);
    const a = decide(s);
    assert.equal(JSON.stringify(s), before);
    const b = decide({ ...s, instances: [...instances].reverse() });
    assert.deepEqual(a, b);
    // Equal idle time: ties go by id (i-1 takes the task, i-2 goes, i-3 stays for min_instances).
    assert.deepEqual(a.terminate.map((d) => d.id), ['i-4']);
    assert.deepEqual(a.disable.map((d) => d.id), ['i-2']);
  });
});
