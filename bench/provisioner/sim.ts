// Discrete-event replay of a job trace through the provisioner's pure core (decide + onLaunch*)
// with a simulated clock, a simulated provider (boot delay, a capacity outage) and a simple
// scheduler (queued tasks, oldest first, first fit or best fit onto connected, enabled agents).
// Trials store a checkpoint every `checkpointPeriodMs` of work; a trial the plan moves keeps its
// slots for the grace period, loses the work since its latest checkpoint, is requeued at the
// front, and pays `restartOverheadMs` (start, checkpoint download) before it makes progress again.
import { decide } from '../../master/provisioner/decider';
import { classifyEc2Error, emptyLaunchMemory, onLaunchFailure, onLaunchSuccess } from '../../master/provisioner/launch-errors';
import { LaunchError, type InstanceView, type LaunchMemory, type PoolScaling, type ScalePlan } from '../../master/provisioner/types';
import { seededRandom, type TraceJob } from './trace';

/** Simulated environment. */
export interface SimOptions {
  pool: PoolScaling;
  /** Boot delay (launch -> agent connected) is uniform in [bootMinMs, bootMaxMs]. */
  bootMinMs: number;
  bootMaxMs: number;
  /** Every launch in [start, end) fails with InsufficientInstanceCapacity. */
  outage: { startMs: number; endMs: number };
  tickMs: number;
  seed: number;
  /** The simulated scheduler: first fit in launch order, or best fit (fewest free slots that fit; the master's policy). */
  placement: 'first-fit' | 'best-fit';
  /** Work between two checkpoints of a trial. */
  checkpointPeriodMs: number;
  /** A moved trial holds its slots this long after being told to stop (kill grace period). */
  moveGraceMs: number;
  /** A resumed trial's time before it makes progress again (container start, checkpoint download). */
  restartOverheadMs: number;
}

/** What one replay measured. */
export interface SimResult {
  jobs: number;
  instanceHours: number;
  /** Busy slot-hours / slots per instance: no boot, no idle, no fragmentation. */
  oracleInstanceHours: number;
  launches: number;
  busyTerminations: number;
  outageRunInstancesCalls: number;
  runInstancesCalls: number;
  peakInstances: number;
  /** Real wall time of decide() for arrivals whose decision launched, ms. */
  submitToLaunchMs: number[];
  /** Real wall time of every decide() call, ms. */
  decideMs: number[];
  /** Simulated queue wait (arrival -> start) per job, ms. */
  waitMs: number[];
  /** Where instance time went, in slot-hours. */
  slotHours: { busy: number; booting: number; idle: number; fragmented: number };
  decisions: number;
  endMs: number;
  /** Of `slotHours.fragmented`, the part after the last arrival (the trace draining). */
  drainFragmentedSlotHours: number;
  /** Trials moved by consolidation, and the slot-hours of work they repeated plus their restart overhead. */
  moves: number;
  moveCostSlotHours: number;
  /** Instances cordoned for consolidation, and cordons lifted again. */
  cordons: number;
  uncordons: number;
}

/** A trial's current run. */
interface Run {
  job: TraceJob;
  instanceId: string;
  runId: number;
  /** Progress starts here (after the restart overhead of a resumed run). */
  workStartMs: number;
  /** Work left when this run started making progress. */
  remainingMs: number;
  /** The latest checkpoint stored before this run (a resumed trial's), or null. */
  previousCheckpointAtMs: number | null;
  stopping: boolean;
}

interface SimInstance {
  id: string;
  subnetId: string;
  instanceType: string;
  slots: number;
  launchedAtMs: number;
  connectedAtMs: number | null;
  disabled: boolean;
  cordoned: boolean;
  used: number;
  tasks: Set<string>;
  idleSinceMs: number | null;
}

type SimEvent =
  | { t: number; seq: number; kind: 'arrive'; job: TraceJob }
  | { t: number; seq: number; kind: 'finish'; job: TraceJob; instanceId: string; runId: number }
  | { t: number; seq: number; kind: 'stopped'; job: TraceJob; instanceId: string; runId: number }
  | { t: number; seq: number; kind: 'boot'; instanceId: string }
  | { t: number; seq: number; kind: 'tick' };

/** Binary min-heap on (t, seq). */
class EventQueue {
  private heap: SimEvent[] = [];
  private seq = 0;
  get size(): number {
    return this.heap.length;
  }
  push(e: DistributiveOmit<SimEvent, 'seq'>): void {
    const h = this.heap;
    h.push({ ...e, seq: this.seq++ } as SimEvent);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  pop(): SimEvent | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l], h[m])) m = l;
        if (r < h.length && less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}
type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never;
const less = (a: SimEvent, b: SimEvent) => a.t < b.t || (a.t === b.t && a.seq < b.seq);

/** Replays `trace` and measures cost and safety. */
export function simulate(trace: TraceJob[], o: SimOptions): SimResult {
  const random = seededRandom(o.seed);
  const pool = o.pool;
  const events = new EventQueue();
  for (const job of trace) events.push({ t: job.arriveMs, kind: 'arrive', job });
  events.push({ t: 0, kind: 'tick' });
  const lastArrival = trace.length ? trace[trace.length - 1].arriveMs : 0;

  const instances = new Map<string, SimInstance>();
  const queue: TraceJob[] = [];
  let memory: LaunchMemory = emptyLaunchMemory();
  let nextId = 1;
  let now = 0;
  let finished = 0;
  const r: SimResult = {
    jobs: trace.length, instanceHours: 0, oracleInstanceHours: 0, launches: 0, busyTerminations: 0, outageRunInstancesCalls: 0, runInstancesCalls: 0,
    peakInstances: 0, submitToLaunchMs: [], decideMs: [], waitMs: [], slotHours: { busy: 0, booting: 0, idle: 0, fragmented: 0 }, decisions: 0, endMs: 0, drainFragmentedSlotHours: 0,
    moves: 0, moveCostSlotHours: 0, cordons: 0, uncordons: 0,
  };
  const runs = new Map<string, Run>();
  /** Work a trial still has to do, and its latest checkpoint, carried across moves. */
  const carried = new Map<string, { remainingMs: number; checkpointAtMs: number | null }>();
  const underusedSince = new Map<string, number>();
  let nextRunId = 1;
  let moveCostMs = 0;
  const lastCheckpointAt = (run: Run): number | null => {
    const done = now - run.workStartMs;
    if (done < o.checkpointPeriodMs) return run.previousCheckpointAtMs;
    return run.workStartMs + Math.floor(done / o.checkpointPeriodMs) * o.checkpointPeriodMs;
  };
  const slotMs = { busy: 0, booting: 0, idle: 0, fragmented: 0 };
  let drainFragMs = 0;
  let instanceMs = 0;

  const advance = (t: number) => {
    const dt = t - now;
    if (dt > 0) {
      for (const i of instances.values()) {
        instanceMs += dt;
        if (i.connectedAtMs === null) slotMs.booting += i.slots * dt;
        else if (i.tasks.size === 0) slotMs.idle += i.slots * dt;
        else {
          slotMs.busy += i.used * dt;
          slotMs.fragmented += (i.slots - i.used) * dt;
          if (now >= lastArrival) drainFragMs += (i.slots - i.used) * dt;
        }
      }
    }
    now = t;
  };

  /** Provider.launch: instances appear at once (pending) and connect after the boot delay. */
  const launch = (instanceType: string, subnetId: string, count: number) => {
    r.runInstancesCalls++;
    if (now >= o.outage.startMs && now < o.outage.endMs) {
      r.outageRunInstancesCalls++;
      throw new LaunchError(classifyEc2Error('InsufficientInstanceCapacity'), 'InsufficientInstanceCapacity',
        `We currently do not have sufficient ${instanceType} capacity in the Availability Zone you requested.`);
    }
    const slots = pool.instanceTypes.find((t) => t.instanceType === instanceType)!.slots;
    for (let k = 0; k < count; k++) {
      const id = `i-${String(nextId++).padStart(6, '0')}`;
      instances.set(id, { id, subnetId, instanceType, slots, launchedAtMs: now, connectedAtMs: null, disabled: false, cordoned: false, used: 0, tasks: new Set(), idleSinceMs: null });
      events.push({ t: now + o.bootMinMs + Math.round(random() * (o.bootMaxMs - o.bootMinMs)), kind: 'boot', instanceId: id });
    }
    r.launches += count;
    r.peakInstances = Math.max(r.peakInstances, instances.size);
  };

  /** The cluster scheduler, simplified: oldest first, first fit, smaller tasks may pass a blocked bigger one. */
  const schedule = () => {
    if (queue.length === 0) return;
    const agents = [...instances.values()].filter((i) => i.connectedAtMs !== null && !i.disabled).sort((a, b) => (a.id < b.id ? -1 : 1));
    for (let q = 0; q < queue.length; ) {
      const job = queue[q];
      const a = o.placement === 'best-fit'
        ? agents.reduce<SimInstance | undefined>((b, i) => (i.slots - i.used >= job.slots && (!b || i.slots - i.used < b.slots - b.used) ? i : b), undefined)
        : agents.find((i) => i.slots - i.used >= job.slots);
      if (!a) {
        q++;
        continue;
      }
      queue.splice(q, 1);
      a.used += job.slots;
      a.tasks.add(job.id);
      a.idleSinceMs = null;
      const resumed = carried.get(job.id);
      if (!resumed) r.waitMs.push(now - job.arriveMs);
      const run: Run = {
        job, instanceId: a.id, runId: nextRunId++, workStartMs: now + (resumed ? o.restartOverheadMs : 0),
        remainingMs: resumed?.remainingMs ?? job.durationMs, previousCheckpointAtMs: resumed?.checkpointAtMs ?? null, stopping: false,
      };
      runs.set(job.id, run);
      events.push({ t: run.workStartMs + run.remainingMs, kind: 'finish', job, instanceId: a.id, runId: run.runId });
    }
  };

  /** Stops a trial for a move: it keeps its slots for the grace period, then goes back to the queue. */
  const move = (jobId: string) => {
    const run = runs.get(jobId);
    if (!run || run.stopping) return;
    run.stopping = true;
    const checkpointAt = lastCheckpointAt(run);
    const saved = checkpointAt === null || checkpointAt < run.workStartMs ? 0 : checkpointAt - run.workStartMs;
    const doneNow = Math.max(0, now - run.workStartMs);
    moveCostMs += run.job.slots * (doneNow - saved + o.restartOverheadMs);
    carried.set(jobId, { remainingMs: run.remainingMs - saved, checkpointAtMs: checkpointAt });
    r.moves++;
    events.push({ t: now + o.moveGraceMs, kind: 'stopped', job: run.job, instanceId: run.instanceId, runId: run.runId });
  };

  /** A task leaves its instance (finished or stopped). */
  const release = (i: SimInstance, job: TraceJob) => {
    i.tasks.delete(job.id);
    i.used -= job.slots;
    runs.delete(job.id);
    if (i.tasks.size === 0) i.idleSinceMs = now;
  };

  const view = (i: SimInstance): InstanceView => ({
    id: i.id, instanceType: i.instanceType, subnetId: i.subnetId, state: i.connectedAtMs === null ? 'pending' : 'running', launchedAtMs: i.launchedAtMs,
    agentEverConnected: i.connectedAtMs !== null, agentConnected: i.connectedAtMs !== null, disconnectedSinceMs: null, agentDisabled: i.disabled,
    runningTasks: i.tasks.size, idleSinceMs: i.idleSinceMs, slots: i.slots, freeSlots: i.slots - i.used,
    cordoned: i.cordoned, underusedSinceMs: underusedSince.get(i.id) ?? null,
    tasks: [...i.tasks].map((id) => {
      const run = runs.get(id)!;
      return { id, slots: run.job.slots, lastCheckpointAtMs: lastCheckpointAt(run), stopping: run.stopping };
    }),
  });

  const decideAndApply = (forArrival: boolean) => {
    const snapshot = { nowMs: now, pool, instances: [...instances.values()].map(view), pending: queue.map((j) => ({ id: j.id, slots: j.slots })), memory };
    const t0 = process.hrtime.bigint();
    const plan: ScalePlan = decide(snapshot);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    r.decisions++;
    r.decideMs.push(ms);
    if (forArrival && plan.launch.some((l) => l.count > 0)) r.submitToLaunchMs.push(ms);
    for (const l of plan.launch) {
      try {
        launch(l.instanceType, l.subnetId, l.count);
        memory = onLaunchSuccess(memory, l, now);
      } catch (err) {
        if (!(err instanceof LaunchError)) throw err;
        memory = onLaunchFailure(memory, err, l, now, random);
      }
    }
    for (const d of plan.disable) {
      const i = instances.get(d.id);
      if (i) i.disabled = true;
    }
    for (const d of plan.cordon) {
      const i = instances.get(d.id);
      if (i) {
        i.disabled = true;
        i.cordoned = true;
        r.cordons++;
      }
    }
    for (const d of plan.uncordon) {
      const i = instances.get(d.id);
      if (i) {
        i.disabled = false;
        i.cordoned = false;
        r.uncordons++;
      }
    }
    for (const m of plan.move) move(m.taskId);
    const underused = new Set(plan.underused);
    for (const id of underusedSince.keys()) if (!underused.has(id)) underusedSince.delete(id);
    for (const id of underused) if (!underusedSince.has(id)) underusedSince.set(id, now);
    for (const t of plan.terminate) {
      const i = instances.get(t.id);
      if (!i) continue;
      if (i.tasks.size > 0) {
        // Counted, and the work is lost: its jobs go back to the queue and run again in full.
        r.busyTerminations++;
        for (const id of i.tasks) queue.unshift(trace.find((j) => j.id === id)!);
      }
      instances.delete(i.id);
    }
  };

  for (let e = events.pop(); e; e = events.pop()) {
    advance(e.t);
    switch (e.kind) {
      case 'arrive':
        queue.push(e.job);
        break;
      case 'finish': {
        const i = instances.get(e.instanceId);
        if (!i || runs.get(e.job.id)?.runId !== e.runId) break; // its instance was terminated under it, or it was moved
        release(i, e.job);
        carried.delete(e.job.id);
        finished++;
        break;
      }
      case 'stopped': {
        const i = instances.get(e.instanceId);
        if (!i || runs.get(e.job.id)?.runId !== e.runId) break;
        release(i, e.job);
        queue.unshift(e.job);
        break;
      }
      case 'boot': {
        const i = instances.get(e.instanceId);
        if (!i) break;
        i.connectedAtMs = now;
        i.idleSinceMs = now;
        break;
      }
      case 'tick':
        break;
    }
    schedule();
    decideAndApply(e.kind === 'arrive');
    if (e.kind === 'tick') {
      // Done when all work is done and every instance is gone (or a day later, if min_instances keeps some).
      const done = now > lastArrival && finished === trace.length && (instances.size === 0 || now > lastArrival + 24 * 3_600_000);
      if (!done) events.push({ t: now + o.tickMs, kind: 'tick' });
    }
  }
  r.endMs = now;
  r.drainFragmentedSlotHours = drainFragMs / 3_600_000;
  r.moveCostSlotHours = moveCostMs / 3_600_000;
  r.instanceHours = instanceMs / 3_600_000;
  const slotsPerInstance = pool.instanceTypes[0].slots;
  r.oracleInstanceHours = trace.reduce((s, j) => s + j.slots * j.durationMs, 0) / 3_600_000 / slotsPerInstance;
  r.slotHours = { busy: slotMs.busy / 3_600_000, booting: slotMs.booting / 3_600_000, idle: slotMs.idle / 3_600_000, fragmented: slotMs.fragmented / 3_600_000 };
  if (finished !== trace.length) throw new Error(`simulation ended with ${trace.length - finished} jobs unfinished`);
  return r;
}
