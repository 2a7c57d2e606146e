// A scripted agent for protocol tests: a raw AgentService.Connect client that
// sends exactly the messages a test tells it to and records everything the
// master sends back, plus the final status of the call. No Docker, no session
// logic, no retries: what the test scripts is what goes on the wire.
import * as grpc from '@grpc/grpc-js';
import { ERROR_CODE_METADATA_KEY } from '../../common/errors';
import { agentProto } from '../../common/proto/load';
import type { AgentMessage } from '../../common/proto-gen/determined/agent/v1/AgentMessage';
import type { MasterMessage__Output } from '../../common/proto-gen/determined/agent/v1/MasterMessage';
import {
  AGENT_TOKEN_METADATA_KEY,
  VERSION,
  type AgentToMaster,
  type ContainerReport,
  type ContainerState,
  type Device,
  type ExitInfo,
  type LogLine,
  type MasterToAgent,
  type Registration,
} from '../../common/types';
import { agentMessageToProto, masterMessageFromProto } from '../../common/wire/agent';

/** A master message of one kind. */
export type MasterMessageOf<K extends MasterToAgent['kind']> = Extract<MasterToAgent, { kind: K }>;

/** How a Connect call ended. */
export interface CallStatus {
  code: grpc.status;
  details: string;
  /** Trailer `x-det-error-code`, when the master sent one. */
  errorCode: string | undefined;
  metadata: grpc.Metadata;
}

/** What to connect with. */
export interface RawAgentOptions {
  /** Cluster join token; undefined sends no token metadata at all. */
  token: string | undefined;
}

/** `n` CPU devices with ids 0..n-1. */
export function cpuDevices(n: number): Device[] {
  return Array.from({ length: n }, (_, id) => ({ id, brand: 'cpu', uuid: '', type: 'cpu' as const, memoryMib: 0 }));
}

/** CUDA devices with the given ids. */
export function cudaDevices(ids: number[]): Device[] {
  return ids.map((id) => ({ id, brand: 'NVIDIA H200', uuid: `GPU-${id}`, type: 'cuda' as const, memoryMib: 143_771 }));
}

/** A Registration with defaults for what a test does not care about. */
export function registration(agentId: string, over: Partial<Registration> = {}): Registration {
  return { agentId, version: VERSION, resourcePool: 'default', devices: cpuDevices(1), labels: {}, containers: [], hostname: `host-${agentId}`, instanceId: '', instanceType: '', ...over };
}

/** A ContainerReport for Register. */
export function report(allocationId: string, state: ContainerState, over: Partial<ContainerReport> = {}): ContainerReport {
  return { allocationId, containerId: `ctr-${allocationId}`, state, lastLogSequence: 0, ...over };
}

/** Log lines with agent sequences `from..to` and text `${prefix} ${seq}`. */
export function logLines(from: number, to: number, prefix = 'line'): LogLine[] {
  const out: LogLine[] = [];
  for (let s = from; s <= to; s++) out.push({ sequence: s, timestampMs: 1_700_000_000_000 + s, stream: 'stdout', text: `${prefix} ${s}` });
  return out;
}

/** One scripted Connect call. Create with RawAgent.connect(). */
export class RawAgent {
  /** Every master message received, in order. */
  readonly received: MasterToAgent[] = [];
  /** Messages not yet taken by next(). */
  private readonly unread: MasterToAgent[] = [];
  private readonly waiters = new Set<() => void>();
  private finalStatus: CallStatus | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  /** Resolves with the call's final status (OK included). */
  readonly status: Promise<CallStatus>;

  private constructor(
    private readonly client: grpc.Client,
    private readonly call: grpc.ClientDuplexStream<AgentMessage, MasterMessage__Output>,
  ) {
    this.status = new Promise<CallStatus>((resolve) => {
      call.on('status', (s: grpc.StatusObject) => {
        this.finalStatus = { code: s.code, details: s.details, errorCode: s.metadata.get(ERROR_CODE_METADATA_KEY)[0]?.toString(), metadata: s.metadata };
        this.stopHeartbeats();
        this.wakeAll();
        resolve(this.finalStatus);
      });
    });
    call.on('data', (raw: MasterMessage__Output) => {
      const msg = masterMessageFromProto(raw);
      this.received.push(msg);
      this.unread.push(msg);
      this.wakeAll();
    });
    // Non-OK statuses also arrive as 'error'; 'status' above records them.
    call.on('error', () => undefined);
  }

  /** Opens AgentService.Connect on `address` (host:port). */
  static connect(address: string, opts: RawAgentOptions): RawAgent {
    const Service = agentProto().determined.agent.v1.AgentService;
    // A private subchannel pool: each scripted agent has its own connection, as real agents do.
    const client = new Service(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    const md = new grpc.Metadata();
    if (opts.token !== undefined) md.set(AGENT_TOKEN_METADATA_KEY, opts.token);
    return new RawAgent(client, client.Connect(md));
  }

  /** The final status if the call has ended. */
  get ended(): CallStatus | undefined {
    return this.finalStatus;
  }

  /** Sends one plain agent message (converted with agentMessageToProto). */
  send(msg: AgentToMaster): void {
    this.sendProto(agentMessageToProto(msg));
  }

  /** Sends a protobuf message as is (for malformed input). */
  sendProto(msg: AgentMessage): void {
    if (this.finalStatus) throw new Error(`cannot send: the call already ended with ${statusText(this.finalStatus)}`);
    this.call.write(msg);
  }

  /** Sends Register. */
  register(reg: Registration): void {
    this.send({ kind: 'register', register: reg });
  }

  /** Sends Register and waits for Registered. */
  async registerAndWait(reg: Registration, timeoutMs = 5_000): Promise<MasterMessageOf<'registered'>['registered']> {
    this.register(reg);
    return (await this.next('registered', timeoutMs)).registered;
  }

  /** Sends a container state change. */
  state(allocationId: string, state: ContainerState, exit?: ExitInfo): void {
    this.send({ kind: 'containerState', allocationId, containerId: `ctr-${allocationId}`, state, exit });
  }

  /** Reports PULLING, STARTING and RUNNING for an allocation. */
  runUp(allocationId: string): void {
    for (const s of ['PULLING', 'STARTING', 'RUNNING'] as const) this.state(allocationId, s);
  }

  /** Reports TERMINATED with an exit code (0 = success, else EXIT_NONZERO unless `failureKind` says otherwise). */
  exit(allocationId: string, exitCode: number, failureKind?: ExitInfo['failureKind']): void {
    const kind = failureKind ?? (exitCode === 0 ? 'NONE' : 'EXIT_NONZERO');
    this.state(allocationId, 'TERMINATED', { exitCode, failureKind: kind, message: exitCode === 0 ? '' : `exited with code ${exitCode}` });
  }

  /** Sends a batch of log lines. */
  logs(allocationId: string, lines: LogLine[]): void {
    this.send({ kind: 'logs', allocationId, lines });
  }

  /** Sends a heartbeat now. */
  heartbeat(): void {
    this.send({ kind: 'heartbeat', sentAtMs: Date.now() });
  }

  /** Heartbeats every `intervalMs` until the call ends or stopHeartbeats(). */
  heartbeatEvery(intervalMs: number): void {
    this.stopHeartbeats();
    this.heartbeatTimer = setInterval(() => {
      if (!this.finalStatus) this.heartbeat();
    }, intervalMs);
  }

  /** Stops periodic heartbeats. */
  stopHeartbeats(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /**
   * The oldest unread master message of `kind` (matching `where`), waiting up to `timeoutMs`.
   * Rejects early, with the call's status, when the call ends without one.
   */
  async next<K extends MasterToAgent['kind']>(kind: K, timeoutMs = 5_000, where: (m: MasterMessageOf<K>) => boolean = () => true): Promise<MasterMessageOf<K>> {
    const take = (): MasterMessageOf<K> | undefined => {
      const i = this.unread.findIndex((m) => m.kind === kind && where(m as MasterMessageOf<K>));
      return i < 0 ? undefined : (this.unread.splice(i, 1)[0] as MasterMessageOf<K>);
    };
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = take();
      if (found) return found;
      if (this.finalStatus) throw new Error(`no '${kind}' message: the call ended with ${statusText(this.finalStatus)}; received: ${this.describeReceived()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for a '${kind}' message; received: ${this.describeReceived()}`);
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.waiters.add(done);
      });
    }
  }

  /** Every received message of `kind` (read or not). */
  all<K extends MasterToAgent['kind']>(kind: K): MasterMessageOf<K>[] {
    return this.received.filter((m) => m.kind === kind) as MasterMessageOf<K>[];
  }

  /** Waits for the call to end (rejects after `timeoutMs`). */
  async waitStatus(timeoutMs = 5_000): Promise<CallStatus> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the Connect call did not end within ${timeoutMs} ms; received: ${this.describeReceived()}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.status, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Half-closes the sending side (the agent says it is done). */
  end(): void {
    this.call.end();
  }

  /** Drops the connection as a crashing agent would (the master sees a cancelled call). */
  close(): void {
    this.stopHeartbeats();
    this.call.cancel();
    this.client.close();
  }

  private wakeAll(): void {
    for (const w of [...this.waiters]) w();
  }

  private describeReceived(): string {
    return this.received.length === 0 ? '(nothing)' : this.received.map((m) => (m.kind === 'start' ? `start(${m.spec.allocationId})` : m.kind === 'kill' ? `kill(${m.allocationId},${m.signal})` : m.kind)).join(', ');
  }
}

function statusText(s: CallStatus): string {
  return `${grpc.status[s.code]} (${s.errorCode ?? 'no error code'}): ${s.details}`;
}
