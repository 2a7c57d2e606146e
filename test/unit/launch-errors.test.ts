import { strict as assert } from 'node:assert';
import { decide } from '../../master/provisioner/decider';
import {
  CAPACITY_RETRY_MS, classifyEc2Error, emptyLaunchMemory, onLaunchFailure, onLaunchSuccess, type LaunchFailure, type OfferingKey,
} from '../../master/provisioner/launch-errors';
import type { LaunchErrorKind, LaunchMemory, PoolScaling } from '../../master/provisioner/types';

const MIN = 60_000;
const NOW = 1_000 * MIN;
const g5a: OfferingKey = { instanceType: 'g5.12xlarge', subnetId: 'subnet-a', spot: false };
const capacity: LaunchFailure = { kind: 'capacity', code: 'InsufficientInstanceCapacity', message: 'We currently do not have sufficient capacity' };
const limit: LaunchFailure = { kind: 'limit', code: 'VcpuLimitExceeded', message: 'You have requested more vCPU capacity than your current vCPU limit' };

describe('provisioner launch errors', () => {
  describe('classifyEc2Error', () => {
    const rows: [string, LaunchErrorKind][] = [
      ['InsufficientInstanceCapacity', 'capacity'],
      ['InsufficientCapacity', 'capacity'],
      ['UnfulfillableCapacity', 'capacity'],
      ['capacity-not-available', 'capacity'],
      ['MaxSpotInstanceCountExceeded', 'capacity'],
      ['SpotMaxPriceTooLow', 'capacity'],
      ['InsufficientFreeAddressesInSubnet', 'capacity'],
      ['VcpuLimitExceeded', 'limit'],
      ['InstanceLimitExceeded', 'limit'],
      ['UnauthorizedOperation', 'auth'],
      ['AuthFailure', 'auth'],
      ['InvalidClientTokenId', 'auth'],
      ['Blocked', 'auth'],
      ['RequestLimitExceeded', 'other'],
      ['InvalidAMIID.NotFound', 'other'],
      ['', 'other'],
    ];
    for (const [code, kind] of rows) it(`${code || '(empty)'} -> ${kind}`, () => assert.equal(classifyEc2Error(code), kind));
  });

  describe('backoff after limit/auth/other', () => {
    const rows: { name: string; random: number; delaysS: number[] }[] = [
      { name: 'no jitter drawn: 30 s doubling, capped at 10 min', random: 0, delaysS: [30, 60, 120, 240, 480, 600, 600, 600] },
      { name: 'full jitter drawn: 20% earlier, cap included', random: 1, delaysS: [24, 48, 96, 192, 384, 480, 480] },
      { name: 'half jitter drawn', random: 0.5, delaysS: [27, 54, 108, 216, 432, 540] },
    ];
    for (const row of rows) {
      it(row.name, () => {
        let m = emptyLaunchMemory();
        row.delaysS.forEach((want, n) => {
          const at = NOW + n * 1000;
          m = onLaunchFailure(m, n % 2 ? limit : { kind: 'auth', code: 'AuthFailure', message: 'bad credentials' }, g5a, at, () => row.random);
          assert.equal(m.nextLaunchAtMs - at, want * 1000, `failure ${n + 1}`);
          assert.equal(m.consecutiveFailures, n + 1);
          assert.deepEqual(m.failedOfferings, []);
        });
      });
    }

    it('records the last error', () => {
      const m = onLaunchFailure(emptyLaunchMemory(), limit, g5a, NOW, () => 0);
      assert.deepEqual(m.lastError, { atMs: NOW, kind: 'limit', code: 'VcpuLimitExceeded', message: limit.message, instanceType: 'g5.12xlarge', subnetId: 'subnet-a' });
    });
  });

  describe('capacity', () => {
    it('remembers the offering for a while, no backoff, and the decider moves on at once', () => {
      const m = onLaunchFailure(emptyLaunchMemory(), capacity, g5a, NOW, () => 0);
      assert.deepEqual(m.failedOfferings, [{ ...g5a, untilMs: NOW + CAPACITY_RETRY_MS }]);
      assert.equal(m.nextLaunchAtMs, 0);
      assert.equal(m.consecutiveFailures, 0);
      assert.equal(m.lastError?.code, 'InsufficientInstanceCapacity');
      const plan = decide({ nowMs: NOW + 1000, pool: pool({ subnetIds: ['subnet-a', 'subnet-b'] }), instances: [], pending: [{ id: 't1', slots: 1 }], memory: m });
      assert.deepEqual(plan.launch, [{ instanceType: 'g5.12xlarge', subnetId: 'subnet-b', spot: false, count: 1 }]);
    });

    it('expires: dropped from memory and tried again after the window', () => {
      let m = onLaunchFailure(emptyLaunchMemory(), capacity, g5a, NOW, () => 0);
      const b = { ...g5a, subnetId: 'subnet-b' };
      m = onLaunchFailure(m, capacity, b, NOW + CAPACITY_RETRY_MS, () => 0);
      assert.deepEqual(m.failedOfferings, [{ ...b, untilMs: NOW + 2 * CAPACITY_RETRY_MS }]);
      const plan = decide({ nowMs: NOW + CAPACITY_RETRY_MS, pool: pool({ subnetIds: ['subnet-a', 'subnet-b'] }), instances: [], pending: [{ id: 't1', slots: 1 }], memory: m });
      assert.deepEqual(plan.launch.map((l) => l.subnetId), ['subnet-a']);
    });

    it('a second failure of the same offering restarts its window', () => {
      let m = onLaunchFailure(emptyLaunchMemory(), capacity, g5a, NOW, () => 0);
      m = onLaunchFailure(m, capacity, g5a, NOW + MIN, () => 0);
      assert.deepEqual(m.failedOfferings, [{ ...g5a, untilMs: NOW + MIN + CAPACITY_RETRY_MS }]);
    });
  });

  describe('success', () => {
    it('resets the backoff and keeps failed offerings still in their window', () => {
      const before: LaunchMemory = {
        failedOfferings: [
          { ...g5a, spot: true, untilMs: NOW + 1 },
          { ...g5a, subnetId: 'subnet-b', untilMs: NOW },
          { ...g5a, untilMs: NOW + MIN },
        ],
        consecutiveFailures: 4,
        nextLaunchAtMs: NOW - 1,
        lastError: { atMs: NOW - MIN, kind: 'limit', code: 'VcpuLimitExceeded', message: 'x', instanceType: 'g5.12xlarge', subnetId: 'subnet-a' },
      };
      const frozen = JSON.stringify(before);
      const m = onLaunchSuccess(before, g5a, NOW);
      assert.equal(JSON.stringify(before), frozen, 'input not mutated');
      // The expired one goes; so does the offering that just worked.
      assert.deepEqual(m.failedOfferings, [{ ...g5a, spot: true, untilMs: NOW + 1 }]);
      assert.equal(m.consecutiveFailures, 0);
      assert.equal(m.nextLaunchAtMs, 0);
      assert.deepEqual(m.lastError, before.lastError);
      // Backoff starts from the bottom again.
      assert.equal(onLaunchFailure(m, limit, g5a, NOW, () => 0).nextLaunchAtMs, NOW + 30_000);
    });
  });

  describe('a 10-minute outage costs at most 12 RunInstances calls per pool', () => {
    // 2 types x 3 subnets x (spot, on-demand) = 12 offerings; demand for 4 instances.
    const outagePool = pool({
      instanceTypes: [{ instanceType: 'g5.12xlarge', slots: 4 }, { instanceType: 'g6.12xlarge', slots: 4 }],
      subnetIds: ['subnet-a', 'subnet-b', 'subnet-c'],
      spot: true,
    });
    /** Every second an event and every 10 s a tick ask the decider; every launch fails with `err`. */
    const outage = (err: LaunchFailure, random: () => number) => {
      let memory = emptyLaunchMemory();
      const calls: OfferingKey[] = [];
      for (let t = 0; t < 600; t++) {
        const nowMs = NOW + t * 1000;
        for (let pass = 0; pass < (t % 10 === 0 ? 2 : 1); pass++) {
          const plan = decide({ nowMs, pool: outagePool, instances: [], pending: [4, 4, 4, 1, 1].map((slots, i) => ({ id: `t${i}`, slots })), memory });
          for (const l of plan.launch) {
            calls.push({ instanceType: l.instanceType, subnetId: l.subnetId, spot: l.spot });
            memory = onLaunchFailure(memory, err, l, nowMs, random);
          }
        }
      }
      return calls;
    };

    it('capacity (InsufficientInstanceCapacity everywhere): every offering tried once, spot before on-demand', () => {
      const calls = outage(capacity, Math.random);
      assert.ok(calls.length <= 12, `${calls.length} calls`);
      const distinct = new Set(calls.map((c) => `${c.instanceType}/${c.subnetId}/${c.spot}`));
      assert.equal(distinct.size, 12, 'each offering tried');
      assert.equal(calls.length, 12, 'and only once');
      assert.deepEqual(calls.slice(0, 6).map((c) => [c.instanceType, c.spot]), Array(3).fill(['g5.12xlarge', true]).concat(Array(3).fill(['g5.12xlarge', false])));
    });

    for (const [name, random] of [['shortest jitter', () => 1], ['no jitter', () => 0]] as const) {
      it(`limit (VcpuLimitExceeded), ${name}: backs off, probing with one request`, () => {
        const calls = outage(limit, random);
        assert.ok(calls.length <= 12, `${calls.length} calls`);
        assert.ok(calls.length >= 4, `still retries: ${calls.length} calls`);
      });
    }
  });
});

function pool(over: Partial<PoolScaling> = {}): PoolScaling {
  return {
    pool: 'gpu', instanceTypes: [{ instanceType: 'g5.12xlarge', slots: 4 }], subnetIds: ['subnet-a'], spot: false, spotOnly: false,
    minInstances: 0, maxInstances: 10, maxIdleAgentPeriodMs: 5 * MIN, maxAgentStartingPeriodMs: 10 * MIN, maxDisconnectedPeriodMs: 5 * MIN, ...over,
  };
}
