// Benchmark: fleet. A real det-master on 127.0.0.1 (SQLite in a temp dir) and, in a separate
// process (bench/fleet/sim.ts), N simulated agents over real gRPC that register, heartbeat at the
// interval the master hands out, and run and complete the tasks it starts. Experiments are
// submitted at a steady rate through the admin API, so tasks keep arriving and completing. Once
// every agent is registered and the task pipeline is full, the master's CPU (fraction of one core,
// from /proc/<pid>/stat) and RSS (/proc/<pid>/status) are measured over a window, along with missed
// heartbeat TTLs (the master's `agent missed its heartbeat TTL` log lines) and completed tasks.
// The simulator's own CPU is reported too: on a small machine it competes with the master.
//
// Usage: npm run bench:fleet [-- --agents N] [-- --duration S] [-- --json] [-- --cpu-prof DIR] ...
// Exits 0 whether or not the targets are met; non-zero only when something broke.
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { sleep } from '../common/abort';
import { BenchMaster, type MasterLogCounts } from './fleet/master';
import { cpuFraction, cpuMark, procAvailable, rssMib, type CpuMark } from './fleet/proc';
import { readNewestProfile, summarizeProfile, type ProfileSummary } from './fleet/profile';
import type { FromSim, SimConfig, SimStats, ToSim } from './fleet/protocol';
import { adminClient, LatencyProbe, Submitter } from './fleet/workload';

/** Targets from issue 6. */
const TARGETS = { cpuFraction: 0.25, rssMib: 512, missedTtls: 0 };

/** Command-line options. */
interface Options {
  agents: number;
  durationS: number;
  rampS: number;
  channels: number;
  taskRate: number;
  taskSeconds: number;
  logLines: number;
  slots: number;
  warmupS: number | undefined;
  cpuProf: string | undefined;
  simCpuProf: string | undefined;
  json: boolean;
}

const DEFAULTS = { agents: 2000, durationS: 60, rampS: 10, channels: 8, taskRate: 5, taskSeconds: 30, logLines: 10, slots: 1 };

const USAGE = `usage: node dist/bench/fleet.js [options]
  --agents N         simulated agents (default ${DEFAULTS.agents})
  --duration S       measured steady-state window in seconds (default ${DEFAULTS.durationS})
  --ramp S           registrations are spread over S seconds (default ${DEFAULTS.rampS})
  --channels N       gRPC channels (TCP connections) the simulator spreads the agents' streams over
                     (default ${DEFAULTS.channels}; --channels N = --agents N is one connection per agent, as in production)
  --task-rate R      experiments (one trial each) submitted per second (default ${DEFAULTS.taskRate})
  --task-seconds S   how long each simulated task runs (default ${DEFAULTS.taskSeconds})
  --log-lines N      log lines each task sends (default ${DEFAULTS.logLines})
  --slots N          slots per agent (default ${DEFAULTS.slots})
  --warmup S         seconds of work before the window opens (default task-seconds + 5: the pipeline is full)
  --cpu-prof DIR     run the master under node --cpu-prof, write the profile to DIR and print its hot spots
  --sim-cpu-prof DIR run the simulator under node --cpu-prof (profile written to DIR)
  --json             print only one JSON object on stdout (progress goes to stderr)`;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      agents: { type: 'string' }, duration: { type: 'string' }, ramp: { type: 'string' }, channels: { type: 'string' }, 'task-rate': { type: 'string' },
      'task-seconds': { type: 'string' }, 'log-lines': { type: 'string' }, slots: { type: 'string' }, warmup: { type: 'string' }, 'cpu-prof': { type: 'string' },
      'sim-cpu-prof': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  const num = (name: string, v: string | undefined, dflt: number, min: number, integer = true) => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) throw new Error(`--${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got '${v}'\n${USAGE}`);
    return n;
  };
  const agents = num('agents', values.agents, DEFAULTS.agents, 1);
  return {
    agents,
    durationS: num('duration', values.duration, DEFAULTS.durationS, 1, false),
    rampS: num('ramp', values.ramp, DEFAULTS.rampS, 0, false),
    channels: Math.min(agents, num('channels', values.channels, DEFAULTS.channels, 1)),
    taskRate: num('task-rate', values['task-rate'], DEFAULTS.taskRate, 0, false),
    taskSeconds: num('task-seconds', values['task-seconds'], DEFAULTS.taskSeconds, 0, false),
    logLines: num('log-lines', values['log-lines'], DEFAULTS.logLines, 0),
    slots: num('slots', values.slots, DEFAULTS.slots, 1),
    warmupS: values.warmup === undefined ? undefined : num('warmup', values.warmup, 0, 0, false),
    cpuProf: values['cpu-prof'] === undefined ? undefined : path.resolve(values['cpu-prof']),
    simCpuProf: values['sim-cpu-prof'] === undefined ? undefined : path.resolve(values['sim-cpu-prof']),
    json: values.json ?? false,
  };
}

/** Progress and diagnostics: always stderr, so --json keeps stdout clean. */
function note(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------------
// The simulator process
// ---------------------------------------------------------------------------------------------

/** The forked simulator with request/response over IPC. */
class Simulator {
  private waiting: ((m: FromSim) => void)[] = [];
  private exitCode: number | null | undefined;
  fatal: string | undefined;

  private constructor(readonly child: ChildProcess) {
    child.on('message', (m: FromSim) => {
      if (m.type === 'fatal') this.fatal ??= m.message;
      else this.waiting.shift()?.(m);
    });
    child.on('exit', (code) => {
      this.exitCode = code;
      for (const w of this.waiting.splice(0)) w({ type: 'fatal', message: `the simulator exited with ${code}` });
    });
  }

  static start(cfg: SimConfig, cpuProfDir: string | undefined): Simulator {
    const execArgv = cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [];
    return new Simulator(fork(path.join(__dirname, 'fleet', 'sim.js'), [JSON.stringify(cfg)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv }));
  }

  get pid(): number {
    return this.child.pid!;
  }

  private request(msg: ToSim): Promise<FromSim> {
    if (this.exitCode !== undefined) return Promise.reject(new Error(`the simulator exited with ${this.exitCode}`));
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.send(msg);
    });
  }

  async stats(resetPeaks = false): Promise<SimStats> {
    const r = await this.request({ type: 'stats', resetPeaks });
    if (r.type !== 'stats') throw new Error(r.type === 'fatal' ? r.message : `unexpected reply ${r.type}`);
    return r.stats;
  }

  /** Closes every stream and waits for the process to exit; returns its final counters. */
  async stop(): Promise<SimStats | undefined> {
    if (this.exitCode !== undefined) return undefined;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    const r = await this.request({ type: 'stop' });
    const t = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(t);
    return r.type === 'stopped' ? r.stats : undefined;
  }

  kill(): void {
    if (this.exitCode === undefined) this.child.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------------------------

/** Everything measured over the window. */
interface Result {
  agents: number;
  channels: number;
  duration_s: number;
  master_cpu_fraction: number;
  master_rss_mib: number;
  master_rss_max_mib: number;
  missed_ttls: number;
  disconnects: number;
  tasks_completed: number;
  tasks_per_s: number;
  tasks_failed: number;
  tasks_running: number;
  agents_registered_at_end: number;
  heartbeats_per_s: number;
  agent_messages_per_s: number;
  heartbeat_interval_ms: { min: number; max: number };
  heartbeat_ttl_ms: { min: number; max: number };
  max_gap_of_ttl: number;
  sim_cpu_fraction: number;
  sim_loop_delay_p99_ms: number;
  sim_heartbeat_late_max_ms: number;
  bench_cpu_fraction: number;
  bench_loop_delay_max_ms: number;
  bench_loop_delay_max_ms_ramp: number;
  api_get_master_ms: { p50: number; p99: number; max: number };
  api_get_master_ms_ramp: { p50: number; p99: number; max: number };
  ramp_s: number;
  master_cpu_fraction_ramp: number;
  sim_cpu_fraction_ramp: number;
  sim_loop_delay_max_ms_ramp: number;
  sim_heartbeat_late_max_ms_ramp: number;
  max_gap_of_ttl_ramp: number;
  register_ms: { p50: number; p99: number; max: number };
  submit_failures: number;
  machine: { cpus: number; load_avg_1m: number; node: string };
  targets: typeof TARGETS;
  met: boolean;
  profile?: string;
}

const round = (n: number, d = 3) => (Number.isFinite(n) ? Math.round(n * 10 ** d) / 10 ** d : n);
const diff = (a: MasterLogCounts, b: MasterLogCounts, k: keyof MasterLogCounts) => b[k] - a[k];

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (!procAvailable()) throw new Error('this benchmark reads /proc/<pid>/stat and /proc/<pid>/status: run it on Linux');
  const controller = new AbortController();
  const signal = controller.signal;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signal.aborted) process.exit(130);
    note(`${sig}: stopping (again to force)`);
    controller.abort(new Error(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let master: BenchMaster | undefined;
  let sim: Simulator | undefined;
  let submitter: Submitter | undefined;
  let probe: LatencyProbe | undefined;
  let client: Awaited<ReturnType<typeof adminClient>> | undefined;
  // This process's own stalls: they would inflate the GetMaster times it measures.
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  try {
    for (const dir of [opts.cpuProf, opts.simCpuProf]) if (dir) fs.mkdirSync(dir, { recursive: true });
    note(`starting det-master${opts.cpuProf ? ` under --cpu-prof (${opts.cpuProf})` : ''}`);
    const started = await BenchMaster.start({ cpuProfDir: opts.cpuProf, reconnectGrace: '30s' });
    master = started.master;
    const address = `127.0.0.1:${started.port}`;
    client = await adminClient(address);
    // GetMaster is timed from the start: a master that stalls during the ramp shows here.
    probe = new LatencyProbe(client);
    probe.start();
    probe.phase('ramp');

    note(`simulating ${opts.agents} agents over ${opts.channels} gRPC channel(s), registering over ${opts.rampS}s`);
    const rampStart = cpuMark(master.pid);
    const rampT0 = performance.now();
    const simRampStart = { cpuS: 0, wallMs: performance.now() }; // a new process has used no CPU yet
    sim = Simulator.start({
      address, token: started.token, agents: opts.agents, channels: opts.channels, rampMs: opts.rampS * 1000, slotsPerAgent: opts.slots,
      defaultTaskMs: opts.taskSeconds * 1000, logLinesPerTask: opts.logLines, idPrefix: 'sim-agent-',
    }, opts.simCpuProf);
    const registerDeadline = performance.now() + opts.rampS * 1000 + 120_000;
    for (;;) {
      if (sim.fatal) throw new Error(sim.fatal);
      if (!master.running) throw new Error(`det-master exited; its output:\n${master.lastOutput()}`);
      master.poll();
      const s = await sim.stats();
      if (s.registeredNow >= opts.agents) break;
      if (performance.now() > registerDeadline) throw new Error(`only ${s.registeredNow} of ${opts.agents} agents registered within ${opts.rampS + 120}s; stream ends: ${JSON.stringify(s.streamEnds)}`);
      await sleep(250, signal);
    }
    const rampS = (performance.now() - rampT0) / 1000;
    const rampCpu = cpuFraction(rampStart, cpuMark(master.pid));
    const simRampCpu = cpuFraction(simRampStart, cpuMark(sim.pid));
    const simRamp = await sim.stats(true);
    const benchLoopMaxRamp = loopDelay.max / 1e6;
    note(
      `all ${opts.agents} agents registered after ${rampS.toFixed(1)}s; CPU during the ramp: master ${(rampCpu * 100).toFixed(1)}%, simulator ${(simRampCpu * 100).toFixed(1)}% of one core; ` +
        `Register -> Registered p50/p99/max ${simRamp.registerMs.p50}/${simRamp.registerMs.p99}/${simRamp.registerMs.max} ms; simulator loop delay max ${simRamp.loopDelayMaxMs.toFixed(0)} ms`,
    );

    const warmupS = opts.warmupS ?? (opts.taskRate > 0 ? opts.taskSeconds + 5 : 5);
    submitter = new Submitter(client, opts.taskRate, opts.taskSeconds);
    if (opts.taskRate > 0) submitter.start();
    probe.phase(undefined);
    note(`submitting ${opts.taskRate} experiment(s)/s of ${opts.taskSeconds}s tasks; warming up for ${warmupS}s`);
    await sleep(warmupS * 1000, signal);

    note(`measuring for ${opts.durationS}s`);
    const self0: CpuMark = { cpuS: cpuSecondsSelf(), wallMs: performance.now() };
    const m0 = cpuMark(master.pid);
    const s0 = cpuMark(sim.pid);
    const counts0 = master.countsNow();
    const sim0 = await sim.stats(true);
    loopDelay.reset();
    probe.phase('window');
    const windowStartWall = Date.now();
    const rss: number[] = [];
    const windowEnd = performance.now() + opts.durationS * 1000;
    while (performance.now() < windowEnd) {
      if (sim.fatal) throw new Error(sim.fatal);
      if (!master.running) throw new Error(`det-master exited; its output:\n${master.lastOutput()}`);
      rss.push(rssMib(master.pid));
      master.poll();
      await sleep(Math.min(1000, Math.max(0, windowEnd - performance.now())), signal);
    }
    const m1 = cpuMark(master.pid);
    const s1 = cpuMark(sim.pid);
    const self1: CpuMark = { cpuS: cpuSecondsSelf(), wallMs: performance.now() };
    const windowEndWall = Date.now();
    const rssEnd = rssMib(master.pid);
    probe.phase(undefined);
    const sim1 = await sim.stats(false);
    const benchLoopMax = loopDelay.max / 1e6;
    const counts1 = master.countsNow();
    const windowS = (m1.wallMs - m0.wallMs) / 1000;
    // A run in which no work flowed measures nothing: fail rather than report it.
    if (opts.taskRate > 0 && diff(counts0, counts1, 'trialsCompleted') === 0) {
      throw new Error(`no task completed during the ${windowS.toFixed(0)}s window (submitted ${submitter.submitted}, failed ${submitter.failed}${submitter.firstError ? `: ${submitter.firstError}` : ''}); master output:\n${master.lastOutput()}`);
    }

    submitter.stop();
    probe.stop();
    // Anything after this point is the shutdown, not the steady state.
    const countsAtStop = master.countsNow();
    master.stopCollectingProblems();
    note('stopping the simulator and the master');
    await sim.stop();
    const code = await master.stop();
    if (code !== 0) note(`det-master exited with ${code}; last output:\n${master.lastOutput()}`);

    let profile: { file: string; summary: ProfileSummary } | undefined;
    if (opts.cpuProf) {
      const { file, profile: p } = readNewestProfile(opts.cpuProf);
      profile = { file, summary: summarizeProfile(p, windowStartWall - master.spawnedAtMs, windowEndWall - master.spawnedAtMs) };
    }

    const api = probe.summary('window');
    const apiRamp = probe.summary('ramp');
    const result: Result = {
      agents: opts.agents,
      channels: opts.channels,
      duration_s: round(windowS, 1),
      master_cpu_fraction: round(cpuFraction(m0, m1)),
      master_rss_mib: round(rssEnd, 1),
      master_rss_max_mib: round(Math.max(rssEnd, ...rss), 1),
      missed_ttls: countsAtStop.missedTtl,
      disconnects: countsAtStop.disconnects,
      tasks_completed: diff(counts0, counts1, 'trialsCompleted'),
      tasks_per_s: round(diff(counts0, counts1, 'trialsCompleted') / windowS, 2),
      tasks_failed: countsAtStop.trialsErrored,
      tasks_running: sim1.tasksRunning,
      agents_registered_at_end: sim1.registeredNow,
      heartbeats_per_s: round((sim1.heartbeatsSent - sim0.heartbeatsSent) / windowS, 1),
      agent_messages_per_s: round((sim1.messagesSent - sim0.messagesSent) / windowS, 1),
      heartbeat_interval_ms: sim1.intervalMs,
      heartbeat_ttl_ms: sim1.ttlMs,
      max_gap_of_ttl: round(sim1.maxGapOfTtl),
      sim_cpu_fraction: round(cpuFraction(s0, s1)),
      sim_loop_delay_p99_ms: round(sim1.loopDelayP99Ms, 1),
      sim_heartbeat_late_max_ms: sim1.maxHeartbeatLateMs,
      bench_cpu_fraction: round(cpuFraction(self0, self1)),
      bench_loop_delay_max_ms: round(benchLoopMax, 1),
      bench_loop_delay_max_ms_ramp: round(benchLoopMaxRamp, 1),
      api_get_master_ms: { p50: round(api.p50, 1), p99: round(api.p99, 1), max: round(api.max, 1) },
      api_get_master_ms_ramp: { p50: round(apiRamp.p50, 1), p99: round(apiRamp.p99, 1), max: round(apiRamp.max, 1) },
      ramp_s: round(rampS, 1),
      master_cpu_fraction_ramp: round(rampCpu),
      sim_cpu_fraction_ramp: round(simRampCpu),
      sim_loop_delay_max_ms_ramp: round(simRamp.loopDelayMaxMs, 1),
      sim_heartbeat_late_max_ms_ramp: simRamp.maxHeartbeatLateMs,
      max_gap_of_ttl_ramp: round(simRamp.maxGapOfTtl),
      register_ms: simRamp.registerMs,
      submit_failures: submitter.failed,
      machine: { cpus: os.availableParallelism(), load_avg_1m: round(os.loadavg()[0], 2), node: process.version },
      targets: TARGETS,
      met: false,
      ...(profile ? { profile: profile.file } : {}),
    };
    result.met = result.master_cpu_fraction < TARGETS.cpuFraction && result.master_rss_mib < TARGETS.rssMib && result.missed_ttls <= TARGETS.missedTtls;
    if (submitter.firstError) note(`${submitter.failed} CreateExperiment call(s) failed; first: ${submitter.firstError}`);
    if (Object.keys(sim1.streamEnds).length > 0) note(`agent streams that ended before the stop: ${JSON.stringify(sim1.streamEnds)}`);
    if (master.problems.length > 0) note(`master warnings/errors (first ${master.problems.length}):\n  ${master.problems.join('\n  ')}`);

    if (opts.json) process.stdout.write(JSON.stringify(result) + '\n');
    else process.stdout.write(table(result, opts, profile?.summary) + '\n');
    return 0;
  } finally {
    loopDelay.disable();
    submitter?.stop();
    probe?.stop();
    client?.close();
    sim?.kill();
    if (master) {
      await master.stop().catch(() => undefined);
      master.cleanup();
    }
  }
}

function cpuSecondsSelf(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function table(r: Result, opts: Options, prof: ProfileSummary | undefined): string {
  const pct = (f: number) => `${(f * 100).toFixed(1)}%`;
  const ok = (met: boolean) => (met ? 'met' : 'NOT met');
  const rows: [string, string, string][] = [
    ['master CPU (fraction of one core)', `${r.master_cpu_fraction.toFixed(3)} (${pct(r.master_cpu_fraction)})`, `< ${TARGETS.cpuFraction}: ${ok(r.master_cpu_fraction < TARGETS.cpuFraction)}`],
    ['master RSS at the end (max)', `${r.master_rss_mib.toFixed(1)} MiB (${r.master_rss_max_mib.toFixed(1)})`, `< ${TARGETS.rssMib} MiB: ${ok(r.master_rss_mib < TARGETS.rssMib)}`],
    ['missed heartbeat TTLs (whole run)', String(r.missed_ttls), `${TARGETS.missedTtls}: ${ok(r.missed_ttls <= TARGETS.missedTtls)}`],
    ['agent disconnects (whole run)', `${r.disconnects}; ${r.agents_registered_at_end} of ${r.agents} registered at the end`, ''],
    ['tasks completed in the window', `${r.tasks_completed} (${r.tasks_per_s}/s), ${r.tasks_running} running at the end`, ''],
    ['tasks failed (whole run)', String(r.tasks_failed), ''],
    ['agent messages / heartbeats per s', `${r.agent_messages_per_s} / ${r.heartbeats_per_s}`, ''],
    ['heartbeat interval / TTL handed out', `${r.heartbeat_interval_ms.min}-${r.heartbeat_interval_ms.max} / ${r.heartbeat_ttl_ms.min}-${r.heartbeat_ttl_ms.max} ms`, ''],
    ['largest message gap of one agent', `${pct(r.max_gap_of_ttl)} of its TTL (ramp: ${pct(r.max_gap_of_ttl_ramp)})`, ''],
    ['admin API GetMaster p50 / p99 / max', `${r.api_get_master_ms.p50} / ${r.api_get_master_ms.p99} / ${r.api_get_master_ms.max} ms (ramp: ${r.api_get_master_ms_ramp.p50} / ${r.api_get_master_ms_ramp.p99} / ${r.api_get_master_ms_ramp.max} ms)`, ''],
    ['simulator CPU (fraction of one core)', `${r.sim_cpu_fraction.toFixed(3)} (${pct(r.sim_cpu_fraction)})`, ''],
    ['simulator loop delay p99 / late beat max', `${r.sim_loop_delay_p99_ms} / ${r.sim_heartbeat_late_max_ms} ms (ramp: max ${r.sim_loop_delay_max_ms_ramp} / ${r.sim_heartbeat_late_max_ms_ramp} ms)`, ''],
    ['bench driver CPU / loop delay max', `${pct(r.bench_cpu_fraction)} / ${r.bench_loop_delay_max_ms} ms (ramp: ${r.bench_loop_delay_max_ms_ramp} ms)`, ''],
    ['registration ramp: time, master / sim CPU', `${r.ramp_s}s, ${pct(r.master_cpu_fraction_ramp)} / ${pct(r.sim_cpu_fraction_ramp)}`, ''],
    ['Register -> Registered p50 / p99 / max', `${r.register_ms.p50} / ${r.register_ms.p99} / ${r.register_ms.max} ms`, ''],
  ];
  const w0 = Math.max(...rows.map((x) => x[0].length));
  const w1 = Math.max(...rows.map((x) => x[1].length));
  if (r.missed_ttls > 0) {
    const simLate = Math.max(r.max_gap_of_ttl, r.max_gap_of_ttl_ramp) >= 1;
    rows.push([
      'who missed the TTLs',
      simLate ? 'the simulator sent too late (largest gap >= 100% of a TTL)' : 'not the simulator: every agent wrote a message within its TTL (largest gap < 100%); the delay was in transit or in the master',
      '',
    ]);
  }
  const lines = [
    `Fleet: ${r.agents} simulated agents over ${r.channels} gRPC channel(s), ${opts.taskRate} task(s)/s of ${opts.taskSeconds}s, window ${r.duration_s}s`,
    `  machine: ${r.machine.cpus} CPUs, load average ${r.machine.load_avg_1m}, node ${r.machine.node}${opts.cpuProf ? '; master under --cpu-prof (adds overhead)' : ''}`,
    ...rows.map(([a, b, c]) => `  ${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`),
    `  targets: ${r.met ? 'all met' : 'NOT all met'}`,
  ];
  if (prof) {
    lines.push('', `Master CPU profile over the window (${prof.busyMs.toFixed(0)} ms busy, ${prof.idleMs.toFixed(0)} ms idle sampled; ${r.profile}):`, '  self time by package:');
    for (const h of prof.packages.slice(0, 10)) lines.push(`    ${pct(h.share).padStart(6)}  ${h.ms.toFixed(0).padStart(6)} ms  ${h.name}`);
    lines.push('  self time by function:');
    for (const h of prof.functions) lines.push(`    ${pct(h.share).padStart(6)}  ${h.ms.toFixed(0).padStart(6)} ms  ${h.name}`);
  }
  return lines.join('\n');
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench:fleet failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
