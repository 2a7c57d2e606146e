// Starts the real det-master (bin/det-master.js) for the fleet benchmark, optionally under the V8
// CPU profiler, and counts the log lines the benchmark reports on (missed heartbeat TTLs,
// disconnects, trial states), keeping only a short tail of the log. The master writes its output
// to a file, not a pipe: Node writes to a pipe synchronously, so a pipe reader that gets little
// CPU (the benchmark, on a busy machine) would block the master's event loop and distort what is
// measured.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Repo root at run time (this file runs from dist/bench/fleet). */
const ROOT = path.resolve(__dirname, '..', '..', '..');

/** Counters over the master's log lines. */
export interface MasterLogCounts {
  /** `agent missed its heartbeat TTL` (master/agents/agent-link.ts, DET_ERR_HEARTBEAT_TIMEOUT). */
  missedTtl: number;
  /** `agent did not register in time`. */
  registerTimeouts: number;
  /** `agent disconnected` (any reason, missed TTLs included). */
  disconnects: number;
  registrations: number;
  /** `trial state ... to=COMPLETED` / `to=ERROR`. */
  trialsCompleted: number;
  trialsErrored: number;
  warnings: number;
  errors: number;
}

/** The counters one log line adds to (none for most lines). Pure. */
export function classifyLogLine(line: string): (keyof MasterLogCounts)[] {
  const m = /^\S+ (DEBUG|INFO|WARN|ERROR)\s+\[[^\]]*\] (.*)$/.exec(line);
  if (!m) return [];
  const [, level, rest] = m;
  const out: (keyof MasterLogCounts)[] = [];
  if (level === 'WARN') out.push('warnings');
  if (level === 'ERROR') out.push('errors');
  if (rest.startsWith('agent missed its heartbeat TTL')) out.push('missedTtl');
  else if (rest.startsWith('agent did not register in time')) out.push('registerTimeouts');
  else if (rest.startsWith('agent disconnected')) out.push('disconnects');
  else if (rest.startsWith('agent registered')) out.push('registrations');
  else if (rest.startsWith('trial state ')) {
    if (/ to=COMPLETED\b/.test(rest)) out.push('trialsCompleted');
    else if (/ to=ERROR\b/.test(rest)) out.push('trialsErrored');
  }
  return out;
}

const emptyCounts = (): MasterLogCounts => ({ missedTtl: 0, registerTimeouts: 0, disconnects: 0, registrations: 0, trialsCompleted: 0, trialsErrored: 0, warnings: 0, errors: 0 });

/** How to start the master. */
export interface MasterOptions {
  /** Directory for a V8 CPU profile (node --cpu-prof), written when the master exits; undefined for none. */
  cpuProfDir: string | undefined;
  /** agent_reconnect_grace (the master's default is 30s). */
  reconnectGrace: string;
}

/** A running det-master. */
export class BenchMaster {
  private readonly counts = emptyCounts();
  /** The last lines of warnings and errors, for the report. */
  readonly problems: string[] = [];
  /** The last lines of output, for error messages. */
  private tail: string[] = [];
  private exitCode: number | null | undefined;
  private readonly exited: Promise<number | null>;
  /** When the process was spawned (Date.now()). */
  readonly spawnedAtMs = Date.now();

  private readOffset = 0;
  private partial = '';
  private collectProblems = true;

  private constructor(
    readonly child: ChildProcess,
    readonly dataDir: string,
    /** The master's stdout and stderr. */
    readonly logFile: string,
  ) {
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((this.exitCode = code ?? (signal ? 128 : null)))));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Spawns det-master on 127.0.0.1 with SQLite in a fresh temp data dir and waits until it listens. */
  static async start(opts: MasterOptions): Promise<{ master: BenchMaster; port: number; token: string }> {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-bench-fleet-'));
    const nodeFlags = opts.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', opts.cpuProfDir] : [];
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('DET_')) delete env[k];
    env.DET_AGENT_RECONNECT_GRACE = opts.reconnectGrace;
    const logFile = path.join(dataDir, 'master.log');
    const out = fs.openSync(logFile, 'a');
    const child = spawn(process.execPath, [...nodeFlags, path.join(ROOT, 'bin', 'det-master.js'), '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, '--log-level', 'info'], {
      env,
      stdio: ['ignore', out, out],
    });
    fs.closeSync(out);
    const master = new BenchMaster(child, dataDir, logFile);
    const port = await master.waitListening(30_000);
    const token = fs.readFileSync(path.join(dataDir, 'agent_token'), 'utf8').trim();
    return { master, port, token };
  }

  /** The counters over everything the master has written so far. */
  countsNow(): MasterLogCounts {
    this.poll();
    return { ...this.counts };
  }

  /** Reads what the master has written since the last call and counts its lines. */
  poll(): void {
    if (!fs.existsSync(this.logFile)) return; // cleaned up
    const fd = fs.openSync(this.logFile, 'r');
    try {
      const buf = Buffer.alloc(1 << 20);
      for (;;) {
        const n = fs.readSync(fd, buf, 0, buf.length, this.readOffset);
        if (n <= 0) break;
        this.readOffset += n;
        const lines = (this.partial + buf.toString('utf8', 0, n)).split('\n');
        this.partial = lines.pop()!;
        for (const line of lines) this.onLine(line);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Stops collecting warnings and errors (the shutdown's own are expected). */
  stopCollectingProblems(): void {
    this.collectProblems = false;
  }

  private onLine(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 200) this.tail = this.tail.slice(-100);
    for (const k of classifyLogLine(line)) {
      this.counts[k]++;
      if ((k === 'warnings' || k === 'errors') && this.collectProblems && this.problems.length < 10) this.problems.push(line);
    }
  }

  private async waitListening(timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      for (const line of this.tail) {
        const m = /det-master listening on 127\.0\.0\.1:(\d+)/.exec(line);
        if (m) return Number(m[1]);
      }
      if (this.exitCode !== undefined) throw new Error(`det-master exited with ${this.exitCode} before listening; its output:\n${this.lastOutput()}`);
      if (Date.now() > deadline) throw new Error(`det-master did not start listening within ${timeoutMs} ms; its output:\n${this.lastOutput()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Whether the process is still running. */
  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** The last lines of output. */
  lastOutput(n = 30): string {
    this.poll();
    return this.tail.slice(-n).join('\n');
  }

  /** SIGTERM (the master shuts down cleanly and writes its CPU profile), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 30_000): Promise<number | null> {
    if (this.exitCode !== undefined) return this.exitCode;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    this.poll();
    return code;
  }

  /** Removes the data dir. */
  cleanup(): void {
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}
