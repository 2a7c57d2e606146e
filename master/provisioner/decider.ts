// The scale decider (Determined's scaledecider): one pure, deterministic function from a
// snapshot of a pool (instances, queued tasks, launch-error memory, the clock) to a plan.
//
// 1. Instances that will never serve are terminated: the agent did not connect within
//    max_agent_starting_period, or stayed disconnected longer than max_disconnected_period.
// 2. Demand is what cannot fit: queued tasks, oldest first, are placed first-fit on the free slots
//    of connected, enabled agents (busy ones first, then idle ones, most recently idle first) and
//    then on all slots of instances still starting. What is left is demand; a task bigger than
//    every instance type is unschedulable, not demand.
// 3. Demand is packed into new instances (first fit, tasks in queue order), each of the first
//    instance type that fits and still has an offering (subnet x market) not remembered as failed;
//    subnets are spread by instance count, spot is preferred when the pool asks for it. Launches
//    top up to min_instances and stop at max_instances; none while the launch backoff runs, and
//    after limit/auth/other errors only one launch request (a probe) until one succeeds.
// 4. Idle agents past max_idle_agent_period and above min_instances, longest idle first and never
//    one the demand of step 2 needs, are first disabled, then terminated by the next decision if
//    still idle. An instance with running tasks is never terminated or disabled, whatever else holds.
// 5. With consolidation enabled and nothing to launch, tasks move off lightly used instances
//    (consolidation.ts); a cordoned instance is uncordoned when queued work needs its slots, and
//    terminated at once when it runs nothing.
import { consolidate } from './consolidation';
import type { InstanceView, Offering, PendingTask, ScalePlan, ScaleSnapshot } from './types';

type LaunchGroup = ScalePlan['launch'][number];

/** The offering one new instance is launched with. */
interface Choice {
  type: Offering;
  subnetId: string;
  spot: boolean;
}

/** Free slots some task may be placed on (simulation only). */
interface Bin {
  id: string;
  free: number;
}

const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** Decides what to launch, disable and terminate now. Pure: inputs are not mutated. */
export function decide(s: ScaleSnapshot): ScalePlan {
  const now = s.nowMs;
  const pool = s.pool;
  const plan: ScalePlan = { launch: [], terminate: [], disable: [], unschedulable: [], cordon: [], uncordon: [], move: [], underused: [] };
  const instances = [...s.instances].sort(byId);
  // Instances on their way out are nobody's capacity; only max_instances still counts them.
  const live = instances.filter((i) => i.state !== 'terminated' && i.state !== 'shutting-down');
  const terminating = new Set<string>();
  const terminate = (i: InstanceView, reason: string) => {
    if (i.runningTasks > 0) return; // never, whatever the reason
    plan.terminate.push({ id: i.id, reason });
    terminating.add(i.id);
  };

  // 1. Instances that will never serve.
  const starting: InstanceView[] = [];
  for (const i of live) {
    if (!i.agentEverConnected && !i.agentConnected) {
      const age = now - i.launchedAtMs;
      if (age >= pool.maxAgentStartingPeriodMs) {
        terminate(i, `agent did not connect within ${fmt(pool.maxAgentStartingPeriodMs)} of launch (max_agent_starting_period)`);
      } else if (i.state === 'pending' || i.state === 'running') {
        starting.push(i);
      }
    } else if (!i.agentConnected && i.disconnectedSinceMs !== null) {
      const gone = now - i.disconnectedSinceMs;
      if (gone >= pool.maxDisconnectedPeriodMs) {
        terminate(i, `agent disconnected for ${fmt(gone)} (max_disconnected_period ${fmt(pool.maxDisconnectedPeriodMs)})`);
      }
    }
  }

  // 2. Demand: what does not fit on connected or starting capacity.
  const idleFor = (i: InstanceView) => (i.idleSinceMs === null ? -1 : now - i.idleSinceMs);
  const isIdleCandidate = (i: InstanceView) =>
    i.agentConnected && i.runningTasks === 0 && i.idleSinceMs !== null && idleFor(i) >= pool.maxIdleAgentPeriodMs;
  const enabled = live.filter((i) => i.agentConnected && !i.agentDisabled);
  const bins: Bin[] = [
    ...enabled.filter((i) => !isIdleCandidate(i)),
    // Of the agents past their idle period, the most recently idle ones are kept first.
    ...enabled.filter(isIdleCandidate).sort((a, b) => idleFor(a) - idleFor(b) || byId(a, b)),
  ]
    .map((i) => ({ id: i.id, free: Math.max(0, i.freeSlots) }))
    .concat(starting.map((i) => ({ id: i.id, free: Math.max(0, i.slots) })));
  const largest = pool.instanceTypes.reduce<Offering | undefined>((m, t) => (m === undefined || t.slots > m.slots ? t : m), undefined);
  const needed = new Set<string>();
  const unmet: PendingTask[] = [];
  // Cordoned agents are capacity of last resort: queued work that fits nowhere else lifts the cordon.
  const cordoned: Bin[] = live.filter((i) => i.cordoned && i.agentConnected && !terminating.has(i.id)).map((i) => ({ id: i.id, free: Math.max(0, i.freeSlots) }));
  const uncordoned = new Set<string>();
  for (const task of s.pending) {
    const bin = bins.find((b) => b.free >= task.slots) ?? cordoned.find((b) => b.free >= task.slots);
    if (bin) {
      bin.free -= task.slots;
      needed.add(bin.id);
      if (cordoned.includes(bin) && !uncordoned.has(bin.id)) {
        uncordoned.add(bin.id);
        plan.uncordon.push({ id: bin.id, reason: 'consolidation stopped: queued work needs its slots' });
      }
    } else if (largest === undefined || task.slots > largest.slots) {
      plan.unschedulable.push({
        taskId: task.id,
        reason: largest === undefined
          ? `needs ${task.slots} slots but pool ${pool.pool} has no instance types`
          : `needs ${task.slots} slots but the largest instance type of pool ${pool.pool} (${largest.instanceType}) offers ${largest.slots}`,
      });
    } else {
      unmet.push(task);
    }
  }

  // 3. Launches.
  if (now >= s.memory.nextLaunchAtMs) plan.launch = launches(s, live, terminating, unmet);

  // 4. Idle agents, above min_instances: disable, then (next decision) terminate. A cordoned agent
  // that runs nothing has been emptied on purpose: terminated at once.
  let spare = live.filter((i) => !terminating.has(i.id)).length - pool.minInstances;
  for (const i of live) {
    if (!i.cordoned || !i.agentConnected || i.runningTasks > 0 || terminating.has(i.id) || uncordoned.has(i.id)) continue;
    if (spare > 0) {
      spare--;
      terminate(i, 'consolidated: its tasks moved to other instances');
    } else {
      uncordoned.add(i.id);
      plan.uncordon.push({ id: i.id, reason: `consolidation stopped: the pool is at min_instances (${pool.minInstances})` });
    }
  }
  const idle = live
    .filter((i) => !terminating.has(i.id) && isIdleCandidate(i) && !needed.has(i.id))
    // Agents already disabled first (finish what was started), then longest idle first.
    .sort((a, b) => Number(b.agentDisabled) - Number(a.agentDisabled) || idleFor(b) - idleFor(a) || byId(a, b));
  for (const i of idle) {
    if (spare <= 0) break;
    spare--;
    const why = `idle for ${fmt(idleFor(i))} (max_idle_agent_period ${fmt(pool.maxIdleAgentPeriodMs)})`;
    if (i.agentDisabled) terminate(i, `${why}, agent disabled`);
    else plan.disable.push({ id: i.id, reason: `${why}: disabled before termination` });
  }

  // 5. Consolidation, only when nothing waits for new capacity.
  // Never below min_instances: an instance emptied there would only be uncordoned again.
  const c = pool.consolidation;
  const kept = live.filter((i) => !terminating.has(i.id)).length;
  if (c?.enabled && unmet.length === 0 && plan.launch.length === 0 && kept > pool.minInstances) {
    const free = new Map(bins.map((b) => [b.id, b.free]));
    const busy = live.filter((i) => i.agentConnected && i.runningTasks > 0 && !terminating.has(i.id) && !uncordoned.has(i.id) && (!i.agentDisabled || i.cordoned));
    const cp = consolidate({ nowMs: now, maxCheckpointAgeMs: c.maxCheckpointAgeMs, minUnderusedPeriodMs: c.minUnderusedPeriodMs, busy, free, needed });
    plan.cordon.push(...cp.cordon);
    plan.uncordon.push(...cp.uncordon);
    plan.move.push(...cp.move);
    plan.underused.push(...cp.underused);
  }
  return plan;
}

/** Packs the unmet demand into new instances and tops up to min_instances, within max_instances. */
function launches(s: ScaleSnapshot, live: InstanceView[], terminating: Set<string>, unmet: PendingTask[]): LaunchGroup[] {
  const { pool, memory, nowMs: now } = s;
  const room = pool.maxInstances - s.instances.filter((i) => i.state !== 'terminated').length;
  if (room <= 0) return [];
  const subnets = pool.subnetIds.length > 0 ? pool.subnetIds : [''];
  const markets = pool.spot ? (pool.spotOnly ? [true] : [true, false]) : [false];
  const failed = (instanceType: string, subnetId: string, spot: boolean) =>
    memory.failedOfferings.some((f) => f.untilMs > now && f.instanceType === instanceType && f.subnetId === subnetId && f.spot === spot);
  const perSubnet = new Map<string, number>(subnets.map((x) => [x, 0]));
  for (const i of live) if (!terminating.has(i.id) && perSubnet.has(i.subnetId)) perSubnet.set(i.subnetId, perSubnet.get(i.subnetId)! + 1);

  // First instance type that fits, spot before on-demand, the least used subnet that has not failed.
  const choose = (slots: number): Choice | undefined => {
    for (const type of pool.instanceTypes) {
      if (type.slots < slots) continue;
      for (const spot of markets) {
        let best: string | undefined;
        for (const sub of subnets) {
          if (failed(type.instanceType, sub, spot)) continue;
          if (best === undefined || perSubnet.get(sub)! < perSubnet.get(best)!) best = sub;
        }
        if (best !== undefined) return { type, subnetId: best, spot };
      }
    }
    return undefined;
  };
  const opened: { choice: Choice; free: number }[] = [];
  const open = (choice: Choice, used: number) => {
    opened.push({ choice, free: choice.type.slots - used });
    perSubnet.set(choice.subnetId, perSubnet.get(choice.subnetId)! + 1);
  };
  for (const task of unmet) {
    const bin = opened.find((b) => b.free >= task.slots);
    if (bin) {
      bin.free -= task.slots;
      continue;
    }
    if (opened.length >= room) continue; // smaller tasks may still fit what is opened
    const choice = choose(task.slots);
    if (choice) open(choice, task.slots);
  }
  const kept = live.filter((i) => !terminating.has(i.id)).length;
  while (kept + opened.length < pool.minInstances && opened.length < room) {
    const choice = choose(0);
    if (!choice) break;
    open(choice, 0);
  }

  const groups: LaunchGroup[] = [];
  for (const { choice } of opened) {
    const g = groups.find((x) => x.instanceType === choice.type.instanceType && x.subnetId === choice.subnetId && x.spot === choice.spot);
    if (g) g.count++;
    else groups.push({ instanceType: choice.type.instanceType, subnetId: choice.subnetId, spot: choice.spot, count: 1 });
  }
  // After limit/auth/other errors one request probes whether the error has cleared.
  return memory.consecutiveFailures > 0 ? groups.slice(0, 1) : groups;
}

/** 90000 -> "1m30s". */
function fmt(ms: number): string {
  const total = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  const parts = [h ? `${h}h` : '', m ? `${m}m` : '', sec || (!h && !m) ? `${sec}s` : ''];
  return parts.join('');
}
