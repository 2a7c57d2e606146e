// Benchmark: start latency. How long from submitting a trivial experiment (`true` on a cached
// image) until the master sees its container exit, through a real det-master and det-agent, as a
// ratio to `docker run --rm --network host IMAGE true` on the same dockerd, measured in the same
// run and interleaved with ours so that machine drift cancels out.
//
// Usage: npm run bench:start-latency [-- --runs N] [-- --json]
// (package.json runs this under test/env/with-testenv.sh, which provides dockerd and the image.)
// Exits 0 whether or not the target is met; non-zero only when something broke.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { apiProto } from '../common/proto/load';
import type { DeterminedClient } from '../common/proto-gen/determined/api/v1/Determined';
import type { Trial__Output } from '../common/proto-gen/determined/api/v1/Trial';
import { CONTAINER_LABELS } from '../common/types';
import { testEnv, waitFor } from '../test/support/env';
import { startAgent, startMaster, type DetProcess, type TestMaster } from '../test/support/processes';
import { exitOnHelp, intOptions } from './options';

/** Our median may be at most this multiple of docker run's. */
const TARGET_RATIO = 1.15;
/** A single run (either path) that takes longer than this is an error, not a sample. */
const RUN_TIMEOUT_MS = 60_000;

/** Command-line options. */
interface Options {
  runs: number;
  warmup: number;
  json: boolean;
}

const USAGE = `usage: node dist/bench/start-latency.js [--runs N] [--warmup N] [--json]
  --runs N     measured runs of each path (default 20)
  --warmup N   unmeasured runs of each path first (default 3)
  --json       print only one JSON object on stdout (progress goes to stderr)`;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: { runs: { type: 'string' }, warmup: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  exitOnHelp(values.help, USAGE);
  const count = intOptions(USAGE);
  return { runs: count('runs', values.runs, 20, 1), warmup: count('warmup', values.warmup, 3, 0), json: values.json ?? false };
}

/** Progress and diagnostics: always stderr, so --json keeps stdout clean. */
function note(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/** Summary of a sample in milliseconds. */
interface Stats {
  median: number;
  p90: number;
  min: number;
  max: number;
}

/** Median (mean of the middle two for even sizes), nearest-rank p90, min, max. */
function summarize(samples: readonly number[]): Stats {
  if (samples.length === 0) throw new Error('no samples');
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  const p90 = s[Math.min(s.length - 1, Math.ceil(0.9 * s.length) - 1)];
  return { median, p90, min: s[0], max: s[s.length - 1] };
}

const round1 = (n: number) => Math.round(n * 10) / 10;

// ---------------------------------------------------------------------------------------------
// The reference: the docker CLI against the same dockerd
// ---------------------------------------------------------------------------------------------

/** Runs the docker CLI against the test dockerd; resolves with its output, rejects on a non-zero exit. */
function dockerCli(socket: string, args: string[], timeoutMs = RUN_TIMEOUT_MS): Promise<{ stdout: string; stderr: string }> {
  const bin = process.env.DOCKER_CLI ?? 'docker';
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.DOCKER_HOST; // -H decides
    const child = spawn(bin, ['-H', `unix://${socket}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run the docker CLI '${bin}' (set DOCKER_CLI to its path): ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new Error(`docker ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim() || stdout.trim()}`));
    });
  });
}

/** Pulls the image into dockerd unless it is there already. */
async function ensureImage(socket: string, image: string): Promise<void> {
  try {
    await dockerCli(socket, ['image', 'inspect', '--format', '{{.Id}}', image]);
    return;
  } catch {
    note(`image ${image} is not in dockerd; pulling it`);
  }
  await dockerCli(socket, ['pull', '--quiet', image], 300_000);
}

/** One `docker run --rm --network host IMAGE true`; returns its wall time in ms. */
async function dockerRunOnce(socket: string, image: string): Promise<number> {
  const t0 = performance.now();
  await dockerCli(socket, ['run', '--rm', '--network', 'host', image, 'true']);
  return performance.now() - t0;
}

// ---------------------------------------------------------------------------------------------
// Ours: the admin API of a real det-master with one real det-agent
// ---------------------------------------------------------------------------------------------

function unaryCall<Res>(fn: (cb: (err: grpc.ServiceError | null, res?: Res) => void) => void): Promise<Res> {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res as Res))));
}

/** What one measured run of ours saw. */
interface OurRun {
  ms: number;
  experimentId: number;
  trialId: number;
  /** Wall-clock (Date.now()) bounds of the run, to line it up with the processes' log timestamps. */
  startWallMs: number;
  endWallMs: number;
}

/**
 * One submit → container exited: CreateExperiment, then follow the trial's logs until the master
 * ends the stream (it does so when the trial reaches a terminal state). Throws unless COMPLETED.
 */
async function ourRunOnce(client: DeterminedClient, image: string, label: string): Promise<OurRun> {
  const config = [`name: ${label}`, `image: ${image}`, 'entrypoint: ["true"]', 'max_restarts: 0', ''].join('\n');
  const deadline = () => new Date(Date.now() + RUN_TIMEOUT_MS);
  const startWallMs = Date.now();
  const t0 = performance.now();
  const created = await unaryCall<{ experiment: { id: number } | null; trials: Trial__Output[] }>((cb) => client.CreateExperiment({ configYaml: config }, { deadline: deadline() }, cb));
  const trialId = created.trials[0]?.id;
  if (!trialId) throw new Error(`CreateExperiment returned no trial: ${JSON.stringify(created)}`);
  await new Promise<void>((resolve, reject) => {
    const call = client.TrialLogs({ trialId, follow: true }, { deadline: deadline() });
    call.on('data', () => undefined); // read the lines (`true` prints none), or the stream never ends
    call.on('end', resolve);
    call.on('error', reject);
  });
  const ms = performance.now() - t0;
  const endWallMs = Date.now();
  const { trial } = await unaryCall<{ trial: Trial__Output | null }>((cb) => client.GetTrial({ trialId }, { deadline: deadline() }, cb));
  if (trial?.state !== 'TRIAL_STATE_COMPLETED' || trial.exitCode !== 0) {
    throw new Error(`trial ${trialId} ended ${trial?.state ?? 'unknown'} (exit code ${trial?.exitCode ?? 'none'}): ${trial?.message ?? ''}`);
  }
  return { ms, experimentId: created.experiment?.id ?? 0, trialId, startWallMs, endWallMs };
}

/** Waits until the agent has removed its containers, so that one run's cleanup never overlaps the next run. */
async function waitContainersGone(socket: string, agentId: string): Promise<void> {
  await waitFor(
    async () => (await dockerCli(socket, ['ps', '-aq', '--filter', `label=${CONTAINER_LABELS.agent}=${agentId}`])).stdout.trim() === '',
    { what: `agent ${agentId} to remove its containers`, timeoutMs: 30_000, intervalMs: 20 },
  );
}

// ---------------------------------------------------------------------------------------------
// Where our time goes, from the master's log
// ---------------------------------------------------------------------------------------------

/** Phases of one run, in order; each ends at the master log line named. */
const PHASES = [
  { name: 'submit -> experiment stored', to: 'created', why: 'CreateExperiment RPC, config parse, store insert' },
  { name: '-> ASSIGNED', to: 'ASSIGNED', why: 'scheduling pass, allocation + trial store writes' },
  { name: '-> PULLING', to: 'PULLING', why: 'start message to agent, agent reports PULLING back' },
  { name: '-> STARTING', to: 'STARTING', why: 'agent: docker create (optimistic, no image inspect)' },
  { name: '-> RUNNING', to: 'RUNNING', why: 'agent: docker attach + start' },
  { name: '-> COMPLETED', to: 'COMPLETED', why: 'agent: docker wait + output drain, TERMINATED to master, store writes' },
  { name: '-> stream ended at client', to: 'end', why: 'TrialLogs stream end reaches the bench' },
] as const;

/** Per-phase durations of each run, read from the master's `experiment created` and `trial state` lines. */
function phaseBreakdown(masterLog: string, runs: OurRun[]): Map<string, number[]> | undefined {
  const ts = (line: string) => Date.parse(line.slice(0, line.indexOf(' ')));
  const createdAt = new Map<number, number>(); // experiment id -> ms
  const states = new Map<number, Map<string, number>>(); // trial id -> state -> ms
  for (const line of masterLog.split('\n')) {
    let m = /\bexperiment created experiment=(\d+)/.exec(line);
    if (m) createdAt.set(Number(m[1]), ts(line));
    m = /\btrial state trial=(\d+) from=\w+ to=(\w+)/.exec(line);
    if (m) {
      const byState = states.get(Number(m[1])) ?? new Map<string, number>();
      byState.set(m[2], ts(line));
      states.set(Number(m[1]), byState);
    }
  }
  const out = new Map<string, number[]>(PHASES.map((p) => [p.name, []]));
  for (const run of runs) {
    const s = states.get(run.trialId);
    const created = createdAt.get(run.experimentId);
    if (!s || created === undefined) return undefined;
    const at: Record<string, number | undefined> = { created, end: run.endWallMs, ...Object.fromEntries(s) };
    let prev = run.startWallMs;
    for (const p of PHASES) {
      const t = at[p.to];
      if (t === undefined) return undefined;
      out.get(p.name)!.push(t - prev);
      prev = t;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** Everything this run started, for cleanup. */
interface Started {
  master?: TestMaster;
  agent?: DetProcess;
  client?: DeterminedClient;
}

async function cleanup(s: Started): Promise<void> {
  s.client?.close();
  await s.agent?.stop().catch(() => undefined);
  await s.master?.proc.stop().catch(() => undefined);
  if (s.master) fs.rmSync(s.master.dataDir, { recursive: true, force: true });
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  const env = testEnv();
  const started: Started = {};
  const agentId = `bench-agent-${process.pid}`;
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    note(`${sig}: stopping after the current run (again to force)`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const checkInterrupted = () => {
    if (interrupted) throw new Error('interrupted');
  };

  try {
    note(`dockerd: ${env.dockerSocket}; image: ${env.image}`);
    const server = (await dockerCli(env.dockerSocket, ['version', '--format', '{{.Server.Version}}'])).stdout.trim();
    const driver = (await dockerCli(env.dockerSocket, ['info', '--format', '{{.Driver}}'])).stdout.trim();
    await ensureImage(env.dockerSocket, env.image);

    note('starting det-master and det-agent');
    started.master = await startMaster();
    started.agent = await startAgent(started.master, env.dockerSocket, { id: agentId, args: ['--slot-type', 'cpu', '--cpu-slots', '1'] });
    const Determined = apiProto().determined.api.v1.Determined;
    const client = (started.client = new Determined(started.master.address, grpc.credentials.createInsecure()));
    await new Promise<void>((resolve, reject) => client.waitForReady(new Date(Date.now() + 10_000), (err) => (err ? reject(err) : resolve())));

    note(`warming up: ${opts.warmup} run(s) of each path`);
    for (let i = 0; i < opts.warmup; i++) {
      checkInterrupted();
      await ourRunOnce(client, env.image, `bench-warmup-${i}`);
      await waitContainersGone(env.dockerSocket, agentId);
      await dockerRunOnce(env.dockerSocket, env.image);
    }

    note(`measuring: ${opts.runs} run(s) of each path, interleaved`);
    const ours: OurRun[] = [];
    const docker: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      checkInterrupted();
      const o = await ourRunOnce(client, env.image, `bench-${i}`);
      ours.push(o);
      await waitContainersGone(env.dockerSocket, agentId);
      checkInterrupted();
      docker.push(await dockerRunOnce(env.dockerSocket, env.image));
      note(`run ${i + 1}/${opts.runs}: det ${o.ms.toFixed(1)} ms, docker run ${docker[i].toFixed(1)} ms`);
    }

    const a = summarize(ours.map((o) => o.ms));
    const b = summarize(docker);
    const ratio = a.median / b.median;
    const met = ratio <= TARGET_RATIO;
    if (opts.json) {
      const result = { median_ms: round1(a.median), docker_run_median_ms: round1(b.median), ratio: Math.round(ratio * 1000) / 1000, runs: opts.runs, target_ratio: TARGET_RATIO, met };
      process.stdout.write(JSON.stringify(result) + '\n');
      return 0;
    }

    const row = (name: string, s: Stats) =>
      `  ${name.padEnd(34)} ${[s.median, s.p90, s.min, s.max].map((n) => n.toFixed(1).padStart(8)).join(' ')}`;
    const lines = [
      `Start latency: submit -> container exited, \`true\` on a cached image (${opts.runs} runs each, interleaved, after ${opts.warmup} warm-up runs)`,
      `  machine: ${os.availableParallelism()} CPUs, node ${process.version}, dockerd ${server}, storage driver ${driver}`,
      `  ${'ms'.padEnd(34)} ${['median', 'p90', 'min', 'max'].map((h) => h.padStart(8)).join(' ')}`,
      row('det (master + agent)', a),
      row('docker run --rm --network host', b),
      `  ratio (median / docker run median): ${ratio.toFixed(3)}  target <= ${TARGET_RATIO}: ${met ? 'MET' : 'NOT MET'}`,
    ];
    const phases = phaseBreakdown(started.master.proc.stderr, ours);
    if (phases) {
      lines.push('', '  where det spends it (medians of each phase, from the master log; ms resolution):');
      for (const p of PHASES) lines.push(`    ${p.name.padEnd(30)} ${summarize(phases.get(p.name)!).median.toFixed(1).padStart(7)}  ${p.why}`);
    } else {
      lines.push('', '  (no phase breakdown: the master log lacked some trial state lines)');
    }
    process.stdout.write(lines.join('\n') + '\n');
    return 0;
  } finally {
    await cleanup(started);
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench/start-latency: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
