// The agent's link to the master: connect, register (reporting what runs),
// heartbeat at the master's interval, carry out commands, and reconnect with
// capped, jittered backoff when the stream breaks. Fatal rejections (wrong
// token, unknown pool) end the loop with a clear error.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { sleep } from '../../common/abort';
import { backoffDelay, RECONNECT_BACKOFF } from '../../common/backoff';
import { DetError, ERROR_CODE_METADATA_KEY, errorMessage, isErrorCode } from '../../common/errors';
import type { Logger } from '../../common/log';
import { agentProto } from '../../common/proto/load';
import type { AgentServiceClient } from '../../common/proto-gen/determined/agent/v1/AgentService';
import type { MasterMessage__Output } from '../../common/proto-gen/determined/agent/v1/MasterMessage';
import { AGENT_TOKEN_METADATA_KEY, VERSION, type Device, type RegisteredInfo } from '../../common/types';
import { agentMessageToProto, masterMessageFromProto } from '../../common/wire/agent';
import type { ContainerManager } from '../containers/manager';
import type { AgentOptions } from '../options';
import type { Outbox } from './outbox';
import * as os from 'node:os';

/** How long an outcome already sent is still reported on re-registration (in case the master missed it). */
const REPORTED_OUTCOME_RETENTION_MS = 10 * 60_000;

/** The session's lifecycle. */
export type SessionState = 'DISCONNECTED' | 'CONNECTING' | 'REGISTERED' | 'STOPPED';

/** Builds channel credentials from the agent's TLS options. */
export function channelCredentials(tls: AgentOptions['tls']): { creds: grpc.ChannelCredentials; options: grpc.ChannelOptions } {
  if (!tls) return { creds: grpc.credentials.createInsecure(), options: {} };
  let ca: Buffer | null = null;
  if (tls.caCert) {
    try {
      ca = fs.readFileSync(tls.caCert);
    } catch (err) {
      throw new DetError('DET_ERR_CONFIG_INVALID', `tls.ca_cert: cannot read ${tls.caCert}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`);
    }
  }
  return { creds: grpc.credentials.createSsl(ca), options: tls.serverName ? { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName } : {} };
}

/** A status error's registered code, if the master sent one. */
function detCode(err: grpc.ServiceError): string | undefined {
  const v = err.metadata?.get(ERROR_CODE_METADATA_KEY)[0];
  return typeof v === 'string' && isErrorCode(v) ? v : undefined;
}

/** Keeps the agent registered with the master. */
export class AgentSession {
  private readonly client: AgentServiceClient;
  private state: SessionState = 'DISCONNECTED';
  private readonly address: string;

  constructor(
    private readonly opts: AgentOptions,
    private readonly devices: Device[],
    private readonly manager: ContainerManager,
    private readonly outbox: Outbox,
    private readonly log: Logger,
    private readonly hooks: { onRegistered?: (info: RegisteredInfo) => void; onShutdown?: (reason: string) => void } = {},
  ) {
    this.address = `${opts.masterHost}:${opts.masterPort}`;
    const { creds, options } = channelCredentials(opts.tls);
    this.client = new (agentProto().determined.agent.v1.AgentService)(this.address, creds, {
      ...options,
      'grpc.keepalive_time_ms': 20_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.max_reconnect_backoff_ms': 5_000,
    });
  }

  private setState(next: SessionState): void {
    if (next !== this.state) this.log.debug('session state', { from: this.state, to: next });
    this.state = next;
  }

  /** Connects and stays connected until `signal` aborts; rejects on a fatal rejection. */
  async run(signal: AbortSignal): Promise<void> {
    let attempt = 0;
    try {
      while (!signal.aborted) {
        try {
          await this.connectOnce(signal, () => (attempt = 0));
        } catch (err) {
          if (signal.aborted) break;
          const fatal = this.classify(err as grpc.ServiceError);
          if (fatal) throw fatal;
          const delay = backoffDelay(attempt++, RECONNECT_BACKOFF);
          this.log.warn(`no session with the master at ${this.address}; retrying in ${(delay / 1000).toFixed(1)}s`, { reason: (err as grpc.ServiceError).details ?? errorMessage(err) });
          await sleep(delay, signal).catch(() => undefined);
        }
      }
    } finally {
      this.setState('STOPPED');
      this.client.close();
    }
  }

  /** A DetError for rejections that retrying cannot fix; undefined for retryable ones. */
  private classify(err: grpc.ServiceError): DetError | undefined {
    const code = detCode(err);
    if (err.code === grpc.status.UNAUTHENTICATED) {
      return new DetError('DET_ERR_UNAUTHENTICATED', `the master at ${this.address} rejected this agent: ${err.details}. Set agent_token (DET_AGENT_TOKEN) to the master's cluster join token (its agent_token, or the file <data_dir>/agent_token)`);
    }
    if (code === 'DET_ERR_RESOURCE_POOL_UNKNOWN' || code === 'DET_ERR_PROTOCOL') return new DetError(code, `the master at ${this.address} rejected this agent: ${err.details}`);
    if (code === 'DET_ERR_AGENT_ID_IN_USE') this.log.error(err.details);
    return undefined;
  }

  private connectOnce(signal: AbortSignal, onRegistered: () => void): Promise<void> {
    this.setState('CONNECTING');
    const md = new grpc.Metadata();
    if (this.opts.agentToken) md.set(AGENT_TOKEN_METADATA_KEY, this.opts.agentToken);
    const call = this.client.Connect(md);
    let heartbeat: NodeJS.Timeout | undefined;
    let closed = false;
    const closeWaiters: (() => void)[] = [];

    return new Promise<void>((resolve, reject) => {
      const finish = (err?: unknown) => {
        if (closed) return;
        closed = true;
        if (heartbeat) clearInterval(heartbeat);
        this.outbox.detach();
        closeWaiters.splice(0).forEach((w) => w());
        signal.removeEventListener('abort', onAbort);
        this.setState('DISCONNECTED');
        if (err) reject(err);
        else resolve();
      };
      const onAbort = () => {
        call.cancel();
        finish();
      };
      signal.addEventListener('abort', onAbort, { once: true });

      call.on('data', (raw: MasterMessage__Output) => {
        let msg;
        try {
          msg = masterMessageFromProto(raw);
        } catch (err) {
          this.log.warn('malformed message from master; ignored', { err: errorMessage(err) });
          return;
        }
        switch (msg.kind) {
          case 'registered': {
            const info = msg.registered;
            this.setState('REGISTERED');
            onRegistered();
            this.log.info('registered with master', { master: this.address, cluster: info.clusterId, heartbeat_ms: info.heartbeatIntervalMs, expected: info.expectedAllocationIds.length });
            this.manager.setClusterId(info.clusterId);
            this.manager.reconcile(info.expectedAllocationIds);
            if (heartbeat) clearInterval(heartbeat);
            heartbeat = setInterval(() => {
              this.outbox.sendIfConnected({ kind: 'heartbeat', sentAtMs: Date.now() });
              this.manager.pruneReported(Date.now() - REPORTED_OUTCOME_RETENTION_MS);
            }, info.heartbeatIntervalMs);
            this.outbox.attach({
              write: (m) => (closed ? true : call.write(agentMessageToProto(m))),
              drained: () =>
                new Promise<void>((r) => {
                  if (closed) return r();
                  const done = () => {
                    call.off('drain', done);
                    const i = closeWaiters.indexOf(done);
                    if (i >= 0) closeWaiters.splice(i, 1);
                    r();
                  };
                  call.once('drain', done);
                  closeWaiters.push(done);
                }),
            });
            this.hooks.onRegistered?.(info);
            return;
          }
          case 'start':
            return this.manager.start(msg.spec);
          case 'kill':
            return void this.manager.kill(msg.allocationId, msg.signal, msg.gracePeriodMs);
          case 'drain':
            this.log.info('master asked this agent to drain: finishing running work');
            return;
          case 'shutdown':
            this.log.info('master asked this agent to shut down', { reason: msg.reason });
            this.hooks.onShutdown?.(msg.reason);
            return;
        }
      });
      call.on('error', (err) => finish(err));
      call.on('end', () => finish(Object.assign(new Error('the master closed the stream'), { code: grpc.status.UNAVAILABLE, details: 'the master closed the stream' })));

      call.write(
        agentMessageToProto({
          kind: 'register',
          register: { agentId: this.opts.agentId, version: VERSION, resourcePool: this.opts.resourcePool, devices: this.devices, labels: this.opts.labels, containers: this.manager.reports(), hostname: os.hostname(), instanceId: this.opts.instanceId, instanceType: this.opts.instanceType },
        }),
      );
    });
  }
}
