// Benchmark: the scheduling core (master/scheduler/scheduler.ts `schedule`) on one core. Node runs
// it on one thread; no services, no I/O. Scenarios, all on 1,000 agents x 8 slots in one pool:
//   fill         10,000 queued single-slot tasks (mixed priorities) onto empty agents: 8,000
//                placements per pass, 2,000 left waiting. The headline placements/s and pass p99.
//   incremental  what the master does: the cluster is full with 10,000 still queued; before each
//                pass 50 running tasks finish and 50 tasks arrive; the pass places 50.
//   preemption   the cluster is full of preemptible priority-70 work and 10,000 higher-priority
//                tasks arrive in a pool with preemption: the pass chooses 8,000 victims.
// Reference in the same run: the pre-issue-6 core (a scan over every agent per task) on `fill`.
//
// Usage: npm run bench:scheduler [-- --json] [-- --passes N] [-- --warmup N] [-- --seed N]
// Exits 0 whether or not the target is met; non-zero only when something broke.
import { parseArgs } from 'node:util';
import { schedule, type AgentCapacity, type Assignment, type PendingTask, type PoolPolicy, type RunningTask } from '../master/scheduler/scheduler';
import { exitOnHelp, intOptions } from './options';

/** Placements per second the core must sustain on one core. */
const TARGET_PLACEMENTS_PER_S = 20_000;
/** Published figures for context (not measured here): kube-scheduler 300-900 pods/s; Nomad's C1M ~3,750 placements/s with 5 servers. */
const REFERENCE = { kube_scheduler_pods_per_s: [300, 900], nomad_c1m_placements_per_s: 3750 };
const AGENTS = 1000;
const SLOTS = 8;
const TASKS = 10_000;
const CHURN = 50;

const USAGE = `usage: node dist/bench/scheduler.js [--json] [--passes N] [--warmup N] [--seed N]
  --json      print only one JSON object on stdout
  --passes N  measured passes per scenario (default 50; incremental runs 4x as many)
  --warmup N  unmeasured passes first, for the JIT (default 20)
  --seed N    seed of the priorities and of which tasks finish (default 42)`;

function parseOptions(argv: string[]) {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean' }, passes: { type: 'string' }, warmup: { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
  exitOnHelp(values.help, USAGE);
  const int = intOptions(USAGE);
  return { json: values.json ?? false, passes: int('passes', values.passes, 50, 1), warmup: int('warmup', values.warmup, 20, 0), seed: int('seed', values.seed, 42, 0) };
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

/** 10% priority 10, 70% the default 42, 20% priority 70. */
function priority(rnd: () => number): number {
  const r = rnd();
  return r < 0.1 ? 10 : r < 0.8 ? 42 : 70;
}

function tasks(n: number, fromSeq: number, rnd: () => number, prio: (rnd: () => number) => number = priority): PendingTask[] {
  return Array.from({ length: n }, (_, i) => ({ id: `t${fromSeq + i}`, pool: 'default', slots: 1, priority: prio(rnd), seq: fromSeq + i }));
}

function emptyAgents(): AgentCapacity[] {
  const slotIds = Array.from({ length: SLOTS }, (_, s) => s);
  return Array.from({ length: AGENTS }, (_, i) => ({ id: `agent-${String(i).padStart(4, '0')}`, pool: 'default', schedulable: true, slotIds, freeSlotIds: slotIds, zeroSlotTasks: 0 }));
}

const ms = (ns: bigint) => Number(ns) / 1e6;

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

interface Timed {
  /** Wall time of each measured pass. */
  passMs: number[];
  /** CPU time (user + system) of each measured pass. */
  cpuMs: number[];
  placements: number;
}

/** Runs `pass` warmup + passes times, timing only the measured ones; `pass` returns its placements. */
function measure(warmup: number, passes: number, pass: (timed: (fn: () => number) => number) => void): Timed {
  const out: Timed = { passMs: [], cpuMs: [], placements: 0 };
  let measuring = false;
  const timed = (fn: () => number) => {
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const n = fn();
    const dt = ms(process.hrtime.bigint() - t0);
    const cpu = process.cpuUsage(cpu0);
    if (measuring) {
      out.passMs.push(dt);
      out.cpuMs.push((cpu.user + cpu.system) / 1000);
      out.placements += n;
    }
    return n;
  };
  for (let i = 0; i < warmup; i++) pass(timed);
  measuring = true;
  for (let i = 0; i < passes; i++) pass(timed);
  return out;
}

/** The pre-issue-6 core: for every task, a scan over every agent of its pool (best fit). */
function scanSchedule(pending: readonly PendingTask[], agents: readonly AgentCapacity[]): Assignment[] {
  const free = new Map<string, number[]>();
  const byPool = new Map<string, AgentCapacity[]>();
  for (const a of [...agents].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0))) {
    if (!a.schedulable) continue;
    free.set(a.id, [...a.freeSlotIds].sort((x, y) => x - y));
    byPool.set(a.pool, [...(byPool.get(a.pool) ?? []), a]);
  }
  const out: Assignment[] = [];
  for (const task of [...pending].sort((a, b) => a.priority - b.priority || a.seq - b.seq)) {
    let best: AgentCapacity | undefined;
    for (const agent of byPool.get(task.pool) ?? []) {
      const f = free.get(agent.id)!.length;
      if (f >= task.slots && (!best || f < free.get(best.id)!.length)) best = agent;
    }
    if (best) out.push({ taskId: task.id, agentId: best.id, slotIds: free.get(best.id)!.splice(0, task.slots) });
  }
  return out;
}

/** The cluster as the incremental scenario evolves it: agents' used slots and the queue. */
class Cluster {
  readonly queue = new Map<string, PendingTask>();
  readonly running: { id: string; agent: number; slot: number }[] = [];
  private readonly used: Set<number>[] = Array.from({ length: AGENTS }, () => new Set());
  private readonly agents = emptyAgents();

  capacity(): AgentCapacity[] {
    return this.agents.map((a, i) => ({ ...a, freeSlotIds: a.slotIds.filter((s) => !this.used[i].has(s)) }));
  }
  apply(assignments: Assignment[]): void {
    for (const a of assignments) {
      const i = Number(a.agentId.slice('agent-'.length));
      this.used[i].add(a.slotIds[0]);
      this.running.push({ id: a.taskId, agent: i, slot: a.slotIds[0] });
      this.queue.delete(a.taskId);
    }
  }
  finish(n: number, rnd: () => number): void {
    for (let k = 0; k < n && this.running.length > 0; k++) {
      const j = Math.floor(rnd() * this.running.length);
      const r = this.running[j];
      this.running[j] = this.running[this.running.length - 1];
      this.running.pop();
      this.used[r.agent].delete(r.slot);
    }
  }
}

function main(): void {
  const opts = parseOptions(process.argv.slice(2));
  const capacity = AGENTS * SLOTS;

  // fill
  const fillTasks = tasks(TASKS, 0, rng(opts.seed));
  const empty = emptyAgents();
  const fill = measure(opts.warmup, opts.passes, (timed) => {
    timed(() => {
      const plan = schedule(fillTasks, empty);
      if (plan.assignments.length !== capacity || plan.waiting.size !== TASKS - capacity) throw new Error(`fill: placed ${plan.assignments.length}, expected ${capacity}`);
      return plan.assignments.length;
    });
  });
  const scanPasses = Math.max(1, Math.min(5, opts.passes));
  const scan = measure(Math.min(1, opts.warmup), scanPasses, (timed) => {
    timed(() => {
      const n = scanSchedule(fillTasks, empty).length;
      if (n !== capacity) throw new Error(`reference: placed ${n}, expected ${capacity}`);
      return n;
    });
  });

  // incremental: full cluster, 10,000 queued, 50 finish and 50 arrive before each pass.
  const rnd = rng(opts.seed + 1);
  const cluster = new Cluster();
  let seq = 0;
  for (const t of tasks(capacity + TASKS, seq, rnd)) cluster.queue.set(t.id, t);
  seq += capacity + TASKS;
  cluster.apply(schedule([...cluster.queue.values()], cluster.capacity()).assignments);
  const incrementalPasses = opts.passes * 4;
  const incremental = measure(opts.warmup, incrementalPasses, (timed) => {
    cluster.finish(CHURN, rnd);
    for (const t of tasks(CHURN, seq, rnd)) cluster.queue.set(t.id, t);
    seq += CHURN;
    const queued = [...cluster.queue.values()];
    const agents = cluster.capacity();
    let assignments: Assignment[] = [];
    timed(() => (assignments = schedule(queued, agents).assignments).length);
    if (assignments.length !== CHURN) throw new Error(`incremental: placed ${assignments.length}, expected ${CHURN}`);
    cluster.apply(assignments);
  });

  // preemption: the full cluster runs preemptible priority-70 work; 10,000 tasks of priority 10 or 42 arrive.
  const full = emptyAgents().map((a) => ({ ...a, freeSlotIds: [] }));
  const victims: RunningTask[] = full.flatMap((a, i) => a.slotIds.map((s) => ({ id: `r${i * SLOTS + s}`, pool: 'default', agentId: a.id, slotIds: [s], priority: 70, seq: i * SLOTS + s, preemptible: true, preempting: false })));
  const urgent = tasks(TASKS, capacity, rng(opts.seed + 2), (r) => (r() < 0.2 ? 10 : 42));
  const preemptive: PoolPolicy = { fitting: 'best', preemption: true, maxZeroSlotTasksPerAgent: 100 };
  let preempted = 0;
  const preemption = measure(opts.warmup, opts.passes, (timed) => {
    timed(() => {
      const plan = schedule(urgent, full, { running: victims, defaultPolicy: preemptive });
      preempted = plan.preemptions.length;
      if (preempted !== capacity) throw new Error(`preemption: ${preempted} victims, expected ${capacity}`);
      return 0;
    });
  });

  const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  // Placements of a median pass over its wall time: robust to a shared machine's stalls (the p99 shows those).
  const rate = (t: Timed) => (t.placements / t.passMs.length / percentile(t.passMs, 50)) * 1000;
  const placementsPerS = rate(fill);
  const all = [fill, incremental, preemption];
  const out = {
    placements_per_s: Math.round(placementsPerS),
    pass_p99_ms: round(percentile(fill.passMs, 99), 2),
    pass_p50_ms: round(percentile(fill.passMs, 50), 2),
    pass_cpu_p50_ms: round(percentile(fill.cpuMs, 50), 2),
    pass_cpu_p99_ms: round(percentile(fill.cpuMs, 99), 2),
    incremental_pass_p50_ms: round(percentile(incremental.passMs, 50), 2),
    incremental_pass_p99_ms: round(percentile(incremental.passMs, 99), 2),
    preemption_pass_p50_ms: round(percentile(preemption.passMs, 50), 2),
    preemption_pass_p99_ms: round(percentile(preemption.passMs, 99), 2),
    scan_reference_placements_per_s: Math.round(rate(scan)),
    speedup_vs_scan: round(placementsPerS / rate(scan), 1),
    cpu_fraction: round(sum(all.map((t) => sum(t.cpuMs))) / sum(all.map((t) => sum(t.passMs))), 2),
    target_placements_per_s: TARGET_PLACEMENTS_PER_S,
    met: placementsPerS >= TARGET_PLACEMENTS_PER_S,
    agents: AGENTS,
    slots_per_agent: SLOTS,
    queued_tasks: TASKS,
    reference: REFERENCE,
  };
  if (opts.json) {
    process.stdout.write(JSON.stringify(out) + '\n');
    return;
  }
  const row = (name: string, t: Timed, what: string) =>
    `${name.padEnd(12)} ${String(t.passMs.length).padStart(6)} ${percentile(t.passMs, 50).toFixed(2).padStart(9)} ${percentile(t.passMs, 99).toFixed(2).padStart(9)} ${percentile(t.cpuMs, 50).toFixed(2).padStart(10)} ${percentile(t.cpuMs, 99).toFixed(2).padStart(10)} ${Math.round(rate(t)).toLocaleString('en-US').padStart(14)}  ${what}`;
  const lines = [
    `${AGENTS.toLocaleString('en-US')} agents x ${SLOTS} slots, one pool, ${TASKS.toLocaleString('en-US')} queued single-slot tasks (priority 10/42/70: 10/70/20%); seed ${opts.seed}; Node ${process.version}, one thread`,
    '',
    `${'scenario'.padEnd(12)} ${'passes'.padStart(6)} ${'p50 ms'.padStart(9)} ${'p99 ms'.padStart(9)} ${'cpu p50 ms'.padStart(10)} ${'cpu p99 ms'.padStart(10)} ${'placements/s'.padStart(14)}  per pass`,
    row('fill', fill, `${capacity} placed, ${TASKS - capacity} wait`),
    row('incremental', incremental, `${CHURN} finish + ${CHURN} arrive, ${CHURN} placed, ${TASKS} wait`),
    row('preemption', preemption, `${preempted} victims chosen, ${TASKS} wait`),
    row('scan (ref)', scan, 'fill with the pre-issue-6 core: every agent scanned per task'),
    '',
    `placements_per_s  ${out.placements_per_s.toLocaleString('en-US')}   (fill, median pass; target >= ${TARGET_PLACEMENTS_PER_S.toLocaleString('en-US')}: ${out.met ? 'met' : 'NOT met'}; ${out.speedup_vs_scan}x the scan reference)`,
    `pass_p99_ms       ${out.pass_p99_ms}   (fill: the largest pass, wall time; CPU time p99 ${out.pass_cpu_p99_ms}; incremental p99 ${out.incremental_pass_p99_ms}, preemption p99 ${out.preemption_pass_p99_ms})`,
    `cpu_fraction      ${out.cpu_fraction}   (CPU time / wall time while timing; 1 = one core, well below 1 = the machine was busy)`,
    `context: kube-scheduler ${REFERENCE.kube_scheduler_pods_per_s.join('-')} pods/s, Nomad C1M ~${REFERENCE.nomad_c1m_placements_per_s.toLocaleString('en-US')} placements/s (published figures, not measured here)`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

main();
