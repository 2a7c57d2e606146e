// det-agent: config, Docker check, device detection, then the session with
// the master until SIGINT/SIGTERM (or a fatal rejection).
import { Command, InvalidArgumentError } from 'commander';
import { rootAbortController } from '../common/abort';
import { DetError, errorMessage } from '../common/errors';
import { createLogger, redactSecrets } from '../common/log';
import { VERSION } from '../common/types';
import type { ConfigLayer } from '../common/config/pipeline';
import { DockerRuntime } from './containers/docker';
import { ContainerManager } from './containers/manager';
import { detectDevices } from './detect/devices';
import { loadAgentOptions, type AgentOptions } from './options';
import { Outbox } from './session/outbox';
import { AgentSession } from './session/session';

function parseFlags(argv: string[]): { configFile?: string; layer: ConfigLayer } {
  const int = (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new InvalidArgumentError('must be an integer');
    return n;
  };
  const program = new Command('det-agent')
    .description('Determined-style agent: registers with the master and runs task containers on Docker')
    .version(VERSION, '-v, --version')
    .option('--config-file <path>', 'YAML config file (default /etc/determined/agent.yaml if present)')
    .option('--master-host <host>', 'master address (default 127.0.0.1)')
    .option('--master-port <port>', 'master gRPC port (default 8080)', int)
    .option('--agent-id <id>', 'unique agent id (default: hostname)')
    .option('--resource-pool <pool>', 'resource pool to join (default "default")')
    .option('--docker-socket <path>', 'Docker socket (default /var/run/docker.sock or DOCKER_HOST)')
    .option('--slot-type <type>', 'auto | gpu | cpu')
    .option('--cpu-slots <n>', 'artificial CPU slots when there are no GPUs (default: CPU cores)', int)
    .option('--container-network-mode <mode>', 'Docker network mode of task containers (default host)')
    .option('--tls-ca-cert <file>', 'CA certificate (PEM) to trust for a TLS master; enables TLS')
    .option('--tls-server-name <name>', 'expected server name in the master certificate')
    .option('--log-level <level>', 'debug | info | warn | error')
    .exitOverride();
  program.parse(argv, { from: 'user' });
  const o = program.opts();
  const layer: ConfigLayer = {};
  const set = (key: string, v: unknown) => v !== undefined && (layer[key] = v);
  set('master_host', o.masterHost);
  set('master_port', o.masterPort);
  set('agent_id', o.agentId);
  set('resource_pool', o.resourcePool);
  set('docker_socket', o.dockerSocket);
  set('slot_type', o.slotType);
  set('cpu_slots', o.cpuSlots);
  set('container_network_mode', o.containerNetworkMode);
  set('log_level', o.logLevel);
  if (o.tlsCaCert !== undefined || o.tlsServerName !== undefined) layer.tls = { ...(o.tlsCaCert ? { ca_cert: o.tlsCaCert } : {}), ...(o.tlsServerName ? { server_name: o.tlsServerName } : {}) };
  return { configFile: o.configFile, layer };
}

/** Runs det-agent until stopped; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  let opts: AgentOptions;
  try {
    opts = loadAgentOptions(parseFlags(argv));
  } catch (err) {
    return fail(err);
  }
  const log = createLogger('agent', { level: opts.logLevel });
  const controller = rootAbortController((sig) => log.info(`received ${sig}, shutting down (send again to force)`));
  try {
    log.info('config', redactSecrets({ ...opts }));
    if (!opts.agentToken) log.warn('agent_token is not set (DET_AGENT_TOKEN): the master will reject this agent. Use the master\'s agent_token or <data_dir>/agent_token');
    const runtime = new DockerRuntime({ socketPath: opts.dockerSocket });
    await runtime.ping(controller.signal);
    const detection = await detectDevices({ slotType: opts.slotType, cpuSlots: opts.cpuSlots });
    if (detection.warning) log.warn(detection.warning);
    const devices = detection.devices;
    log.info('devices', { count: devices.length, type: devices[0]?.type ?? 'none', names: [...new Set(devices.map((d) => d.brand))] });
    const outbox = new Outbox();
    const manager = new ContainerManager(runtime, { clusterId: '', agentId: opts.agentId, networkMode: opts.containerNetworkMode, devices }, outbox, log.child('containers'));
    await manager.removeLeftovers(opts.agentId);
    let announced = false;
    const session = new AgentSession(opts, devices, manager, outbox, log.child('session'), {
      onRegistered: (info) => {
        if (announced) return;
        announced = true;
        // Tests and `npm start` wait for this line.
        process.stdout.write(`det-agent ${opts.agentId} registered with master ${opts.masterHost}:${opts.masterPort} (cluster ${info.clusterId}, ${devices.length} ${devices[0]?.type ?? 'cpu'} slots)\n`);
      },
      onShutdown: () => controller.abort(new Error('master requested shutdown')),
    });
    const sessionDone = session.run(controller.signal);
    await Promise.race([sessionDone, new Promise<void>((r) => controller.signal.addEventListener('abort', () => r(), { once: true }))]);
    if (!controller.signal.aborted) await sessionDone; // fatal error path rethrows below
    await manager.stopAll();
    await sessionDone.catch(() => undefined);
    log.info('stopped');
    return 0;
  } catch (err) {
    controller.abort(err);
    return fail(err);
  }
}

function fail(err: unknown): number {
  const code = (err as { code?: string }).code ?? '';
  if (code === 'commander.helpDisplayed' || code === 'commander.version') return 0;
  if (typeof code === 'string' && code.startsWith('commander.')) return 2;
  if (err instanceof DetError) {
    process.stderr.write(`det-agent: ${err.message}\n`);
    return 1;
  }
  process.stderr.write(`det-agent: unexpected error: ${errorMessage(err)}\n${(err as Error)?.stack ?? ''}\n`);
  return 1;
}

/** Entry point for bin/det-agent.js. */
export function run(argv: string[]): void {
  main(argv).then((code) => process.exit(code), (err) => {
    process.stderr.write(`det-agent: ${errorMessage(err)}\n`);
    process.exit(1);
  });
}
