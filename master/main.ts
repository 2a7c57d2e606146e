// det-master: parse config, open the store, recover, serve, shut down cleanly.
import { Command, InvalidArgumentError } from 'commander';
import { rootAbortController } from '../common/abort';
import { DetError, errorMessage } from '../common/errors';
import { createLogger, redactSecrets } from '../common/log';
import { VERSION } from '../common/types';
import type { ConfigLayer } from '../common/config/pipeline';
import { Cluster } from './cluster/cluster';
import { loadMasterConfig, type MasterConfig } from './config';
import { ensureDataDir, resolveAgentToken } from './data-dir';
import { startServer } from './server';
import { openStore } from './store';
import { isPostgresUrl } from './store/index';

function parseFlags(argv: string[]): { configFile?: string; layer: ConfigLayer } {
  const int = (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new InvalidArgumentError('must be an integer');
    return n;
  };
  const program = new Command('det-master')
    .description('Determined-style master: schedules experiments onto agents and serves the det CLI')
    .version(VERSION, '-v, --version')
    .option('--config-file <path>', 'YAML config file (default /etc/determined/master.yaml if present)')
    .option('--host <address>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'gRPC port for agents and the CLI (default 8080)', int)
    .option('--data-dir <dir>', 'data directory (default ./.det)')
    .option('--db <sqlite-path|postgres-url>', 'database: a SQLite file (default <data-dir>/determined.db) or postgres://user:pass@host/db')
    .option('--cluster-name <name>', 'cluster name')
    .option('--tls-cert <file>', 'TLS certificate (PEM) for the gRPC port')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--log-level <level>', 'debug | info | warn | error')
    .exitOverride();
  program.parse(argv, { from: 'user' });
  const o = program.opts();
  const layer: ConfigLayer = {};
  const set = (key: string, v: unknown) => v !== undefined && (layer[key] = v);
  set('host', o.host);
  set('port', o.port);
  set('data_dir', o.dataDir);
  set('db', o.db);
  set('cluster_name', o.clusterName);
  set('log_level', o.logLevel);
  if (o.tlsCert !== undefined || o.tlsKey !== undefined) layer.tls = { ...(o.tlsCert ? { cert: o.tlsCert } : {}), ...(o.tlsKey ? { key: o.tlsKey } : {}) };
  return { configFile: o.configFile, layer };
}

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
    log.info('config', { ...redactSecrets({ ...config }), agent_token_source: source });
    const store = await openStore(config.db);
    const cluster = await Cluster.open(store, config, log.child('cluster'));
    const server = await startServer(cluster, { host: config.host, port: config.port, tls: config.tls, agentToken: token, facts: { clusterName: config.clusterName, startedAtMs, tls: !!config.tls } }, log.child('grpc'));
    // Tests and `npm start` wait for this exact line.
    process.stdout.write(`det-master listening on ${config.host}:${server.port} (${config.tls ? 'TLS' : 'plaintext'}, ${store.kind}, cluster ${cluster.clusterId})\n`);
    await new Promise<void>((resolve) => controller.signal.addEventListener('abort', () => resolve(), { once: true }));
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
  if (err instanceof DetError || (err as { code?: string }).code?.startsWith?.('commander.')) {
    const code = (err as { code?: string }).code ?? '';
    if (code === 'commander.helpDisplayed' || code === 'commander.version') return 0;
    if (code.startsWith('commander.')) return 2;
    process.stderr.write(`det-master: ${(err as Error).message}\n`);
    return 1;
  }
  process.stderr.write(`det-master: unexpected error: ${errorMessage(err)}\n${(err as Error)?.stack ?? ''}\n`);
  return 1;
}

/** Entry point for bin/det-master.js. */
export function run(argv: string[]): void {
  main(argv).then((code) => process.exit(code), (err) => {
    process.stderr.write(`det-master: ${errorMessage(err)}\n`);
    process.exit(1);
  });
}
