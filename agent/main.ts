// det-agent: config (from the file, or with --config-source ec2 also from EC2
// user data), Docker check, device detection, then the session with the master
// until SIGINT/SIGTERM (or a fatal rejection).
import * as path from 'node:path';
import { rootAbortController } from '../common/abort';
import { exitCodeFor, runDaemon } from '../common/daemon';
import { parseDaemonFlags, type FlagSpec, type ParsedFlags } from '../common/config/flags';
import { DetError } from '../common/errors';
import { createLogger, redactSecrets } from '../common/log';
import { DockerRuntime } from './containers/docker';
import { HashCache } from './checkpoints/hash-cache';
import { ContainerManager } from './containers/manager';
import { DataCache } from './data';
import { detectDevices } from './detect/devices';
import { ec2ConfigLayer } from './ec2/config-source';
import { ImdsClient } from './ec2/imds';
import { forwardSpotInterruption } from './ec2/spot-watcher';
import { DEFAULT_AGENT_CONFIG_FILE, loadAgentOptions, type AgentOptions } from './options';
import { Outbox } from './session/outbox';
import { AgentSession } from './session/session';

/** det-agent's flags; each sets one config key. */
const FLAGS: FlagSpec[] = [
  { flags: '--master-host <host>', key: 'master_host', description: 'master address (default 127.0.0.1)' },
  { flags: '--master-port <port>', key: 'master_port', description: 'master gRPC port (default 8080)', integer: true },
  { flags: '--agent-id <id>', key: 'agent_id', description: 'unique agent id (default: hostname)' },
  { flags: '--resource-pool <pool>', key: 'resource_pool', description: 'resource pool to join (default "default")' },
  { flags: '--docker-socket <path>', key: 'docker_socket', description: 'Docker socket (default /var/run/docker.sock or DOCKER_HOST)' },
  { flags: '--slot-type <type>', key: 'slot_type', description: 'auto | gpu | cpu' },
  { flags: '--cpu-slots <n>', key: 'cpu_slots', description: 'artificial CPU slots when there are no GPUs (default: CPU cores)', integer: true },
  { flags: '--container-network-mode <mode>', key: 'container_network_mode', description: 'Docker network mode of task containers (default host)' },
  { flags: '--tls-ca-cert <file>', key: 'tls.ca_cert', description: 'CA certificate (PEM) to trust for a TLS master; enables TLS' },
  { flags: '--tls-server-name <name>', key: 'tls.server_name', description: 'expected server name in the master certificate' },
  { flags: '--work-dir <dir>', key: 'work_dir', description: 'task files and the data cache (default /var/lib/det-agent as root)' },
  { flags: '--data-cache-max-bytes <n>', key: 'data_cache_max_bytes', description: 'bound of the data-input cache (default 50 GiB)', integer: true },
  { flags: '--log-level <level>', key: 'log_level', description: 'debug | info | warn | error' },
];

/** Where the config comes from: file (file, DET_* env, flags) or ec2 (EC2 user data via IMDS as well). */
export type ConfigSource = 'file' | 'ec2';

// --config-source picks a source rather than setting a config key: a flag without a key.
const CONFIG_SOURCE_FLAG: FlagSpec = {
  flags: '--config-source <source>',
  description: 'file | ec2: ec2 also reads the master address, pool, token and TLS CA from EC2 user data via IMDS (default file)',
};

/**
 * Exit code when the ec2 config source fails (IMDS unreachable, user data
 * missing or malformed, or the config it gives invalid): sysexits' EX_CONFIG.
 * Restarting cannot fix these, so the AMI's unit sets
 * RestartPreventExitStatus=78 and systemd stops instead of restarting in a
 * tight loop.
 */
export const EXIT_CONFIG_SOURCE_FAILED = 78;

function parseFlags(argv: string[]): ParsedFlags & { configSource: ConfigSource } {
  const parsed = parseDaemonFlags('det-agent', 'Determined-style agent: registers with the master and runs task containers on Docker', DEFAULT_AGENT_CONFIG_FILE, [...FLAGS, CONFIG_SOURCE_FLAG], argv);
  const source = parsed.options.configSource ?? 'file';
  if (source !== 'file' && source !== 'ec2') throw new DetError('DET_ERR_CONFIG_INVALID', `--config-source must be "file" or "ec2", not "${String(source)}"`);
  return { ...parsed, configSource: source };
}

/** Runs det-agent until stopped; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  let flags: ReturnType<typeof parseFlags>;
  let opts: AgentOptions;
  let imds: ImdsClient | undefined;
  try {
    flags = parseFlags(argv);
  } catch (err) {
    return fail(err);
  }
  try {
    if (flags.configSource === 'ec2') {
      // Before anything else (Docker included): without its config the agent cannot do anything.
      imds = new ImdsClient();
      opts = loadAgentOptions(flags, process.env, await ec2ConfigLayer(imds), 'EC2 user data');
    } else {
      opts = loadAgentOptions(flags);
    }
  } catch (err) {
    if (flags.configSource === 'ec2' && err instanceof DetError) {
      process.stderr.write(`det-agent: ${err.message}\n`);
      return EXIT_CONFIG_SOURCE_FAILED;
    }
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
    const files = {
      workDir: opts.workDir,
      dataCache: new DataCache({ root: path.join(opts.workDir, 'data-cache'), maxBytes: opts.dataCacheMaxBytes, log: log.child('data') }),
      hashCache: new HashCache(),
      log: log.child('files'),
    };
    const manager = new ContainerManager(runtime, { clusterId: '', agentId: opts.agentId, networkMode: opts.containerNetworkMode, devices }, outbox, log.child('containers'), files);
    // Containers an earlier run of this agent left: reported in Register, resumed if the master expects them.
    await manager.adopt(opts.agentId);
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
    // The session has its own signal: on shutdown the containers are stopped first, while the
    // stream still carries their last lines and exit states to the master, then the session ends.
    const sessionController = new AbortController();
    let fatal: unknown;
    const sessionDone = session.run(sessionController.signal).catch((err) => {
      fatal = err;
    });
    const spotDone = imds
      ? forwardSpotInterruption({ imds, outbox, log: log.child('spot'), signal: controller.signal, onNotice: () => void manager.flushCheckpoints() })
      : undefined;
    await Promise.race([sessionDone, new Promise<void>((r) => controller.signal.addEventListener('abort', () => r(), { once: true }))]);
    controller.abort(fatal ?? new Error('shutting down'));
    await manager.stopAll();
    if (!fatal) await outbox.flushed(SHUTDOWN_FLUSH_MS);
    sessionController.abort(new Error('agent shutting down'));
    await sessionDone;
    await spotDone;
    if (fatal) return fail(fatal);
    log.info('stopped');
    return 0;
  } catch (err) {
    controller.abort(err);
    return fail(err);
  }
}

/** How long a stopping agent waits for its last messages to reach the master. */
const SHUTDOWN_FLUSH_MS = 10_000;

function fail(err: unknown): number {
  return exitCodeFor('det-agent', err);
}

/** Entry point for bin/det-agent.js. */
export function run(argv: string[]): void {
  runDaemon('det-agent', () => main(argv));
}
