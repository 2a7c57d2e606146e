// A 4-slot pool's scaling settings for the provisioner's table tests, timers in minutes.
import type { PoolScaling } from '../../master/provisioner/types';

const MIN = 60_000;

/** One g5.12xlarge-like type (4 slots), two subnets, 0..10 instances, idle 5 min, starting 10 min. */
export function testPool(over: Partial<PoolScaling> = {}): PoolScaling {
  return {
    pool: 'gpu',
    instanceTypes: [{ instanceType: 'g5.12xlarge', slots: 4 }],
    subnetIds: ['subnet-a', 'subnet-b'],
    spot: false,
    spotOnly: false,
    minInstances: 0,
    maxInstances: 10,
    maxIdleAgentPeriodMs: 5 * MIN,
    maxAgentStartingPeriodMs: 10 * MIN,
    maxDisconnectedPeriodMs: 5 * MIN,
    ...over,
  };
}
