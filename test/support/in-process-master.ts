// A master run in the test process (SQLite store, gRPC on 127.0.0.1:0, captured log),
// optionally with a provisioner service, plus an admin API client on it.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { CheckpointStorageSpec } from '../../common/types';
import type { PoolPolicy } from '../../master/scheduler/scheduler';
import { createLogger, type Logger } from '../../common/log';
import { apiProto } from '../../common/proto/load';
import type { DeterminedClient } from '../../common/proto-gen/determined/api/v1/Determined';
import { Cluster } from '../../master/cluster/cluster';
import type { ProvisionerService } from '../../master/provisioner/service';
import { startServer, type MasterServer } from '../../master/server';
import { openSqliteStore } from '../../master/store/sqlite';
import type { Store } from '../../master/store/store';

/** What to start. */
export interface InProcessMasterOptions {
  dbFile: string;
  token: string;
  clusterName: string;
  pools: { name: string; description: string; scheduler?: PoolPolicy }[];
  graceMs?: number;
  /** Default checkpoint_storage (default: shared_fs in a "checkpoints" directory next to dbFile). */
  checkpointStorage?: CheckpointStorageSpec;
  /** Builds the provisioner service once the cluster and store exist (started after the server). */
  provisioner?: (cluster: Cluster, store: Store, log: Logger) => ProvisionerService;
}

/** A running in-process master. */
export interface InProcessMaster {
  cluster: Cluster;
  store: Store;
  server: MasterServer;
  service: ProvisionerService | undefined;
  address: string;
  api: DeterminedClient;
  /** Every log line the master wrote. */
  log: string[];
  /** Shuts down as det-master does on SIGTERM; calling twice is harmless. */
  stop(): Promise<void>;
}

/** Starts a master in this process. */
export async function startInProcessMaster(o: InProcessMasterOptions): Promise<InProcessMaster> {
  const log: string[] = [];
  const logger = createLogger('master', { level: 'debug', sink: (line) => log.push(line) });
  const store = await openSqliteStore(o.dbFile);
  const cluster = await Cluster.open(store, { resourcePools: o.pools, defaultResourcePool: o.pools[0].name, agentReconnectGraceMs: o.graceMs ?? 60_000,
    checkpointStorage: o.checkpointStorage ?? { type: 'shared_fs', host_path: path.join(path.dirname(path.resolve(o.dbFile)), 'checkpoints') },
  }, logger.child('cluster'));
  let service: ProvisionerService | undefined;
  const server = await startServer(
    cluster,
    {
      host: '127.0.0.1', port: 0, tls: undefined, agentToken: o.token, facts: { clusterName: o.clusterName, startedAtMs: Date.now(), tls: false },
      provisioner: { status: (pool) => service?.status(pool) ?? Promise.resolve([]) },
    },
    logger.child('grpc'),
  );
  service = o.provisioner?.(cluster, store, logger.child('provisioner'));
  const address = `127.0.0.1:${server.port}`;
  const Determined = apiProto().determined.api.v1.Determined;
  const api = new Determined(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as DeterminedClient;
  let stopping: Promise<void> | undefined;
  const m: InProcessMaster = {
    cluster, store, server, service, address, api, log,
    stop: () =>
      (stopping ??= (async () => {
        await service?.stop();
        api.close();
        cluster.disconnectAgents('the master is shutting down');
        await server.shutdown(2_000);
        await cluster.close();
        await store.close();
      })()),
  };
  await service?.start();
  return m;
}
