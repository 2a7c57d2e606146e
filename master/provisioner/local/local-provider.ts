// The local provider: each "instance" is a det-agent process the master
// starts on its own host, with its own agent id and log file. Same decider,
// timers and status as EC2, so the whole dynamic-agent flow runs on one machine.
// A pid file per pool lets a restarted master find agents it started before.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as YAML from 'yaml';
import type { Logger } from '../../../common/log';
import { LaunchError, type InstanceInfo, type LaunchRequest, type Provider } from '../types';

/** How local agents are started. */
export interface LocalProviderOptions {
  pool: string;
  masterHost: string;
  masterPort: number;
  agentToken: string;
  /** CA file agents trust when the master uses TLS. */
  tlsCaCert: string | undefined;
  tlsServerName: string | undefined;
  dockerSocket: string;
  slotsPerInstance: number;
  /** Where pid files and agent logs go. */
  workDir: string;
  /** Extra agent config keys (the pool's `agent:` settings), written to an agent config file. */
  agentConfig: Record<string, unknown>;
  log: Logger;
  /** The det-agent launcher (default: bin/det-agent.js of this checkout). */
  agentBin?: string;
}

interface Tracked {
  info: InstanceInfo;
  pid: number;
  child: ChildProcess | undefined;
}

/** Provider whose instances are local det-agent processes. */
export class LocalProvider implements Provider {
  readonly type = 'local';
  private readonly instances = new Map<string, Tracked>();
  private readonly pidFile: string;
  private readonly bin: string;
  private readonly configFile: string;

  constructor(private readonly opts: LocalProviderOptions) {
    fs.mkdirSync(opts.workDir, { recursive: true });
    this.pidFile = path.join(opts.workDir, `local-${opts.pool}.json`);
    this.bin = opts.agentBin ?? path.resolve(__dirname, '..', '..', '..', '..', 'bin', 'det-agent.js');
    this.configFile = path.join(opts.workDir, `agent-${opts.pool}.yaml`);
    fs.writeFileSync(this.configFile, YAML.stringify(opts.agentConfig));
    this.adopt();
  }

  /** Takes over agents a previous master process started that still run. */
  private adopt(): void {
    let saved: { id: string; pid: number; launchedAtMs: number }[] = [];
    try {
      saved = JSON.parse(fs.readFileSync(this.pidFile, 'utf8'));
    } catch {
      return;
    }
    for (const s of saved) {
      if (!isAgentProcess(s.pid, s.id)) continue;
      this.instances.set(s.id, { pid: s.pid, child: undefined, info: { id: s.id, pool: this.opts.pool, instanceType: 'local', subnetId: '', state: 'running', launchedAtMs: s.launchedAtMs, spot: false } });
      this.opts.log.info('adopted local agent started by an earlier master', { instance: s.id, pid: s.pid });
    }
  }

  private save(): void {
    const live = [...this.instances.values()].filter((t) => t.info.state !== 'terminated').map((t) => ({ id: t.info.id, pid: t.pid, launchedAtMs: t.info.launchedAtMs }));
    try {
      fs.writeFileSync(this.pidFile, JSON.stringify(live));
    } catch (err) {
      this.opts.log.warn('cannot save the local agents pid file', { file: this.pidFile, err: (err as Error).message });
    }
  }

  async list(pool: string): Promise<InstanceInfo[]> {
    for (const t of this.instances.values()) if (t.child === undefined && t.info.state !== 'terminated' && !isAgentProcess(t.pid, t.info.id)) t.info.state = 'terminated';
    return [...this.instances.values()].filter((t) => t.info.pool === pool && t.info.state !== 'terminated').map((t) => ({ ...t.info }));
  }

  async launch(req: LaunchRequest): Promise<InstanceInfo[]> {
    const out: InstanceInfo[] = [];
    try {
      for (let i = 0; i < req.count; i++) out.push(this.start());
    } finally {
      this.save();
    }
    return out;
  }

  private start(): InstanceInfo {
    const id = `${this.opts.pool}-${randomBytes(4).toString('hex')}`;
    const logFile = path.join(this.opts.workDir, `${id}.log`);
    const fd = fs.openSync(logFile, 'a');
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DET_AGENT_ID: id,
      DET_INSTANCE_ID: id,
      DET_INSTANCE_TYPE: 'local',
      DET_MASTER_HOST: this.opts.masterHost,
      DET_MASTER_PORT: String(this.opts.masterPort),
      DET_RESOURCE_POOL: this.opts.pool,
      DET_AGENT_TOKEN: this.opts.agentToken,
      DET_DOCKER_SOCKET: this.opts.dockerSocket,
      DET_SLOT_TYPE: 'cpu',
      DET_CPU_SLOTS: String(this.opts.slotsPerInstance),
      ...(this.opts.tlsCaCert ? { DET_MASTER_CERT_FILE: this.opts.tlsCaCert } : {}),
      ...(this.opts.tlsServerName ? { DET_MASTER_CERT_NAME: this.opts.tlsServerName } : {}),
    };
    delete env.DOCKER_HOST;
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [this.bin, '--config-file', this.configFile], { env, stdio: ['ignore', fd, fd] });
    } catch (err) {
      throw new LaunchError('other', 'SpawnFailed', `cannot start ${this.bin}: ${(err as Error).message}`);
    } finally {
      fs.closeSync(fd);
    }
    if (child.pid === undefined) throw new LaunchError('other', 'SpawnFailed', `cannot start ${this.bin}`);
    const info: InstanceInfo = { id, pool: this.opts.pool, instanceType: 'local', subnetId: '', state: 'running', launchedAtMs: Date.now(), spot: false };
    const tracked: Tracked = { info, pid: child.pid, child };
    this.instances.set(id, tracked);
    child.on('error', (err) => this.opts.log.error('local agent process error', { instance: id, err: err.message }));
    child.on('exit', (code, signal) => {
      tracked.info.state = 'terminated';
      this.opts.log.info('local agent exited', { instance: id, code, signal, log: logFile });
      this.save();
    });
    this.opts.log.info('started local agent', { instance: id, pid: child.pid, log: logFile });
    return { ...info };
  }

  async terminate(ids: string[]): Promise<void> {
    for (const id of ids) {
      const t = this.instances.get(id);
      if (!t || t.info.state === 'terminated') continue;
      t.info.state = 'shutting-down';
      // Only signal a pid that is still this agent (an adopted pid could have been reused).
      if (t.child === undefined && !isAgentProcess(t.pid, id)) {
        t.info.state = 'terminated';
        continue;
      }
      try {
        process.kill(t.pid, 'SIGTERM');
      } catch {
        t.info.state = 'terminated';
      }
    }
    this.save();
  }

  /**
   * Stops every local agent and waits for them (used when the master shuts down). An agent stops
   * its containers first (their kill grace period, then up to 30 s), so the deadline covers that.
   */
  async stopAll(timeoutMs = 60_000): Promise<void> {
    const running = [...this.instances.values()].filter((t) => t.info.state !== 'terminated');
    await this.terminate(running.map((t) => t.info.id));
    const deadline = Date.now() + timeoutMs;
    while (running.some((t) => isAgentProcess(t.pid, t.info.id)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const t of running) if (isAgentProcess(t.pid, t.info.id)) process.kill(t.pid, 'SIGKILL');
  }
}

/** Whether `pid` is alive and is the det-agent started as instance `id` (checked via /proc, not just the pid). */
function isAgentProcess(pid: number, id: string): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return fs.readFileSync(`/proc/${pid}/environ`).toString('latin1').split('\0').includes(`DET_AGENT_ID=${id}`);
  } catch {
    return false; // gone, or not ours to read: never signal it
  }
}
