import { strict as assert } from 'node:assert';
import { decide } from '../../master/provisioner/decider';
import { testPool } from '../support/pool-scaling';
import type { InstanceView, PendingTask, PoolScaling, ScalePlan, ScaleSnapshot, TaskView } from '../../master/provisioner/types';

const MIN = 60_000;
const NOW = 1_000 * MIN;

const pool = (over: Partial<PoolScaling> = {}): PoolScaling =>
  testPool({ subnetIds: ['subnet-a'], consolidation: { enabled: true, maxCheckpointAgeMs: 2 * MIN, minUnderusedPeriodMs: 0 }, ...over });
/** A task of `slots` slots whose latest checkpoint is `ckptMinAgo` minutes old (null: none). */
const task = (id: string, slots: number, ckptMinAgo: number | null, stopping = false): TaskView => ({
  id, slots, lastCheckpointAtMs: ckptMinAgo === null ? null : NOW - ckptMinAgo * MIN, stopping,
});
/** A connected 4-slot agent running `tasks`. */
const agent = (id: string, tasks: TaskView[], over: Partial<InstanceView> = {}): InstanceView => {
  const used = tasks.reduce((n, t) => n + t.slots, 0);
  const cordoned = over.cordoned ?? false;
  return {
    id, instanceType: 'g5.12xlarge', subnetId: 'subnet-a', state: 'running', launchedAtMs: NOW - 60 * MIN,
    agentEverConnected: true, agentConnected: true, disconnectedSinceMs: null, agentDisabled: cordoned,
    runningTasks: tasks.length, idleSinceMs: tasks.length === 0 ? NOW - MIN : null, slots: 4, freeSlots: 4 - used,
    tasks, cordoned, underusedSinceMs: null, ...over,
  };
};
const pending = (...slots: number[]): PendingTask[] => slots.map((n, i) => ({ id: `q${i + 1}`, slots: n }));
const snap = (instances: InstanceView[], over: Partial<ScaleSnapshot> = {}): ScaleSnapshot => ({
  nowMs: NOW, pool: pool(), instances, pending: [], memory: { failedOfferings: [], consecutiveFailures: 0, nextLaunchAtMs: 0, lastError: null }, ...over,
});

interface Expect {
  cordon?: string[];
  uncordon?: string[];
  /** Task ids. */
  move?: string[];
  terminate?: string[];
  underused?: string[];
  launch?: number;
}

const rows: { name: string; s: ScaleSnapshot; want: Expect }[] = [
  {
    name: 'off by default: nothing moves',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])], { pool: pool({ consolidation: undefined }) }),
    want: {},
  },
  {
    name: 'disabled in the pool: nothing moves',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])], { pool: pool({ consolidation: { enabled: false, maxCheckpointAgeMs: 2 * MIN, minUnderusedPeriodMs: 0 } }) }),
    want: {},
  },
  {
    name: 'the least used instance is cordoned and its freshly checkpointed task moves to the fuller one',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])]),
    want: { cordon: ['i-1'], move: ['a'], underused: ['i-1'] },
  },
  {
    name: 'a task whose latest checkpoint is too old waits (cordoned) for its next one',
    s: snap([agent('i-1', [task('a', 1, 7)]), agent('i-2', [task('b', 2, 1)])]),
    want: { cordon: ['i-1'], underused: ['i-1'] },
  },
  {
    name: 'a task that never stored a checkpoint is never moved, and its instance is not cordoned',
    s: snap([agent('i-1', [task('a', 1, null)]), agent('i-2', [task('b', 2, 1)])]),
    want: { underused: ['i-2'], cordon: ['i-2'], move: ['b'] },
  },
  {
    name: 'tasks that do not fit on the other busy instances stay',
    s: snap([agent('i-1', [task('a', 2, 1)]), agent('i-2', [task('b', 3, 1)])]),
    want: {},
  },
  {
    name: 'idle instances are no targets (they are about to be terminated)',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [], { idleSinceMs: NOW - MIN })]),
    want: {},
  },
  {
    name: 'queued work takes the free slots first: nothing left for a move',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])], { pending: pending(3) }),
    want: {},
  },
  {
    name: 'no consolidation while new instances are needed',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])], { pending: pending(4) }),
    want: { launch: 1 },
  },
  {
    name: 'an instance that receives moved tasks is not emptied itself, and a source is no target',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 1, 1)]), agent('i-3', [task('c', 2, 1)])]),
    want: { cordon: ['i-1', 'i-2'], move: ['a', 'b'], underused: ['i-1', 'i-2'] },
  },
  {
    name: 'a cordoned instance keeps moving its tasks as their checkpoints become fresh; stopping ones are not moved twice',
    s: snap([agent('i-1', [task('a', 1, 1, true), task('b', 1, 0.5)], { cordoned: true }), agent('i-2', [task('c', 2, 1)])]),
    want: { move: ['b'], underused: ['i-1'] },
  },
  {
    name: 'a cordoned instance whose tasks no longer fit elsewhere is uncordoned',
    s: snap([agent('i-1', [task('a', 2, 1)], { cordoned: true }), agent('i-2', [task('c', 3, 1)])]),
    want: { uncordon: ['i-1'] },
  },
  {
    name: 'queued work that fits only on a cordoned instance lifts the cordon instead of launching',
    s: snap([agent('i-1', [task('a', 1, 1, true)], { cordoned: true }), agent('i-2', [task('c', 4, 1)])], { pending: pending(2) }),
    want: { uncordon: ['i-1'] },
  },
  {
    name: 'an emptied cordoned instance is terminated at once',
    s: snap([agent('i-1', [], { cordoned: true, idleSinceMs: NOW - 10_000 }), agent('i-2', [task('c', 2, 1)])]),
    want: { terminate: ['i-1'] },
  },
  {
    name: 'an emptied cordoned instance at min_instances is uncordoned, not terminated',
    s: snap([agent('i-1', [], { cordoned: true, idleSinceMs: NOW - 10_000 }), agent('i-2', [task('c', 2, 1)])], { pool: pool({ minInstances: 2 }) }),
    want: { uncordon: ['i-1'] },
  },
  {
    name: 'at min_instances nothing is emptied (it would only be uncordoned again)',
    s: snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])], { pool: pool({ minInstances: 2 }) }),
    want: {},
  },
  {
    name: 'hysteresis: underused for less than min_underused_period: reported, not cordoned',
    s: snap([agent('i-1', [task('a', 1, 1)], { underusedSinceMs: NOW - 2 * MIN }), agent('i-2', [task('b', 2, 1)])], { pool: pool({ consolidation: { enabled: true, maxCheckpointAgeMs: 2 * MIN, minUnderusedPeriodMs: 5 * MIN } }) }),
    want: { underused: ['i-1', 'i-2'] },
  },
  {
    name: 'hysteresis: underused for min_underused_period: cordoned and moved',
    s: snap([agent('i-1', [task('a', 1, 1)], { underusedSinceMs: NOW - 5 * MIN }), agent('i-2', [task('b', 2, 1)])], { pool: pool({ consolidation: { enabled: true, maxCheckpointAgeMs: 2 * MIN, minUnderusedPeriodMs: 5 * MIN } }) }),
    want: { cordon: ['i-1'], move: ['a'], underused: ['i-1'] },
  },
  {
    name: 'an instance disabled for another reason (det agent disable) is left alone',
    s: snap([agent('i-1', [task('a', 1, 1)], { agentDisabled: true }), agent('i-2', [task('b', 2, 1)])]),
    want: {},
  },
  {
    name: 'tasks the service cannot see (unknown) are never moved',
    s: snap([agent('i-1', [task('a', 1, 1)], { runningTasks: 2 }), agent('i-2', [task('b', 2, 1)])]),
    want: { cordon: ['i-2'], move: ['b'], underused: ['i-2'] },
  },
];

describe('provisioner consolidation (decide step 5)', () => {
  for (const row of rows) {
    it(row.name, () => {
      const plan: ScalePlan = decide(row.s);
      assert.deepEqual(plan.cordon.map((c) => c.id), row.want.cordon ?? [], 'cordon');
      assert.deepEqual(plan.uncordon.map((c) => c.id), row.want.uncordon ?? [], 'uncordon');
      assert.deepEqual(plan.move.map((m) => m.taskId), row.want.move ?? [], 'move');
      assert.deepEqual(plan.terminate.map((t) => t.id), row.want.terminate ?? [], 'terminate');
      assert.deepEqual(plan.underused, row.want.underused ?? [], 'underused');
      assert.equal(plan.launch.reduce((n, l) => n + l.count, 0), row.want.launch ?? 0, 'launched instances');
      for (const x of [...plan.cordon, ...plan.uncordon, ...plan.move]) assert.ok(x.reason.length > 0);
      // Safety: a busy instance is never terminated.
      for (const t of plan.terminate) assert.equal(row.s.instances.find((i) => i.id === t.id)!.runningTasks, 0);
    });
  }

  it('moves name the instance they empty', () => {
    const plan = decide(snap([agent('i-1', [task('a', 1, 1)]), agent('i-2', [task('b', 2, 1)])]));
    assert.deepEqual(plan.move.map((m) => m.id), ['i-1']);
    assert.match(plan.move[0].reason, /checkpoint of 60s ago/);
  });
});
