// Benchmark: provisioner. Replays a seeded synthetic trace of training jobs (~12 h of Poisson
// arrivals) through the real decision core (master/provisioner/decider.ts + launch-errors.ts) with a
// simulated clock, a simulated EC2 (boot delay, a 10-minute InsufficientInstanceCapacity outage in
// the middle) and a simple scheduler. Cost is reported as a ratio to a lower bound computed from
// the same trace in the same run: busy slot-hours / slots per instance (no boot, no idle time, no
// fragmentation: unreachable by any real provisioner).
//
// Usage: npm run bench:provisioner [-- --json] [-- --seed N] [-- --jobs-per-hour N] [-- --hours N] [-- --placement first-fit]
// Exits 0 whether or not the target is met; non-zero only when something broke.
import { parseArgs } from 'node:util';
import type { PoolScaling } from '../master/provisioner/types';
import { exitOnHelp } from './options';
import { simulate, type SimOptions } from './provisioner/sim';
import { DEFAULT_TRACE, generateTrace } from './provisioner/trace';

/** Instance-hours may be at most this multiple of the lower bound. */
const TARGET_RATIO = 1.1;
const MIN = 60_000;

const USAGE = `usage: node dist/bench/provisioner.js [options]
  --json                     print only one JSON object on stdout
  --placement P              simulated scheduler: best-fit (default: the master's policy) or first-fit (in launch order)
  --seed N                   trace and simulation seed (default ${DEFAULT_TRACE.seed})
  --jobs-per-hour N          mean Poisson arrival rate (default ${DEFAULT_TRACE.jobsPerHour})
  --hours N                  hours of arrivals (default ${DEFAULT_TRACE.hours})
  --consolidation on|off     move trials off lightly used instances (default on, as in the pool below)
  --min-underused-min N      consolidation.min_underused_period in minutes (default 0)
  --max-checkpoint-age-min N consolidation.max_checkpoint_age in minutes (default 2)
  --checkpoint-period-min N  minutes of work between two checkpoints of a simulated trial (default 10)
  --restart-overhead-s N     seconds a moved trial needs before it makes progress again (default 120)`;

function parseOptions(argv: string[]) {
  const flags = ['placement', 'seed', 'jobs-per-hour', 'hours', 'consolidation', 'min-underused-min', 'max-checkpoint-age-min', 'checkpoint-period-min', 'restart-overhead-s'] as const;
  const { values } = parseArgs({
    args: argv,
    options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' }, ...Object.fromEntries(flags.map((f) => [f, { type: 'string' as const }])) },
    strict: true,
  });
  exitOnHelp(values.help as boolean | undefined, USAGE);
  const v = values as Record<string, string | undefined>;
  const num = (name: string, dflt: number, min = Number.MIN_VALUE) => {
    if (v[name] === undefined) return dflt;
    const n = Number(v[name]);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min === Number.MIN_VALUE ? '> 0' : min}, got '${v[name]}'\n${USAGE}`);
    return n;
  };
  const placement = v.placement ?? 'best-fit';
  if (placement !== 'first-fit' && placement !== 'best-fit') throw new Error(`--placement must be first-fit or best-fit, got '${placement}'\n${USAGE}`);
  const consolidation = v.consolidation ?? 'on';
  if (consolidation !== 'on' && consolidation !== 'off') throw new Error(`--consolidation must be on or off, got '${consolidation}'\n${USAGE}`);
  return {
    json: (values.json as boolean | undefined) ?? false,
    placement: placement as 'first-fit' | 'best-fit',
    seed: Math.trunc(num('seed', DEFAULT_TRACE.seed)),
    jobsPerHour: num('jobs-per-hour', DEFAULT_TRACE.jobsPerHour),
    hours: num('hours', DEFAULT_TRACE.hours),
    consolidation: consolidation === 'on',
    minUnderusedMs: num('min-underused-min', 0, 0) * MIN,
    maxCheckpointAgeMs: num('max-checkpoint-age-min', 2, 0) * MIN,
    checkpointPeriodMs: num('checkpoint-period-min', 10) * MIN,
    restartOverheadMs: num('restart-overhead-s', 120, 0) * 1000,
  };
}

/** A g5.12xlarge-like pool (4 GPUs per instance) in three subnets, on-demand. */
export const BENCH_POOL: PoolScaling = {
  pool: 'gpu',
  instanceTypes: [{ instanceType: 'g5.12xlarge', slots: 4 }],
  subnetIds: ['subnet-a', 'subnet-b', 'subnet-c'],
  spot: false,
  spotOnly: false,
  minInstances: 0,
  maxInstances: 50,
  maxIdleAgentPeriodMs: 5 * MIN,
  maxAgentStartingPeriodMs: 10 * MIN,
  maxDisconnectedPeriodMs: 5 * MIN,
  consolidation: { enabled: true, maxCheckpointAgeMs: 2 * MIN, minUnderusedPeriodMs: 0 },
};

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

function main(): void {
  const opts = parseOptions(process.argv.slice(2));
  const mid = (opts.hours * 3_600_000) / 2;
  // A 16-trial search (2 slots each) submitted one minute into the outage, so that the outage is met with demand.
  const burst = { atMs: mid + MIN, jobs: 16, slots: 2 };
  const trace = generateTrace({ ...DEFAULT_TRACE, seed: opts.seed, jobsPerHour: opts.jobsPerHour, hours: opts.hours, burst });
  const pool: PoolScaling = {
    ...BENCH_POOL,
    consolidation: { enabled: opts.consolidation, maxCheckpointAgeMs: opts.maxCheckpointAgeMs, minUnderusedPeriodMs: opts.minUnderusedMs },
  };
  const sim: SimOptions = { pool, bootMinMs: 75_000, bootMaxMs: 105_000, outage: { startMs: mid, endMs: mid + 10 * MIN }, tickMs: 10_000, seed: opts.seed + 1, placement: opts.placement,
    checkpointPeriodMs: opts.checkpointPeriodMs, moveGraceMs: 30_000, restartOverheadMs: opts.restartOverheadMs };
  const r = simulate(trace, sim);
  const ratio = r.instanceHours / r.oracleInstanceHours;
  const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;
  const out = {
    instance_hours: round(r.instanceHours, 2),
    oracle_instance_hours: round(r.oracleInstanceHours, 2),
    ratio: round(ratio, 3),
    launches: r.launches,
    busy_terminations: r.busyTerminations,
    outage_run_instances_calls: r.outageRunInstancesCalls,
    submit_to_launch_ms_p50: round(percentile(r.submitToLaunchMs, 50), 4),
    consolidation: opts.consolidation,
    trials_moved: r.moves,
    move_cost_slot_hours: round(r.moveCostSlotHours, 2),
  };
  if (opts.json) {
    process.stdout.write(JSON.stringify(out) + '\n');
    return;
  }
  const h = (x: number) => x.toFixed(1);
  const min = (ms: number) => (ms / MIN).toFixed(1);
  const slotTotal = r.slotHours.busy + r.slotHours.booting + r.slotHours.idle + r.slotHours.fragmented;
  // Instances alive exactly while they hold a task, with this scheduler's placement: what is left
  // above it is what the decider controls (boot and idle time).
  const placementRatio = slotTotal / (r.slotHours.busy + r.slotHours.fragmented);
  const share = (x: number) => `${((100 * x) / slotTotal).toFixed(1)}%`;
  const lines = [
    `trace: ${r.jobs} jobs over ${opts.hours} h (seed ${opts.seed}, ${opts.jobsPerHour}/h + ${burst.jobs} at once at ${h(burst.atMs / 3_600_000)} h), ${opts.placement} scheduler, simulated until ${h(r.endMs / 3_600_000)} h; pool ${BENCH_POOL.instanceTypes[0].instanceType} x ${BENCH_POOL.instanceTypes[0].slots} slots, max ${BENCH_POOL.maxInstances}, idle ${min(BENCH_POOL.maxIdleAgentPeriodMs)} min, boot ${sim.bootMinMs / 1000}-${sim.bootMaxMs / 1000} s`,
    '',
    `instance_hours              ${h(r.instanceHours)}`,
    `oracle_instance_hours       ${h(r.oracleInstanceHours)}   (busy slot-hours / ${BENCH_POOL.instanceTypes[0].slots})`,
    `ratio                       ${out.ratio}   (target <= ${TARGET_RATIO}: ${ratio <= TARGET_RATIO ? 'met' : 'NOT met'})`,
    `launches                    ${r.launches}   (peak ${r.peakInstances} instances)`,
    `busy_terminations           ${r.busyTerminations}   (must be 0)`,
    `outage_run_instances_calls  ${r.outageRunInstancesCalls}   (10-min outage; all RunInstances calls: ${r.runInstancesCalls})`,
    `submit_to_launch_ms_p50     ${out.submit_to_launch_ms_p50}   (p95 ${round(percentile(r.submitToLaunchMs, 95), 4)}; all ${r.decisions} decisions p50 ${round(percentile(r.decideMs, 50), 4)})`,
    '',
    `ratio to the placement bound ${round(placementRatio, 3)}   (instance-hours / hours instances held work: boot and idle only, the decider's share)`,
    '',
    'where the instance time went (slot-hours):',
    `  busy        ${h(r.slotHours.busy).padStart(8)}  ${share(r.slotHours.busy)}`,
    `  booting     ${h(r.slotHours.booting).padStart(8)}  ${share(r.slotHours.booting)}   (launch -> agent connected)`,
    `  idle        ${h(r.slotHours.idle).padStart(8)}  ${share(r.slotHours.idle)}   (connected, no task: waiting for work or for max_idle_agent_period)`,
    `  fragmented  ${h(r.slotHours.fragmented).padStart(8)}  ${share(r.slotHours.fragmented)}   (free slots on instances that run something; ${h(r.drainFragmentedSlotHours)} after the last arrival)`,
    '',
    opts.consolidation
      ? `consolidation: ${r.moves} trials moved (${h(r.moveCostSlotHours)} slot-hours of repeated work and restart overhead), ${r.cordons} instances cordoned, ${r.uncordons} cordons lifted; max checkpoint age ${min(opts.maxCheckpointAgeMs)} min, min underused ${min(opts.minUnderusedMs)} min, trials checkpoint every ${min(opts.checkpointPeriodMs)} min, restart ${opts.restartOverheadMs / 1000} s`
      : 'consolidation: off',
    '',
    `queue wait (simulated): p50 ${min(percentile(r.waitMs, 50))} min, p95 ${min(percentile(r.waitMs, 95))} min, max ${min(Math.max(...r.waitMs))} min`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

main();
