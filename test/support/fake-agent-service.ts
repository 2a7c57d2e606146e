// A fake master side of the agent protocol: a real grpc.Server on 127.0.0.1
// serving determined.agent.v1.AgentService from the same agent.proto. It
// records every Connect call (metadata, decoded messages), answers Register
// with Registered unless told otherwise, lets the test send MasterMessages,
// end streams (cleanly or with a status and x-det-error-code trailer), and be
// stopped and restarted on the same port to play a master restart.
import * as grpc from '@grpc/grpc-js';
import { DetError, type ErrorCode } from '../../common/errors';
import { agentProto } from '../../common/proto/load';
import type { AgentMessage__Output } from '../../common/proto-gen/determined/agent/v1/AgentMessage';
import type { MasterMessage } from '../../common/proto-gen/determined/agent/v1/MasterMessage';
import type { AgentToMaster, MasterToAgent, RegisteredInfo, Registration } from '../../common/types';
import { agentMessageFromProto, masterMessageToProto } from '../../common/wire/agent';
import { toServiceError } from '../../master/api/errors';
import { waitFor } from './env';

type ConnectCall = grpc.ServerDuplexStream<AgentMessage__Output, MasterMessage>;

/** One Connect call as the fake saw it. */
export interface RecordedConnect {
  /** 1-based, in arrival order over the fake's whole life (restarts included). */
  index: number;
  /** Date.now() when the call arrived. */
  atMs: number;
  metadata: grpc.Metadata;
  /** Decoded messages, in arrival order. */
  received: AgentToMaster[];
  /** Messages that failed to decode. */
  malformed: string[];
  /** The client cancelled the call (e.g. the agent's signal aborted). */
  cancelled: boolean;
  /** The client half-closed its side. */
  clientEnded: boolean;
  /** The fake ended the call (end(), fail(), stop()). */
  serverEnded: boolean;
  /** The Registered answer sent, if any. */
  registered: RegisteredInfo | undefined;
  call: ConnectCall;
}

/** How the fake answers a Register. */
export type RegisterAnswer = { registered?: Partial<RegisteredInfo> } | { error: Partial<grpc.StatusObject> } | { ignore: true };

/** Options of the fake. */
export interface FakeAgentServiceOptions {
  /** Port to bind (default: any free one). */
  port?: number;
  /** Defaults for the Registered answer. */
  registered?: Partial<Omit<RegisteredInfo, 'expectedAllocationIds'>>;
}

/** A gRPC status as the master sends it for a DetError (see master/api/errors.ts). */
export function detStatus(code: ErrorCode, message: string): Partial<grpc.StatusObject> {
  return toServiceError(new DetError(code, message));
}

/** The fake master. */
export class FakeAgentService {
  /** Every Connect call, in order, across restarts. */
  readonly connects: RecordedConnect[] = [];
  /**
   * Checked when a call arrives, before anything is read; a status rejects the
   * call (like the master's token check).
   */
  onConnect: ((c: RecordedConnect) => Partial<grpc.StatusObject> | undefined) | undefined;
  /** Decides the answer to Register; the default accepts and expects every reported allocation. */
  onRegister: ((reg: Registration, c: RecordedConnect) => RegisterAnswer) | undefined;
  /** Defaults for Registered (expected ids default to every allocation the agent reports). */
  registeredDefaults: Omit<RegisteredInfo, 'expectedAllocationIds'>;
  private server: grpc.Server | undefined;
  private boundPort = 0;

  private constructor(opts: FakeAgentServiceOptions) {
    this.registeredDefaults = {
      masterId: 'fake-master',
      clusterId: 'fake-cluster',
      heartbeatTtlMs: 30_000,
      heartbeatIntervalMs: 10_000,
      ...opts.registered,
    };
  }

  /** Starts a fake on 127.0.0.1. */
  static async start(opts: FakeAgentServiceOptions = {}): Promise<FakeAgentService> {
    const fake = new FakeAgentService(opts);
    await fake.listen(opts.port ?? 0);
    return fake;
  }

  /** The bound port (stable across stop/restart). */
  get port(): number {
    return this.boundPort;
  }

  /** Whether the server is up. */
  get running(): boolean {
    return this.server !== undefined;
  }

  /** The latest call that is still open, if any. */
  get current(): RecordedConnect | undefined {
    const c = this.connects[this.connects.length - 1];
    return c && !c.cancelled && !c.serverEnded ? c : undefined;
  }

  /** Every message received, across calls, in order. */
  allReceived(): AgentToMaster[] {
    return this.connects.flatMap((c) => c.received);
  }

  /** Registrations received, in order. */
  registrations(): Registration[] {
    return this.allReceived().flatMap((m) => (m.kind === 'register' ? [m.register] : []));
  }

  /** Sends a master message on a call (default: the current one). */
  send(msg: MasterToAgent, c: RecordedConnect | undefined = this.current): void {
    if (!c) throw new Error('fake master: no open agent stream to send on');
    c.call.write(masterMessageToProto(msg));
  }

  /** Ends a call with status OK. */
  end(c: RecordedConnect | undefined = this.current): void {
    if (!c) throw new Error('fake master: no open agent stream to end');
    c.serverEnded = true;
    c.call.end();
  }

  /** Ends a call with an error status (code in the x-det-error-code trailer when made by detStatus). */
  fail(status: Partial<grpc.StatusObject>, c: RecordedConnect | undefined = this.current): void {
    if (!c) throw new Error('fake master: no open agent stream to fail');
    c.serverEnded = true;
    c.call.emit('error', status);
  }

  /** Stops reading a call: later messages stay unread (a hung or dying master). */
  freeze(c: RecordedConnect | undefined = this.current): void {
    if (!c) throw new Error('fake master: no open agent stream to freeze');
    c.call.pause();
  }

  /** Stops the server, breaking every open stream (the master goes away); harmless when stopped. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    for (const c of this.connects) c.serverEnded = true;
    server.forceShutdown();
  }

  /** Starts the server again on the same port (the master comes back). */
  async restart(): Promise<void> {
    if (this.server) throw new Error('fake master: already running');
    await this.listen(this.boundPort);
  }

  /** Waits until `cond` holds. */
  async waitFor(what: string, cond: () => boolean, timeoutMs = 5_000): Promise<void> {
    await waitFor(cond, { what, timeoutMs, intervalMs: 5 });
  }

  /** Waits for the n-th (1-based) Connect call that sent a Register, and returns it. */
  async waitForRegister(n: number, timeoutMs = 5_000): Promise<RecordedConnect> {
    const withRegister = () => this.connects.filter((c) => c.received.some((m) => m.kind === 'register'));
    await this.waitFor(`registration #${n}`, () => withRegister().length >= n, timeoutMs);
    return withRegister()[n - 1];
  }

  private async listen(port: number): Promise<void> {
    const server = new grpc.Server();
    server.addService(agentProto().determined.agent.v1.AgentService.service, { Connect: (call: ConnectCall) => this.handle(call) });
    const deadline = Date.now() + 5_000;
    for (;;) {
      try {
        this.boundPort = await new Promise<number>((resolve, reject) =>
          server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
        );
        break;
      } catch (err) {
        // The old listener of a restart may still hold the port for a moment.
        if (port === 0 || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    this.server = server;
  }

  private handle(call: ConnectCall): void {
    const c: RecordedConnect = {
      index: this.connects.length + 1,
      atMs: Date.now(),
      metadata: call.metadata,
      received: [],
      malformed: [],
      cancelled: false,
      clientEnded: false,
      serverEnded: false,
      registered: undefined,
      call,
    };
    this.connects.push(c);
    call.on('cancelled', () => (c.cancelled = true));
    call.on('end', () => (c.clientEnded = true));
    call.on('error', () => undefined);
    const rejection = this.onConnect?.(c);
    if (rejection) return this.fail(rejection, c);
    call.on('data', (raw: AgentMessage__Output) => {
      let msg: AgentToMaster;
      try {
        msg = agentMessageFromProto(raw);
      } catch (err) {
        c.malformed.push(err instanceof Error ? err.message : String(err));
        return;
      }
      c.received.push(msg);
      if (msg.kind === 'register' && !c.serverEnded) this.answerRegister(msg.register, c);
    });
  }

  private answerRegister(reg: Registration, c: RecordedConnect): void {
    const answer = this.onRegister?.(reg, c) ?? {};
    if ('ignore' in answer) return;
    if ('error' in answer) return this.fail(answer.error, c);
    // Like the master, expect by default everything the agent reports.
    const info: RegisteredInfo = { ...this.registeredDefaults, expectedAllocationIds: reg.containers.map((r) => r.allocationId), ...answer.registered };
    c.registered = info;
    this.send({ kind: 'registered', registered: info }, c);
  }
}
