// One agent's Connect stream on the master: authentication, the Register
// handshake, the heartbeat TTL watchdog, and translation between protobuf and
// the cluster's plain messages.
import * as crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import { AGENT_TOKEN_METADATA_KEY, type AgentToMaster, type MasterToAgent } from '../../common/types';
import { agentMessageFromProto, masterMessageToProto } from '../../common/wire/agent';
import type { AgentMessage__Output } from '../../common/proto-gen/determined/agent/v1/AgentMessage';
import type { MasterMessage } from '../../common/proto-gen/determined/agent/v1/MasterMessage';
import type { Cluster } from '../cluster/cluster';
import type { AgentChannel } from '../cluster/agents';
import { toServiceError } from '../api/errors';

type ConnectCall = grpc.ServerDuplexStream<AgentMessage__Output, MasterMessage>;

/** How long an agent has to send Register after connecting. */
const REGISTER_TIMEOUT_MS = 10_000;

/** Constant-time token comparison. */
export function tokenMatches(expected: string, given: string | undefined): boolean {
  if (given === undefined) return false;
  const a = crypto.createHash('sha256').update(expected).digest();
  const b = crypto.createHash('sha256').update(given).digest();
  return crypto.timingSafeEqual(a, b);
}

/** Serves one AgentService.Connect call until it ends. */
export function handleAgentConnect(call: ConnectCall, deps: { cluster: Cluster; agentToken: string; log: Logger }): void {
  const { cluster, log } = deps;
  const peer = call.getPeer();
  const raw = call.metadata.get(AGENT_TOKEN_METADATA_KEY)[0];
  const given = raw === undefined || raw.length === 0 ? undefined : raw.toString();
  if (!tokenMatches(deps.agentToken, given)) {
    log.warn('rejected agent connection: ' + (given === undefined ? 'no cluster join token' : 'wrong cluster join token'), { peer });
    call.emit('error', toServiceError(new DetError('DET_ERR_UNAUTHENTICATED', 'agent rejected: missing or wrong cluster join token (agent_token)')));
    return;
  }

  let agentId: string | undefined;
  /** Messages that arrived while Register was being processed. */
  let early: AgentToMaster[] | undefined;
  let ended = false;
  let ttlTimer: NodeJS.Timeout | undefined;
  let ttlRecheck: NodeJS.Immediate | undefined;
  let ttlMs = REGISTER_TIMEOUT_MS;
  /** When the agent was last heard from; the TTL runs from here. */
  let lastHeardMs = Date.now();

  const channel: AgentChannel = {
    address: peer,
    send(msg: MasterToAgent): boolean {
      if (ended) return false;
      call.write(masterMessageToProto(msg));
      return true;
    },
    close(reason: string) {
      finish(new DetError('DET_ERR_SHUTTING_DOWN', reason));
    },
  };

  const startTtlTimer = (ms: number) => {
    ttlTimer = setTimeout(onTtlDeadline, ms);
    ttlTimer.unref();
  };
  // Timers run before the event loop polls for I/O: after one long task on this loop (a GC pause,
  // a slow store write, a burst of work on a starved machine) the deadline fires while messages
  // that arrived in time still wait unread in the socket. So the verdict waits until pending I/O
  // is read (setImmediate runs after the poll phase).
  const onTtlDeadline = () => {
    ttlTimer = undefined;
    ttlRecheck = setImmediate(() => {
      ttlRecheck = undefined;
      if (ended) return;
      const left = lastHeardMs + ttlMs - Date.now();
      if (left > 0) return startTtlTimer(left);
      log.warn(agentId ? 'agent missed its heartbeat TTL' : 'agent did not register in time', { agent: agentId, peer, ttl_ms: ttlMs });
      finish(new DetError('DET_ERR_HEARTBEAT_TIMEOUT', agentId ? `no message within the heartbeat TTL (${ttlMs} ms)` : 'no Register message in time'));
    });
  };
  const disarmTtl = () => {
    if (ttlTimer) clearTimeout(ttlTimer);
    if (ttlRecheck) clearImmediate(ttlRecheck);
    ttlTimer = undefined;
    ttlRecheck = undefined;
  };
  /** The agent was heard from now. One timer per stream, re-armed at its deadline, not per message. */
  const armTtl = () => {
    lastHeardMs = Date.now();
    if (!ttlTimer && !ttlRecheck) startTtlTimer(ttlMs);
  };

  const finish = (err?: DetError) => {
    if (ended) return;
    ended = true;
    disarmTtl();
    if (agentId) void cluster.agentDisconnected(agentId, channel, err ? err.message : 'stream closed').catch(() => undefined);
    try {
      if (err) call.emit('error', toServiceError(err));
      else call.end();
    } catch {
      // the stream may already be gone
    }
  };

  const forward = (id: string, msg: AgentToMaster) => {
    cluster.agentMessage(id, channel, msg).catch((err) => log.error('handling agent message failed', { agent: id, kind: msg.kind, err: errorMessage(err) }));
  };

  armTtl();
  call.on('data', (raw: AgentMessage__Output) => {
    if (ended) return;
    if (early === undefined) armTtl();
    let msg;
    try {
      msg = agentMessageFromProto(raw);
    } catch (err) {
      log.warn('malformed agent message', { agent: agentId, peer, err: errorMessage(err) });
      return finish(err instanceof DetError ? err : new DetError('DET_ERR_PROTOCOL', errorMessage(err)));
    }
    if (early) return void early.push(msg);
    if (!agentId) {
      if (msg.kind !== 'register') return finish(new DetError('DET_ERR_PROTOCOL', 'the first message on the agent stream must be Register'));
      if (!msg.register.agentId) return finish(new DetError('DET_ERR_PROTOCOL', 'Register needs a non-empty agent_id'));
      const id = msg.register.agentId;
      early = [];
      // Register arrived: however long the master takes to process it, this agent is not late.
      disarmTtl();
      cluster.registerAgent(msg.register, channel).then(
        ({ registered, commands }) => {
          if (ended) return void cluster.agentDisconnected(id, channel, 'stream closed during registration').catch(() => undefined);
          agentId = id;
          ttlMs = registered.heartbeatTtlMs;
          armTtl();
          channel.send({ kind: 'registered', registered });
          for (const c of commands) channel.send(c);
          const queued = early ?? [];
          early = undefined;
          for (const m of queued) forward(id, m);
        },
        (err) => {
          log.warn('agent registration rejected', { agent: id, peer, err: errorMessage(err) });
          finish(err instanceof DetError ? err : new DetError('DET_ERR_INTERNAL', errorMessage(err)));
        },
      );
      return;
    }
    forward(agentId, msg);
  });
  call.on('end', () => finish());
  call.on('error', () => finish());
  call.on('cancelled', () => finish());
}
