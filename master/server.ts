// The master's gRPC server: AgentService and the admin API on one port, plus
// gRPC health checking and server reflection. TLS when a cert/key is configured.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { DetError, errorMessage } from '../common/errors';
import type { Logger } from '../common/log';
import { agentProto, apiProto, packageDefinition } from '../common/proto/load';
import { handleAgentConnect } from './agents/agent-link';
import { apiHandlers, type MasterFacts, type ProvisionerStatusSource } from './api/service';
import type { ExperimentDeleter } from './checkpoints/deletion';
import type { Cluster } from './cluster/cluster';

/** What the server needs. */
export interface ServerOptions {
  host: string;
  port: number;
  tls: { cert: string; key: string } | undefined;
  agentToken: string;
  facts: MasterFacts;
  provisioner?: ProvisionerStatusSource;
  /** Runs `det experiment delete` (default: one without logging, not stopped by shutdown). */
  deleter?: ExperimentDeleter;
}

/** A started server. */
export interface MasterServer {
  /** The bound port (useful with port 0). */
  port: number;
  /** Graceful shutdown, then forced after `deadlineMs`. Calling twice is harmless. */
  shutdown(deadlineMs?: number): Promise<void>;
}

/** Server credentials from the TLS config; DET_ERR_CONFIG_INVALID when the files cannot be read. */
export function serverCredentials(tls: ServerOptions['tls']): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const read = (file: string, key: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new DetError('DET_ERR_CONFIG_INVALID', `tls.${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`);
    }
  };
  return grpc.ServerCredentials.createSsl(null, [{ cert_chain: read(tls.cert, 'cert'), private_key: read(tls.key, 'key') }], false);
}

/** Starts serving. */
export async function startServer(cluster: Cluster, opts: ServerOptions, log: Logger): Promise<MasterServer> {
  const server = new grpc.Server({
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 5_000,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  });
  server.addService(agentProto().determined.agent.v1.AgentService.service, {
    Connect: (call: Parameters<typeof handleAgentConnect>[0]) => handleAgentConnect(call, { cluster, agentToken: opts.agentToken, log: log.child('agents') }),
  });
  server.addService(apiProto().determined.api.v1.Determined.service, apiHandlers(cluster, opts.facts, opts.provisioner, opts.deleter));
  const health = new HealthImplementation({ '': 'SERVING', 'determined.api.v1.Determined': 'SERVING', 'determined.agent.v1.AgentService': 'SERVING' });
  health.addToServer(server);
  new ReflectionService(packageDefinition()).addToServer(server);

  const creds = serverCredentials(opts.tls);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${opts.host}:${opts.port}`, creds, (err, bound) => {
      if (err) reject(new DetError('DET_ERR_CONFIG_INVALID', `cannot listen on ${opts.host}:${opts.port}: ${err.message}. Is another det-master running? Choose another with --port`));
      else resolve(bound);
    });
  });

  let closing: Promise<void> | undefined;
  return {
    port,
    shutdown(deadlineMs = 5_000) {
      closing ??= new Promise<void>((resolve) => {
        health.setStatus('', 'NOT_SERVING');
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, deadlineMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      return closing;
    },
  };
}
