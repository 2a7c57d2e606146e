// det-master: parse config, open the store, recover, serve, shut down cleanly.
import { rootAbortController } from '../common/abort';
import { exitCodeFor, runDaemon } from '../common/daemon';
import { parseDaemonFlags, type FlagSpec } from '../common/config/flags';
import { createLogger, redactSecrets } from '../common/log';
import { ExperimentDeleter } from './checkpoints/deletion';
import { Cluster } from './cluster/cluster';
import { DEFAULT_CONFIG_FILE, loadMasterConfig, type MasterConfig } from './config';
import { ensureDataDir, resolveAgentToken } from './data-dir';
import { startServer } from './server';
import { buildProvisionedPools } from './provisioner/build';
import { LocalProvider } from './provisioner/local/local-provider';
import { ProvisionerService } from './provisioner/service';
import { openStore } from './store';
import { isPostgresUrl } from './store/index';

/** det-master's flags; each sets one config key. */
const FLAGS: FlagSpec[] = [
  { flags: '--host <address>', key: 'host', description: 'address to listen on (default 127.0.0.1)' },
  { flags: '--port <port>', key: 'port', description: 'gRPC port for agents and the CLI (default 8080)', integer: true },
  { flags: '--data-dir <dir>', key: 'data_dir', description: 'data directory (default ./.det)' },
  { flags: '--db <sqlite-path|postgres-url>', key: 'db', description: 'a SQLite file (default <data-dir>/determined.db) or postgres://user:pass@host/db' },
  { flags: '--cluster-name <name>', key: 'cluster_name', description: 'cluster name' },
  { flags: '--tls-cert <file>', key: 'tls.cert', description: 'TLS certificate (PEM) for the gRPC port' },
  { flags: '--tls-key <file>', key: 'tls.key', description: 'TLS private key (PEM)' },
  { flags: '--log-level <level>', key: 'log_level', description: 'debug | info | warn | error' },
];

const parseFlags = (argv: string[]) =>
  parseDaemonFlags('det-master', 'Determined-style master: schedules experiments onto agents and serves the det CLI', DEFAULT_CONFIG_FILE, FLAGS, argv);

/** Runs det-master until SIGINT/SIGTERM. Resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  let config: MasterConfig;
  try {
    config = loadMasterConfig(parseFlags(argv));
  } catch (err) {
    return fail(err);
  }
  const log = createLogger('master', { level: config.logLevel });
  const controller = rootAbortController((sig) => log.info(`received ${sig}, shutting down (send again to force)`));
  const startedAtMs = Date.now();
  try {
    if (!isPostgresUrl(config.db) || config.agentToken === undefined) ensureDataDir(config.dataDir);
    const { token, source } = resolveAgentToken(config.agentToken, config.dataDir);
    log.info('config', { ...redactSecrets({ ...config }), agent_join_key_from: source });
    const store = await openStore(config.db);
    const cluster = await Cluster.open(store, config, log.child('cluster'));
    const deleter = new ExperimentDeleter({ store, log: log.child('checkpoints'), signal: controller.signal });
    let provisioner: ProvisionerService | undefined;
    const statusSource = { status: (pool: string | undefined) => provisioner?.status(pool) ?? Promise.resolve([]) };
    const server = await startServer(
      cluster,
      { host: config.host, port: config.port, tls: config.tls, agentToken: token, facts: { clusterName: config.clusterName, startedAtMs, tls: !!config.tls }, provisioner: statusSource, deleter },
      log.child('grpc'),
    );
    const pools = buildProvisionedPools(config, { clusterId: cluster.clusterId, masterId: cluster.masterId, port: server.port, agentToken: token }, log.child('provisioner'));
    if (pools.size > 0) {
      provisioner = new ProvisionerService(cluster, store, pools, log.child('provisioner'));
      await provisioner.start();
    }
    // Deletions a previous master left half-done continue in the background.
    void deleter.resumePending();
    // Tests and `npm start` wait for this exact line.
    process.stdout.write(`det-master listening on ${config.host}:${server.port} (${config.tls ? 'TLS' : 'plaintext'}, ${store.kind}, cluster ${cluster.clusterId})\n`);
    await new Promise<void>((resolve) => controller.signal.addEventListener('abort', () => resolve(), { once: true }));
    await provisioner?.stop();
    // Local "instances" are processes of this host: they stop with the master. EC2 instances keep running.
    await Promise.all([...pools.values()].map((p) => (p.provider instanceof LocalProvider ? p.provider.stopAll() : undefined)));
    cluster.disconnectAgents('the master is shutting down');
    await server.shutdown(2_000);
    await cluster.close();
    await store.close();
    log.info('stopped');
    return 0;
  } catch (err) {
    return fail(err);
  }
}

function fail(err: unknown): number {
  return exitCodeFor('det-master', err);
}

/** Entry point for bin/det-master.js. */
export function run(argv: string[]): void {
  runDaemon('det-master', () => main(argv));
}
