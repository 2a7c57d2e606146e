// Helpers of the recovery (chaos) end-to-end tests: experiment configs whose trials print
// numbered lines, an admin API client on a det-master process that survives its restarts,
// SIGKILL and restart of det processes, a fresh PostgreSQL database per test, and the check that
// a trial's log holds every numbered line exactly once and in order.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Client as PgClient } from 'pg';
import { apiProto } from '../../common/proto/load';
import type { DeterminedClient } from '../../common/proto-gen/determined/api/v1/Determined';
import type { Agent__Output } from '../../common/proto-gen/determined/api/v1/Agent';
import type { Trial__Output } from '../../common/proto-gen/determined/api/v1/Trial';
import { waitFor } from './env';
import { startMaster, type DetProcess, type TestMaster } from './processes';

/** A short random suffix: agent ids, database names and buckets of one run never collide with another's. */
export function uniqueSuffix(): string {
  return randomBytes(4).toString('hex');
}

/** A fresh temporary directory. */
export function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** What the trials of a numbered-lines experiment do. */
export interface NumberedTrialsConfig {
  name: string;
  image: string;
  /** Shell expression for the number of lines (e.g. "40" or "$((14 + DET_TRIAL_ID % 7))"). */
  lines: string;
  /** Seconds between lines (busybox sleep takes fractions). */
  sleep: number;
  /** Lines of a restarted attempt (DET_TRIAL_RESTARTS > 0); default: the same as `lines`. */
  linesAfterRestart?: string;
  /** Exit code after the last line (default 0). */
  exitCode?: number;
  /** Number of trials (a grid over one int hyperparameter); default 1. */
  trials?: number;
  maxRestarts: number;
  killGracePeriod?: string;
}

/**
 * Experiment YAML whose trials print "line <i> of <allocation id>" for i = 1..n, one per `sleep`
 * seconds, then exit. The allocation id in each line tells attempts apart.
 */
export function numberedTrialsYaml(c: NumberedTrialsConfig): string {
  const n = c.linesAfterRestart ? `$(if [ "$DET_TRIAL_RESTARTS" = 0 ]; then echo ${c.lines}; else echo ${c.linesAfterRestart}; fi)` : c.lines;
  const script = `n=${n}; i=1; while [ $i -le $n ]; do echo "line $i of $DET_ALLOCATION_ID"; i=$((i+1)); sleep ${c.sleep}; done; exit ${c.exitCode ?? 0}`;
  const trials = c.trials ?? 1;
  return [
    `name: ${c.name}`,
    `image: ${c.image}`,
    `entrypoint: ["sh", "-c", ${JSON.stringify(script)}]`,
    `max_restarts: ${c.maxRestarts}`,
    `kill_grace_period: ${c.killGracePeriod ?? '2s'}`,
    'resources:',
    '  slots_per_trial: 1',
    ...(trials > 1 ? ['searcher:', '  name: grid', 'hyperparameters:', '  index:', '    type: int', '    minval: 1', `    maxval: ${trials}`] : ['hyperparameters:', '  index: 1']),
    '',
  ].join('\n');
}

/** Writes an experiment config to a temporary file for `det experiment create`. */
export function writeConfig(yaml: string): string {
  const file = path.join(tmpDir('det-e2e-recovery-cfg-'), 'exp.yaml');
  fs.writeFileSync(file, yaml);
  return file;
}

/** The lines "line <i> of <allocationId>" found in a trial's log text, as numbers, in log order. */
export function numberedLines(logText: string, allocationId: string): number[] {
  const re = new RegExp(`^line (\\d+) of ${allocationId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'gm');
  return [...logText.matchAll(re)].map((m) => Number(m[1]));
}

/** Asserts that an attempt's log lines are exactly 1..n in order: none lost, none duplicated. */
export function assertCompleteInOrder(logText: string, allocationId: string, n: number): void {
  const got = numberedLines(logText, allocationId);
  const expected = Array.from({ length: n }, (_, i) => i + 1);
  if (got.length === n && got.every((v, i) => v === expected[i])) return;
  const seen = new Map<number, number>();
  for (const v of got) seen.set(v, (seen.get(v) ?? 0) + 1);
  const missing = expected.filter((v) => !seen.has(v));
  const duplicated = [...seen].filter(([, c]) => c > 1).map(([v, c]) => `${v} x${c}`);
  const outOfOrder = got.some((v, i) => i > 0 && v < got[i - 1]);
  assert.fail(
    `log of ${allocationId} is not lines 1..${n} exactly once in order: ${got.length} lines; missing [${missing.join(',')}]; duplicated [${duplicated.join(',')}]; ` +
      `${outOfOrder ? 'OUT OF ORDER; ' : ''}order seen: ${got.join(',')}`,
  );
}

/** The admin API of a master at a fixed address; reconnects by itself when the master restarts. */
export class MasterApi {
  private readonly client: DeterminedClient;
  constructor(readonly address: string) {
    const Determined = apiProto().determined.api.v1.Determined;
    this.client = new Determined(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, 'grpc.max_reconnect_backoff_ms': 1_000 }) as unknown as DeterminedClient;
  }

  private call<Res>(fn: (c: DeterminedClient, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => void): Promise<Res> {
    return new Promise((resolve, reject) => fn(this.client, { deadline: Date.now() + 5_000 }, (err, res) => (err ? reject(err) : resolve(res!))));
  }

  /** Trials of an experiment, by id. */
  async trials(experimentId: number): Promise<Trial__Output[]> {
    return (await this.call<{ trials: Trial__Output[] }>((c, o, cb) => c.ListTrials({ experimentId }, o, cb))).trials;
  }

  /** One trial. */
  async trial(trialId: number): Promise<Trial__Output> {
    return (await this.call<{ trial: Trial__Output | null }>((c, o, cb) => c.GetTrial({ trialId }, o, cb))).trial!;
  }

  /** One agent. */
  async agent(agentId: string): Promise<Agent__Output> {
    return (await this.call<{ agent: Agent__Output | null }>((c, o, cb) => c.GetAgent({ agentId }, o, cb))).agent!;
  }

  /** Every stored log line of a trial, as text (one line each). */
  logText(trialId: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const lines: string[] = [];
      const call = this.client.TrialLogs({ trialId, follow: false }, { deadline: Date.now() + 10_000 });
      call.on('data', (batch: { logs: { text: string }[] }) => {
        for (const l of batch.logs) lines.push(l.text.replace(/\r?\n$/, ''));
      });
      call.on('error', reject);
      call.on('end', () => resolve(lines.join('\n')));
    });
  }

  close(): void {
    this.client.close();
  }
}

/** Trial states as the API names them, without the prefix. */
export const stateOf = (t: Trial__Output): string => String(t.state).replace(/^TRIAL_STATE_/, '');

/** Terminal trial states. */
export const TERMINAL = new Set(['COMPLETED', 'ERROR', 'CANCELED']);

/** Waits until a trial is terminal and returns it. */
export async function waitTrialEnded(api: MasterApi, trialId: number, timeoutMs: number): Promise<Trial__Output> {
  let last: Trial__Output | undefined;
  await waitFor(
    async () => {
      last = await api.trial(trialId);
      return TERMINAL.has(stateOf(last));
    },
    { what: `trial ${trialId} to end`, timeoutMs, intervalMs: 250 },
  ).catch((err) => {
    throw new Error(`${(err as Error).message}; last seen: ${JSON.stringify(last && { state: last.state, restarts: last.restarts, message: last.message, allocation: last.allocationId })}`);
  });
  return last!;
}

/** SIGKILLs a det process and waits until it is gone. */
export async function killHard(p: DetProcess): Promise<void> {
  if (p.exitCode !== null) return;
  p.child.kill('SIGKILL');
  await p.exited;
}

/** How to (re)start one master: the same data dir, port, token and store every time. */
export interface MasterSetup {
  dataDir: string;
  token: string;
  /** Extra flags, e.g. ['--db', url]. */
  args: string[];
  env: NodeJS.ProcessEnv;
  /** 0 the first time; the first start's port afterwards, so agents find the restarted master. */
  port: number;
}

/** Starts det-master per `setup` and records its port for the next start. */
export async function startMasterFrom(setup: MasterSetup): Promise<TestMaster> {
  const m = await startMaster(['--data-dir', setup.dataDir, '--port', String(setup.port), ...setup.args], { DET_AGENT_TOKEN: setup.token, ...setup.env });
  setup.port = m.port;
  return { ...m, dataDir: setup.dataDir };
}

/** A fresh PostgreSQL database for one test; drop() removes it. */
export async function createTestDatabase(pgUrl: string, prefix: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${process.pid}_${uniqueSuffix()}`;
  const admin = new PgClient({ connectionString: pgUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(pgUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new PgClient({ connectionString: pgUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/**
 * After a failed test: writes the stdout and stderr of every process it started to files and
 * prints where they are, so the failure can be traced in the master's and agents' own logs.
 */
export function saveLogsIfFailed(test: Mocha.Runnable | undefined, procs: DetProcess[]): void {
  if (!test || test.state !== 'failed' || procs.length === 0) return;
  const dir = tmpDir('det-e2e-recovery-logs-');
  procs.forEach((p, i) => fs.writeFileSync(path.join(dir, `${i}-${p.name}.log`), `${p.stdout}\n--- stderr ---\n${p.stderr}`));
  process.stdout.write(`      process logs of the failed test: ${dir}\n`);
}
