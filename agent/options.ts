// det-agent configuration: defaults -> YAML file -> [config source layer,
// e.g. EC2 user data] -> DET_* env -> flags -> validate (all problems at once,
// unknown keys rejected) -> freeze.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { z } from 'zod';
import { deepFreeze, envLayer, mergeLayers, readYamlFile, validateConfig, type ConfigLayer, type EnvMapping } from '../common/config/pipeline';

/** Read when present and --config-file is not given. */
export const DEFAULT_AGENT_CONFIG_FILE = '/etc/determined/agent.yaml';

/** Default bound of the data cache: 50 GiB. */
export const DEFAULT_DATA_CACHE_MAX_BYTES = 50 * 2 ** 30;

/** Default work directory: /var/lib/det-agent as root, else ~/.local/share/det-agent. */
export function defaultWorkDir(): string {
  return process.getuid?.() === 0 ? '/var/lib/det-agent' : path.join(os.homedir(), '.local', 'share', 'det-agent');
}

const schema = z
  .object({
    /** Master address. */
    master_host: z.string().min(1).default('127.0.0.1'),
    /** Master gRPC port. */
    master_port: z.number().int().min(1).max(65535).default(8080),
    /** Unique id of this agent (default: the hostname). */
    agent_id: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, _ . -').optional(),
    /** Resource pool to join. */
    resource_pool: z.string().min(1).default('default'),
    /** Cluster join token (the master's agent_token). */
    agent_token: z.string().optional(),
    /** TLS to the master: trust ca_cert (PEM), optionally override the expected server name. */
    tls: z.object({ enabled: z.boolean().default(true), ca_cert: z.string().min(1).optional(), server_name: z.string().min(1).optional() }).strict().optional(),
    /** Docker Engine socket. */
    docker_socket: z.string().min(1).default('/var/run/docker.sock'),
    /** auto: GPUs if nvidia-smi finds any, else CPU slots; gpu: require GPUs; cpu: CPU slots only. */
    slot_type: z.enum(['auto', 'gpu', 'cpu']).default('auto'),
    /** Number of artificial CPU slots when there are no GPUs (default: CPU cores). */
    cpu_slots: z.number().int().min(0).max(1024).optional(),
    /** Docker network mode of task containers. */
    container_network_mode: z.string().min(1).default('host'),
    /** Cloud instance id (set from IMDS by --config-source ec2, or by the local provider). */
    instance_id: z.string().default(''),
    /** Cloud instance type. */
    instance_type: z.string().default(''),
    /** Labels reported to the master. */
    labels: z.record(z.string(), z.string()).default({}),
    /** Where the agent keeps task files (checkpoint directories, restored checkpoints) and the data cache. */
    work_dir: z.string().min(1).refine((p) => p.startsWith('/'), 'must be an absolute path').optional(),
    /** Bound of the data-input cache in bytes (least recently used objects not in use are evicted). */
    data_cache_max_bytes: z.number().int().min(0).default(DEFAULT_DATA_CACHE_MAX_BYTES),
    /** Log level. */
    log_level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  })
  .strict();

/** Validated agent options. */
export interface AgentOptions {
  masterHost: string;
  masterPort: number;
  agentId: string;
  resourcePool: string;
  agentToken: string;
  tls: { caCert: string | undefined; serverName: string | undefined } | undefined;
  dockerSocket: string;
  slotType: 'auto' | 'gpu' | 'cpu';
  cpuSlots: number;
  containerNetworkMode: string;
  labels: Record<string, string>;
  instanceId: string;
  instanceType: string;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  workDir: string;
  dataCacheMaxBytes: number;
}

/** DET_* variables the agent reads, and the key each sets. */
export const AGENT_ENV: EnvMapping = {
  DET_MASTER_HOST: 'master_host',
  DET_MASTER_PORT: { key: 'master_port', type: 'number' },
  DET_AGENT_ID: 'agent_id',
  DET_RESOURCE_POOL: 'resource_pool',
  DET_AGENT_TOKEN: 'agent_token',
  DET_MASTER_CERT_FILE: 'tls.ca_cert',
  DET_MASTER_CERT_NAME: 'tls.server_name',
  DET_DOCKER_SOCKET: 'docker_socket',
  DET_SLOT_TYPE: 'slot_type',
  DET_CPU_SLOTS: { key: 'cpu_slots', type: 'number' },
  DET_CONTAINER_NETWORK_MODE: 'container_network_mode',
  DET_INSTANCE_ID: 'instance_id',
  DET_INSTANCE_TYPE: 'instance_type',
  DET_LOG_LEVEL: 'log_level',
  DET_AGENT_WORK_DIR: 'work_dir',
  DET_DATA_CACHE_MAX_BYTES: { key: 'data_cache_max_bytes', type: 'number' },
};

/** The docker socket named by DOCKER_HOST (unix:// only), if any. */
function dockerHostSocket(env: NodeJS.ProcessEnv): ConfigLayer {
  const h = env.DOCKER_HOST;
  return h?.startsWith('unix://') ? { docker_socket: h.slice('unix://'.length) } : {};
}

/**
 * Runs the pipeline; throws DET_ERR_CONFIG_INVALID listing every problem.
 * `extraLayer` (from a config source such as EC2 user data, named by
 * `extraSource` in errors) sits after the file and before env and flags, so
 * explicit settings still win.
 */
export function loadAgentOptions(flags: { configFile?: string; layer: ConfigLayer }, env: NodeJS.ProcessEnv = process.env, extraLayer?: ConfigLayer, extraSource?: string): AgentOptions {
  const file = flags.configFile ?? (fs.existsSync(DEFAULT_AGENT_CONFIG_FILE) ? DEFAULT_AGENT_CONFIG_FILE : undefined);
  const merged = mergeLayers(dockerHostSocket(env), file ? readYamlFile(file) : {}, extraLayer ?? {}, envLayer(env, AGENT_ENV), flags.layer);
  const sources = [file, extraLayer && extraSource].filter(Boolean).join(', ');
  const c = validateConfig(schema, merged, `agent config${sources ? ` (${sources})` : ''}`);
  const tlsOn = c.tls !== undefined && c.tls.enabled;
  return deepFreeze({
    masterHost: c.master_host,
    masterPort: c.master_port,
    agentId: c.agent_id ?? os.hostname(),
    resourcePool: c.resource_pool,
    agentToken: c.agent_token ?? '',
    tls: tlsOn ? { caCert: c.tls!.ca_cert, serverName: c.tls!.server_name } : undefined,
    dockerSocket: c.docker_socket,
    slotType: c.slot_type,
    cpuSlots: c.cpu_slots ?? os.availableParallelism(),
    containerNetworkMode: c.container_network_mode,
    labels: c.labels,
    instanceId: c.instance_id,
    instanceType: c.instance_type,
    logLevel: c.log_level,
    workDir: c.work_dir ?? defaultWorkDir(),
    dataCacheMaxBytes: c.data_cache_max_bytes,
  });
}
