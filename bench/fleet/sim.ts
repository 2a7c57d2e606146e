// The fleet benchmark's agent simulator: one process that plays N det-agents against a real
// master over real gRPC. Each simulated agent opens AgentService.Connect with the join token,
// registers, heartbeats at the interval the master hands out, and answers StartContainer the way a
// real agent does (PULLING, STARTING, RUNNING, some log lines, then TERMINATED with exit code 0
// after the task's `sleep N`), without Docker. Streams are multiplexed over a few gRPC channels so
// that the simulator stays cheap next to the master it measures.
//
// Started by bench/fleet.ts with child_process.fork; its one argument is a SimConfig as JSON.
import * as grpc from '@grpc/grpc-js';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { backoffDelay, RECONNECT_BACKOFF } from '../../common/backoff';
import { agentProto } from '../../common/proto/load';
import type { AgentMessage } from '../../common/proto-gen/determined/agent/v1/AgentMessage';
import type { AgentServiceClient } from '../../common/proto-gen/determined/agent/v1/AgentService';
import type { MasterMessage__Output } from '../../common/proto-gen/determined/agent/v1/MasterMessage';
import { AGENT_TOKEN_METADATA_KEY, VERSION, type AgentToMaster, type ContainerReport, type Device, type ExitInfo, type MasterToAgent, type TaskSpec } from '../../common/types';
import { agentMessageToProto, masterMessageFromProto } from '../../common/wire/agent';
import type { FromSim, SimConfig, SimStats, ToSim } from './protocol';

/** Run time of a task whose command is `sleep N` (N in seconds), else undefined. Pure. */
export function sleepMs(spec: Pick<TaskSpec, 'entrypoint' | 'command'>): number | undefined {
  const argv = [...spec.entrypoint, ...spec.command];
  const i = argv.lastIndexOf('sleep');
  if (i < 0 || i + 1 >= argv.length) return undefined;
  const s = Number(argv[i + 1]);
  return Number.isFinite(s) && s >= 0 ? Math.round(s * 1000) : undefined;
}

/** One simulated task container. */
interface SimTask {
  allocationId: string;
  containerId: string;
  state: 'RUNNING' | 'TERMINATED';
  /** Last log sequence sent. */
  logSeq: number;
  exit: ExitInfo | undefined;
  timer: NodeJS.Timeout | undefined;
}

/** Everything the simulated agents share: config, channels and counters. */
class Fleet {
  readonly stats: SimStats = {
    registeredNow: 0, registrations: 0, streamEnds: {}, heartbeatsSent: 0, messagesSent: 0, startsReceived: 0, killsReceived: 0, tasksSucceeded: 0,
    tasksRunning: 0, registerMs: { p50: 0, p99: 0, max: 0 }, intervalMs: { min: Infinity, max: 0 }, ttlMs: { min: Infinity, max: 0 }, maxGapOfTtl: 0, maxHeartbeatLateMs: 0, loopDelayP99Ms: 0, loopDelayMaxMs: 0,
  };
  readonly clients: AgentServiceClient[];
  readonly agents: SimAgent[] = [];
  readonly devices: Device[];
  /** Register -> Registered times in ms. */
  readonly registerTimes: number[] = [];
  stopping = false;
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 10 });
  private readonly rampTimers: NodeJS.Timeout[] = [];

  constructor(readonly cfg: SimConfig) {
    const Service = agentProto().determined.agent.v1.AgentService;
    // A private subchannel pool per client: each client is its own TCP connection to the master.
    this.clients = Array.from({ length: cfg.channels }, () =>
      new Service(cfg.address, grpc.credentials.createInsecure(), {
        'grpc.use_local_subchannel_pool': 1,
        // The real agent's keepalive settings (agent/session/session.ts).
        'grpc.keepalive_time_ms': 20_000,
        'grpc.keepalive_timeout_ms': 10_000,
        'grpc.keepalive_permit_without_calls': 1,
        'grpc.max_reconnect_backoff_ms': 5_000,
      }),
    );
    this.devices = Array.from({ length: cfg.slotsPerAgent }, (_, id) => ({ id, brand: 'cpu', uuid: '', type: 'cpu' as const, memoryMib: 0 }));
    const width = String(cfg.agents - 1).length;
    for (let i = 0; i < cfg.agents; i++) this.agents.push(new SimAgent(`${cfg.idPrefix}${String(i).padStart(width, '0')}`, this.clients[i % this.clients.length], this));
    this.loopDelay.enable();
  }

  /** Connects every agent, spread evenly over the ramp. */
  start(): void {
    const step = this.cfg.rampMs / Math.max(1, this.agents.length);
    this.agents.forEach((a, i) => this.rampTimers.push(setTimeout(() => a.connect(), Math.round(i * step))));
  }

  /** The counters; `resetPeaks` restarts the peak values (loop delay, lateness, gap) after reading them. */
  snapshot(resetPeaks: boolean): SimStats {
    let running = 0;
    for (const a of this.agents) for (const t of a.tasks.values()) if (t.state === 'RUNNING') running++;
    this.stats.tasksRunning = running;
    const r = [...this.registerTimes].sort((a, b) => a - b);
    const at = (q: number) => (r.length ? r[Math.min(r.length - 1, Math.ceil(q * r.length) - 1)] : 0);
    this.stats.registerMs = { p50: at(0.5), p99: at(0.99), max: r.length ? r[r.length - 1] : 0 };
    this.stats.loopDelayP99Ms = this.loopDelay.percentile(99) / 1e6;
    this.stats.loopDelayMaxMs = this.loopDelay.max / 1e6;
    const out = structuredClone(this.stats);
    if (resetPeaks) {
      this.loopDelay.reset();
      this.stats.maxHeartbeatLateMs = 0;
      this.stats.maxGapOfTtl = 0;
    }
    return out;
  }

  stop(): void {
    this.stopping = true;
    for (const t of this.rampTimers) clearTimeout(t);
    for (const a of this.agents) a.stop();
    for (const c of this.clients) c.close();
    this.loopDelay.disable();
  }
}

/** One simulated agent: a Connect stream, its heartbeat and its tasks. */
class SimAgent {
  readonly tasks = new Map<string, SimTask>();
  private call: grpc.ClientDuplexStream<AgentMessage, MasterMessage__Output> | undefined;
  private registered = false;
  private ttlMs = 0;
  private intervalMs = 0;
  private lastSentMs = 0;
  private registerSentMs = 0;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private attempt = 0;

  constructor(
    readonly id: string,
    private readonly client: AgentServiceClient,
    private readonly fleet: Fleet,
  ) {}

  connect(): void {
    if (this.fleet.stopping) return;
    const md = new grpc.Metadata();
    md.set(AGENT_TOKEN_METADATA_KEY, this.fleet.cfg.token);
    const call = (this.call = this.client.Connect(md));
    call.on('data', (raw: MasterMessage__Output) => {
      if (this.call === call) this.onMessage(masterMessageFromProto(raw));
    });
    call.on('status', (s: grpc.StatusObject) => {
      if (this.call === call) this.onEnd(s);
    });
    call.on('error', () => undefined); // 'status' reports how the call ended
    this.registerSentMs = Date.now();
    const containers: ContainerReport[] = [...this.tasks.values()].map((t) => ({ allocationId: t.allocationId, containerId: t.containerId, state: t.state, lastLogSequence: t.logSeq, exit: t.exit }));
    this.write({
      kind: 'register',
      register: { agentId: this.id, version: VERSION, resourcePool: 'default', devices: this.fleet.devices, labels: {}, containers, hostname: `sim-host-${this.id}`, instanceId: '', instanceType: '' },
    });
  }

  stop(): void {
    this.stopHeartbeats();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    for (const t of this.tasks.values()) if (t.timer) clearTimeout(t.timer);
    this.call?.cancel();
  }

  private write(msg: AgentToMaster): void {
    if (!this.call) return;
    const now = Date.now();
    if (this.registered) {
      const gap = (now - this.lastSentMs) / this.ttlMs;
      if (gap > this.fleet.stats.maxGapOfTtl) this.fleet.stats.maxGapOfTtl = gap;
    }
    this.lastSentMs = now;
    this.fleet.stats.messagesSent++;
    this.call.write(agentMessageToProto(msg));
  }

  private onMessage(msg: MasterToAgent): void {
    const st = this.fleet.stats;
    switch (msg.kind) {
      case 'registered': {
        const r = msg.registered;
        this.registered = true;
        this.attempt = 0;
        this.ttlMs = r.heartbeatTtlMs;
        this.intervalMs = r.heartbeatIntervalMs;
        this.lastSentMs = Date.now();
        st.registeredNow++;
        st.registrations++;
        this.fleet.registerTimes.push(this.lastSentMs - this.registerSentMs);
        st.intervalMs.min = Math.min(st.intervalMs.min, r.heartbeatIntervalMs);
        st.intervalMs.max = Math.max(st.intervalMs.max, r.heartbeatIntervalMs);
        st.ttlMs.min = Math.min(st.ttlMs.min, r.heartbeatTtlMs);
        st.ttlMs.max = Math.max(st.ttlMs.max, r.heartbeatTtlMs);
        // Reconcile like a real agent: keep what the master expects, drop the rest; reported exits are delivered.
        const expected = new Set(r.expectedAllocationIds);
        for (const [id, t] of this.tasks) {
          if (t.state === 'TERMINATED' || !expected.has(id)) {
            if (t.timer) clearTimeout(t.timer);
            this.tasks.delete(id);
          }
        }
        this.scheduleHeartbeat(Date.now() + this.intervalMs);
        return;
      }
      case 'start':
        st.startsReceived++;
        return this.startTask(msg.spec);
      case 'kill': {
        st.killsReceived++;
        const t = this.tasks.get(msg.allocationId);
        if (t?.state === 'RUNNING') this.finishTask(t, { exitCode: 137, failureKind: 'KILLED', message: `killed with ${msg.signal}` });
        return;
      }
      case 'drain':
      case 'shutdown':
        return;
    }
  }

  private startTask(spec: TaskSpec): void {
    const t: SimTask = { allocationId: spec.allocationId, containerId: `sim-${spec.allocationId}`, state: 'RUNNING', logSeq: 0, exit: undefined, timer: undefined };
    this.tasks.set(t.allocationId, t);
    for (const state of ['PULLING', 'STARTING', 'RUNNING'] as const) this.write({ kind: 'containerState', allocationId: t.allocationId, containerId: t.containerId, state });
    const half = Math.ceil(this.fleet.cfg.logLinesPerTask / 2);
    this.sendLogs(t, half);
    const runMs = sleepMs(spec) ?? this.fleet.cfg.defaultTaskMs;
    t.timer = setTimeout(() => {
      t.timer = undefined;
      this.sendLogs(t, this.fleet.cfg.logLinesPerTask - half);
      this.finishTask(t, { exitCode: 0, failureKind: 'NONE', message: '' });
    }, runMs);
  }

  private sendLogs(t: SimTask, n: number): void {
    if (n <= 0 || !this.registered) return;
    const now = Date.now();
    const lines = Array.from({ length: n }, (_, i) => ({ sequence: t.logSeq + i + 1, timestampMs: now, stream: 'stdout' as const, text: `step ${t.logSeq + i + 1}: loss=${(1 / (t.logSeq + i + 2)).toFixed(4)}` }));
    t.logSeq += n;
    this.write({ kind: 'logs', allocationId: t.allocationId, lines });
  }

  private finishTask(t: SimTask, exit: ExitInfo): void {
    if (t.timer) clearTimeout(t.timer);
    t.timer = undefined;
    t.state = 'TERMINATED';
    t.exit = exit;
    if (!this.registered) return; // reported with the next Register
    this.write({ kind: 'containerState', allocationId: t.allocationId, containerId: t.containerId, state: 'TERMINATED', exit });
    if (exit.exitCode === 0) this.fleet.stats.tasksSucceeded++;
    this.tasks.delete(t.allocationId);
  }

  private scheduleHeartbeat(atMs: number): void {
    this.stopHeartbeats();
    this.heartbeatTimer = setTimeout(() => {
      const now = Date.now();
      const late = now - atMs;
      if (late > this.fleet.stats.maxHeartbeatLateMs) this.fleet.stats.maxHeartbeatLateMs = late;
      this.fleet.stats.heartbeatsSent++;
      this.write({ kind: 'heartbeat', sentAtMs: now });
      this.scheduleHeartbeat(atMs + this.intervalMs);
    }, Math.max(0, atMs - Date.now()));
  }

  private stopHeartbeats(): void {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  private onEnd(s: grpc.StatusObject): void {
    const wasRegistered = this.registered;
    this.registered = false;
    this.call = undefined;
    this.stopHeartbeats();
    if (wasRegistered) this.fleet.stats.registeredNow--;
    if (this.fleet.stopping) return;
    const key = `${grpc.status[s.code]}: ${s.details.replace(/\d+ ms/g, 'N ms')}`;
    this.fleet.stats.streamEnds[key] = (this.fleet.stats.streamEnds[key] ?? 0) + 1;
    if (s.code === grpc.status.UNAUTHENTICATED) return send({ type: 'fatal', message: `the master rejected agent ${this.id}: ${key}` });
    this.reconnectTimer = setTimeout(() => this.connect(), backoffDelay(this.attempt++, RECONNECT_BACKOFF));
  }
}

function send(msg: FromSim, then?: () => void): void {
  if (process.send) process.send(msg, undefined, {}, () => then?.());
  else then?.();
}

function main(): void {
  const arg = process.argv[2];
  if (!arg || !process.send) {
    process.stderr.write('usage: forked by bench/fleet.ts with a SimConfig as JSON (node dist/bench/fleet/sim.js \'{...}\' needs an IPC channel)\n');
    process.exit(2);
  }
  const fleet = new Fleet(JSON.parse(arg) as SimConfig);
  process.on('message', (m: ToSim) => {
    if (m.type === 'stats') send({ type: 'stats', stats: fleet.snapshot(m.resetPeaks) });
    else if (m.type === 'stop') {
      fleet.stop();
      send({ type: 'stopped', stats: fleet.snapshot(false) }, () => process.exit(0));
    }
  });
  // Without the bench there is nobody to report to.
  process.on('disconnect', () => {
    fleet.stop();
    process.exit(0);
  });
  fleet.start();
}

if (require.main === module) main();
