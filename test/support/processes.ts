// Starts the real det-master, det-agent and det binaries for end-to-end tests,
// exactly as a user would run them, and cleans them up afterwards.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { waitFor } from './env';

/** Repo root at run time (tests run from dist/test/support). */
export const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = (name: string) => path.join(ROOT, 'bin', `${name}.js`);

/** A running det process with its captured output. */
export class DetProcess {
  stdout = '';
  stderr = '';
  exitCode: number | null = null;
  readonly exited: Promise<number | null>;
  constructor(readonly name: string, readonly child: ChildProcess) {
    child.stdout!.on('data', (d) => (this.stdout += d));
    child.stderr!.on('data', (d) => (this.stderr += d));
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((this.exitCode = code ?? (signal ? 128 : null)))));
  }
  /** Waits until stdout or stderr matches. */
  async waitForOutput(re: RegExp, what: string, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    let m: RegExpMatchArray | null = null;
    await waitFor(() => {
      if (this.exitCode !== null && !re.test(this.stdout + this.stderr)) throw new Error(`${this.name} exited with ${this.exitCode}: ${this.stderr.slice(-2000)}`);
      m = (this.stdout + '\n' + this.stderr).match(re);
      return m !== null;
    }, { what, timeoutMs, intervalMs: 25 });
    return m!;
  }
  /** SIGTERM, then SIGKILL if it does not exit in time. */
  async stop(timeoutMs = 15_000): Promise<number | null> {
    if (this.exitCode !== null) return this.exitCode;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

/** Spawns a det binary. */
export function spawnDet(name: 'det-master' | 'det-agent', args: string[], env: NodeJS.ProcessEnv = {}): DetProcess {
  const child = spawn(process.execPath, [BIN(name), ...args], { env: { ...cleanEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  return new DetProcess(name, child);
}

/** The environment without DET_* settings of the caller, so tests are explicit. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('DET_') && !k.startsWith('DET_TEST')) delete env[k];
  delete env.DOCKER_HOST;
  return env;
}

/** Result of a CLI run. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `det` to completion. */
export function det(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN('det'), ...args], { env: { ...cleanEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`det ${args.join(' ')} did not finish in ${timeoutMs} ms; stdout: ${stdout.slice(-2000)} stderr: ${stderr.slice(-2000)}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A master (and its data dir) started for a test. */
export interface TestMaster {
  proc: DetProcess;
  port: number;
  address: string;
  dataDir: string;
  token: string;
}

/** Starts det-master on 127.0.0.1 with a free port and a fresh data dir. */
export async function startMaster(args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<TestMaster> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-master-'));
  const proc = spawnDet('det-master', ['--port', '0', '--data-dir', dataDir, ...args], { DET_AGENT_RECONNECT_GRACE: '5s', ...env });
  const m = await proc.waitForOutput(/det-master listening on 127\.0\.0\.1:(\d+)/, 'det-master to listen');
  const port = Number(m[1]);
  const tokenFile = path.join(dataDir, 'agent_token');
  const token = env.DET_AGENT_TOKEN ?? fs.readFileSync(tokenFile, 'utf8').trim();
  return { proc, port, address: `127.0.0.1:${port}`, dataDir, token };
}

/** Starts det-agent against a master, on the test dockerd. */
export async function startAgent(master: TestMaster, dockerSocket: string, opts: { id?: string; args?: string[]; env?: NodeJS.ProcessEnv; waitRegistered?: boolean } = {}): Promise<DetProcess> {
  const args = opts.args ?? [];
  // A work dir of its own, unless the test names one: agents of different tests never share task files.
  const workDir = args.includes('--work-dir') ? [] : ['--work-dir', fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-agent-work-'))];
  const proc = spawnDet('det-agent', ['--master-port', String(master.port), '--docker-socket', dockerSocket, '--agent-id', opts.id ?? 'e2e-agent', ...workDir, ...args], {
    DET_AGENT_TOKEN: master.token,
    ...opts.env,
  });
  if (opts.waitRegistered ?? true) await proc.waitForOutput(/registered with master/, `agent ${opts.id ?? 'e2e-agent'} to register`);
  return proc;
}
