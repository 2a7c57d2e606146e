// The CLI's connection to the master: where it is (address parsing, env
// defaults), how to reach it (TLS), and typed calls with deadlines that fail
// with messages a user can act on.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { DetError, errorMessage } from '../common/errors';
import { apiProto } from '../common/proto/load';
import type { DeterminedClient } from '../common/proto-gen/determined/api/v1/Determined';
import type { CreateExperimentResponse__Output } from '../common/proto-gen/determined/api/v1/CreateExperimentResponse';
import type { DeleteExperimentResponse__Output } from '../common/proto-gen/determined/api/v1/DeleteExperimentResponse';
import type { GetCheckpointResponse__Output } from '../common/proto-gen/determined/api/v1/GetCheckpointResponse';
import type { ListCheckpointsResponse__Output } from '../common/proto-gen/determined/api/v1/ListCheckpointsResponse';
import type { DisableAgentResponse__Output } from '../common/proto-gen/determined/api/v1/DisableAgentResponse';
import type { DisableSlotResponse__Output } from '../common/proto-gen/determined/api/v1/DisableSlotResponse';
import type { EnableAgentResponse__Output } from '../common/proto-gen/determined/api/v1/EnableAgentResponse';
import type { EnableSlotResponse__Output } from '../common/proto-gen/determined/api/v1/EnableSlotResponse';
import type { GetAgentResponse__Output } from '../common/proto-gen/determined/api/v1/GetAgentResponse';
import type { GetExperimentResponse__Output } from '../common/proto-gen/determined/api/v1/GetExperimentResponse';
import type { GetMasterResponse__Output } from '../common/proto-gen/determined/api/v1/GetMasterResponse';
import type { GetTrialResponse__Output } from '../common/proto-gen/determined/api/v1/GetTrialResponse';
import type { KillExperimentResponse__Output } from '../common/proto-gen/determined/api/v1/KillExperimentResponse';
import type { ListAgentsResponse__Output } from '../common/proto-gen/determined/api/v1/ListAgentsResponse';
import type { ListExperimentsResponse__Output } from '../common/proto-gen/determined/api/v1/ListExperimentsResponse';
import type { GetProvisionerStatusResponse__Output } from '../common/proto-gen/determined/api/v1/GetProvisionerStatusResponse';
import type { ListResourcePoolsResponse__Output } from '../common/proto-gen/determined/api/v1/ListResourcePoolsResponse';
import type { ListSlotsResponse__Output } from '../common/proto-gen/determined/api/v1/ListSlotsResponse';
import type { ListTrialsResponse__Output } from '../common/proto-gen/determined/api/v1/ListTrialsResponse';
import type { TrialLog__Output } from '../common/proto-gen/determined/api/v1/TrialLog';
import type { TrialLogsRequest } from '../common/proto-gen/determined/api/v1/TrialLogsRequest';
import { Interrupted, UsageError, fromGrpcError, unreachable } from './errors';

/** Used when neither -m/--master nor DET_MASTER is set. */
export const DEFAULT_MASTER = '127.0.0.1:8080';
/** Port assumed when an address names none (443 for https:// and grpcs://). */
export const DEFAULT_PORT = 8080;
/** Deadline of every unary call. */
export const CALL_TIMEOUT_MS = 15_000;
/**
 * Deadline of DeleteExperiment, which answers only once the experiment's checkpoints are gone from storage
 * (the master retries storage failures with backoff before it gives up).
 */
export const DELETE_TIMEOUT_MS = 10 * 60_000;
/** How long to wait for a connection before declaring the master unreachable. */
export const CONNECT_TIMEOUT_MS = 5_000;

const PLAIN_SCHEMES = new Set(['http', 'grpc']);
const TLS_SCHEMES = new Set(['https', 'grpcs']);

/** A parsed master address. */
export interface MasterAddress {
  host: string;
  port: number;
  /** The scheme asked for TLS (https:// or grpcs://). */
  tls: boolean;
  /** HOST:PORT as grpc-js and the messages want it (IPv6 hosts in brackets). */
  target: string;
}

/**
 * Parses HOST[:PORT], optionally with an http://, grpc://, https:// or grpcs://
 * prefix and a trailing path (ignored), the way Determined's DET_MASTER is written.
 */
export function parseMasterAddress(input: string): MasterAddress {
  const bad = (why: string) => new UsageError(`invalid master address '${input}': ${why} (expected HOST:PORT, e.g. 127.0.0.1:8080)`);
  let rest = input.trim();
  if (!rest) throw bad('it is empty');
  let tls = false;
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(rest);
  if (scheme) {
    const name = scheme[1].toLowerCase();
    if (!PLAIN_SCHEMES.has(name) && !TLS_SCHEMES.has(name)) throw bad(`unsupported scheme '${name}://'`);
    tls = TLS_SCHEMES.has(name);
    rest = rest.slice(scheme[0].length);
  }
  rest = rest.replace(/\/.*$/, '');
  let host: string;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end < 0) throw bad('unclosed [');
    host = rest.slice(1, end);
    const after = rest.slice(end + 1);
    if (after && !after.startsWith(':')) throw bad(`unexpected '${after}' after the host`);
    portText = after ? after.slice(1) : undefined;
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon !== rest.indexOf(':')) throw bad('IPv6 hosts need brackets, e.g. [::1]:8080');
    host = colon < 0 ? rest : rest.slice(0, colon);
    portText = colon < 0 ? undefined : rest.slice(colon + 1);
  }
  if (!host) throw bad('the host is missing');
  let port = tls ? 443 : DEFAULT_PORT;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw bad(`'${portText}' is not a port`);
    port = Number(portText);
  }
  const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  return { host, port, tls, target };
}

/** Global options as typed on the command line (undefined = not given). */
export interface ConnectionFlags {
  master?: string;
  certFile?: string;
  certName?: string;
}

/** Everything needed to open a channel, after flags and DET_* environment. */
export interface ConnectionConfig {
  address: MasterAddress;
  /** Whether the channel uses TLS (https:// prefix or a CA file). */
  tls: boolean;
  /** CA certificate file to trust. */
  certFile?: string;
  /** Server name expected in the master's certificate. */
  certName?: string;
}

/** Flags win over DET_MASTER / DET_MASTER_CERT_FILE / DET_MASTER_CERT_NAME, which win over defaults. */
export function resolveConnection(flags: ConnectionFlags, env: Record<string, string | undefined>): ConnectionConfig {
  const address = parseMasterAddress(flags.master ?? (env.DET_MASTER || DEFAULT_MASTER));
  const certFile = flags.certFile ?? (env.DET_MASTER_CERT_FILE || undefined);
  const certName = flags.certName ?? (env.DET_MASTER_CERT_NAME || undefined);
  return { address, tls: address.tls || certFile !== undefined, certFile, certName };
}

function credentials(config: ConnectionConfig): grpc.ChannelCredentials {
  if (!config.tls) return grpc.credentials.createInsecure();
  let ca: Buffer | undefined;
  if (config.certFile) {
    try {
      ca = fs.readFileSync(config.certFile);
    } catch (err) {
      throw new DetError('DET_ERR_CONFIG_INVALID', `cannot read the master CA certificate ${config.certFile} (--cert-file / DET_MASTER_CERT_FILE): ${errorMessage(err)}`);
    }
  }
  return grpc.credentials.createSsl(ca);
}

/** Timeouts, overridable by tests. */
export interface ClientTimeouts {
  callMs: number;
  connectMs: number;
}

/** The admin API with promise-returning calls; every failure is a DetError, Interrupted, or the caller's abort reason. */
export class MasterClient {
  readonly target: string;
  private readonly tls: boolean;
  private readonly raw: DeterminedClient;
  private readonly timeouts: ClientTimeouts;

  /** `signal` is the process's Ctrl-C signal: it cancels every call in flight. */
  constructor(config: ConnectionConfig, private readonly signal: AbortSignal, timeouts?: Partial<ClientTimeouts>) {
    this.target = config.address.target;
    this.tls = config.tls;
    this.timeouts = { callMs: CALL_TIMEOUT_MS, connectMs: CONNECT_TIMEOUT_MS, ...timeouts };
    const options: grpc.ChannelOptions = {};
    if (config.tls && config.certName) {
      options['grpc.ssl_target_name_override'] = config.certName;
      options['grpc.default_authority'] = config.certName;
    }
    const Determined = apiProto().determined.api.v1.Determined;
    this.raw = new Determined(this.target, credentials(config), options);
  }

  /** The Ctrl-C signal the client was made with. */
  get abortSignal(): AbortSignal {
    return this.signal;
  }

  /** Closes the channel; pending calls fail. */
  close(): void {
    this.raw.close();
  }

  getMaster(): Promise<GetMasterResponse__Output> {
    return this.unary((o, cb) => this.raw.getMaster({}, o, cb));
  }
  listAgents(resourcePool = ''): Promise<ListAgentsResponse__Output> {
    return this.unary((o, cb) => this.raw.listAgents({ resourcePool }, o, cb));
  }
  getAgent(agentId: string): Promise<GetAgentResponse__Output> {
    return this.unary((o, cb) => this.raw.getAgent({ agentId }, o, cb));
  }
  listSlots(agentId: string): Promise<ListSlotsResponse__Output> {
    return this.unary((o, cb) => this.raw.listSlots({ agentId }, o, cb));
  }
  disableAgent(agentId: string, drain: boolean): Promise<DisableAgentResponse__Output> {
    return this.unary((o, cb) => this.raw.disableAgent({ agentId, drain }, o, cb));
  }
  enableAgent(agentId: string): Promise<EnableAgentResponse__Output> {
    return this.unary((o, cb) => this.raw.enableAgent({ agentId }, o, cb));
  }
  disableSlot(agentId: string, slotId: number, drain: boolean): Promise<DisableSlotResponse__Output> {
    return this.unary((o, cb) => this.raw.disableSlot({ agentId, slotId, drain }, o, cb));
  }
  enableSlot(agentId: string, slotId: number): Promise<EnableSlotResponse__Output> {
    return this.unary((o, cb) => this.raw.enableSlot({ agentId, slotId }, o, cb));
  }
  createExperiment(configYaml: string): Promise<CreateExperimentResponse__Output> {
    return this.unary((o, cb) => this.raw.createExperiment({ configYaml }, o, cb));
  }
  listExperiments(): Promise<ListExperimentsResponse__Output> {
    return this.unary((o, cb) => this.raw.listExperiments({}, o, cb));
  }
  getExperiment(experimentId: number): Promise<GetExperimentResponse__Output> {
    return this.unary((o, cb) => this.raw.getExperiment({ experimentId }, o, cb));
  }
  killExperiment(experimentId: number): Promise<KillExperimentResponse__Output> {
    return this.unary((o, cb) => this.raw.killExperiment({ experimentId }, o, cb));
  }
  listTrials(experimentId: number): Promise<ListTrialsResponse__Output> {
    return this.unary((o, cb) => this.raw.listTrials({ experimentId }, o, cb));
  }
  getTrial(trialId: number): Promise<GetTrialResponse__Output> {
    return this.unary((o, cb) => this.raw.getTrial({ trialId }, o, cb));
  }
  listResourcePools(): Promise<ListResourcePoolsResponse__Output> {
    return this.unary((o, cb) => this.raw.listResourcePools({}, o, cb));
  }
  getProvisionerStatus(resourcePool = ''): Promise<GetProvisionerStatusResponse__Output> {
    return this.unary((o, cb) => this.raw.getProvisionerStatus({ resourcePool }, o, cb));
  }
  /** Checkpoints of an experiment and/or a trial (0 = any). */
  listCheckpoints(experimentId: number, trialId = 0): Promise<ListCheckpointsResponse__Output> {
    return this.unary((o, cb) => this.raw.listCheckpoints({ experimentId, trialId }, o, cb));
  }
  getCheckpoint(uuid: string): Promise<GetCheckpointResponse__Output> {
    return this.unary((o, cb) => this.raw.getCheckpoint({ uuid }, o, cb));
  }
  /** Waits up to DELETE_TIMEOUT_MS for the whole deletion. */
  deleteExperiment(experimentId: number): Promise<DeleteExperimentResponse__Output> {
    return this.unary((o, cb) => this.raw.deleteExperiment({ experimentId }, o, cb), DELETE_TIMEOUT_MS);
  }

  /**
   * Streams TrialLogs (no deadline: with follow it lasts as long as the trial),
   * handing each batch to `onLogs`; resolves when the master ends the stream.
   * Aborting `stop` cancels just this stream and rejects with its reason.
   */
  async trialLogs(request: TrialLogsRequest, onLogs: (logs: TrialLog__Output[]) => void, stop?: AbortSignal): Promise<void> {
    await this.ready(stop);
    return new Promise<void>((resolve, reject) => {
      const call = this.raw.trialLogs(request);
      const onAbort = () => call.cancel();
      const signals = stop ? [this.signal, stop] : [this.signal];
      const done = () => signals.forEach((s) => s.removeEventListener('abort', onAbort));
      signals.forEach((s) => s.addEventListener('abort', onAbort, { once: true }));
      if (signals.some((s) => s.aborted)) onAbort();
      call.on('data', (batch: { logs: TrialLog__Output[] }) => {
        try {
          onLogs(batch.logs);
        } catch (err) {
          done();
          call.cancel();
          reject(err);
        }
      });
      call.on('error', (err) => {
        done();
        reject(this.failure(err, stop));
      });
      call.on('end', () => {
        done();
        resolve();
      });
    });
  }

  /** Runs one unary call with the call deadline (or `callMs`), cancelled by Ctrl-C. */
  private async unary<Res>(invoke: (options: grpc.CallOptions, cb: grpc.requestCallback<Res>) => grpc.ClientUnaryCall, callMs = this.timeouts.callMs): Promise<Res> {
    await this.ready();
    return new Promise<Res>((resolve, reject) => {
      const onAbort = () => call.cancel();
      const call = invoke({ deadline: Date.now() + callMs }, (err, res) => {
        this.signal.removeEventListener('abort', onAbort);
        if (err) reject(this.failure(err, undefined, callMs));
        else resolve(res as Res);
      });
      this.signal.addEventListener('abort', onAbort, { once: true });
      if (this.signal.aborted) onAbort();
    });
  }

  private failure(err: unknown, stop?: AbortSignal, callMs = this.timeouts.callMs): Error {
    if (this.signal.aborted) return new Interrupted();
    if (stop?.aborted) return stop.reason instanceof Error ? stop.reason : new Error(String(stop.reason));
    return fromGrpcError(err, this.target, callMs, this.tls);
  }

  /**
   * Waits (at most connectMs) until the channel is connected or has failed to
   * connect. A failed connection is left to the call itself, which then fails
   * at once with the transport's reason (e.g. ECONNREFUSED); only a connection
   * that hangs (a black-holed host) is reported here.
   */
  private ready(stop?: AbortSignal): Promise<void> {
    const channel = this.raw.getChannel();
    const deadline = Date.now() + this.timeouts.connectMs;
    const signals = stop ? [this.signal, stop] : [this.signal];
    return new Promise<void>((resolveReady, rejectReady) => {
      let settled = false;
      const settle = (fn: () => void) => {
        settled = true;
        signals.forEach((s) => s.removeEventListener('abort', check));
        fn();
      };
      const resolve = () => settle(resolveReady);
      const reject = (err: Error) => settle(() => rejectReady(err));
      const check = (): void => {
        if (settled) return;
        if (this.signal.aborted) return reject(new Interrupted());
        if (stop?.aborted) return reject(this.failure(undefined, stop));
        const state = channel.getConnectivityState(true);
        if (state === grpc.connectivityState.READY || state === grpc.connectivityState.TRANSIENT_FAILURE) return resolve();
        if (state === grpc.connectivityState.SHUTDOWN) return reject(unreachable(this.target, 'the connection was closed'));
        if (Date.now() >= deadline) return reject(unreachable(this.target, `no connection within ${this.timeouts.connectMs / 1000}s`));
        channel.watchConnectivityState(state, deadline, () => check());
      };
      signals.forEach((s) => s.addEventListener('abort', check));
      check();
    });
  }
}
