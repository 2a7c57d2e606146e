// det-master configuration: defaults -> YAML file -> DET_* env -> flags ->
// validate (all problems at once, unknown keys rejected) -> freeze.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { checkpointStorageSchema } from '../common/storage';
import type { PoolPolicy } from './scheduler/types';
import type { CheckpointStorageSpec } from '../common/types';
import { asRecord, deepFreeze, envLayer, mergeLayers, readYamlFile, validateConfig, type ConfigLayer, type ConfigProblem, type CrossCheck, type EnvMapping } from '../common/config/pipeline';
import { parseDurationMs } from './experiment/units';
import { instanceTypeProblems, providerSchema, type ProviderConfig } from './provisioner/config';

/** The default config file, read when present and --config-file is not given. */
export const DEFAULT_CONFIG_FILE = '/etc/determined/master.yaml';

const duration = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const ms = parseDurationMs(v);
    if (ms === undefined) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `cannot parse ${JSON.stringify(v)} as ${what}: use e.g. 30s, 5m` });
      return z.NEVER;
    }
    return ms;
  });

const schema = z
  .object({
    /** Address the gRPC port binds to. */
    host: z.string().min(1).default('127.0.0.1'),
    /** gRPC port for agents and the CLI. */
    port: z.number().int().min(0).max(65535).default(8080),
    /** Directory for the SQLite database and the generated agent token. */
    data_dir: z.string().min(1).default('.det'),
    /** SQLite file path or postgres:// URL; default <data_dir>/determined.db. */
    db: z.string().min(1).optional(),
    /** Cluster name shown by `det master info`. */
    cluster_name: z.string().default('determined'),
    /** Cluster join token agents must present; generated into <data_dir>/agent_token when unset. */
    agent_token: z.string().min(16, 'must be at least 16 characters').optional(),
    /** TLS for the gRPC port; both or neither. */
    tls: z.object({ cert: z.string().min(1), key: z.string().min(1) }).strict().optional(),
    /** Resource pools agents can join. */
    resource_pools: z
      .array(
        z
          .object({
            pool_name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, _ . -'),
            description: z.string().default(''),
            /** Dynamic agents: the master launches and terminates instances for this pool. */
            provider: providerSchema.optional(),
            /** How the pool places work. */
            scheduler: z
              .object({
                /** best: pack onto the fullest agent that fits; worst: spread onto the emptiest. */
                fitting_policy: z.enum(['best', 'worst']).default('best'),
                /** A higher-priority trial may stop lower-priority ones (requeued, restarts untouched). */
                preemption: z.boolean().default(false),
                /** Zero-slot tasks one agent may run at once. */
                max_zero_slot_tasks_per_agent: z.number().int().min(0).default(100),
              })
              .strict()
              .default({}),
          })
          .strict(),
      )
      .min(1, 'needs at least one pool')
      .default([{ pool_name: 'default', description: '', scheduler: { fitting_policy: 'best', preemption: false, max_zero_slot_tasks_per_agent: 100 } }]),
    /** Pool for experiments that name none. */
    default_resource_pool: z.string().optional(),
    /** How long a disconnected agent's tasks wait for it to come back before they are restarted elsewhere. */
    agent_reconnect_grace: duration('a duration').default('30s'),
    /** Log level. */
    log_level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
    /** Checkpoint storage for experiments that name none (default: shared_fs in <data_dir>/checkpoints). */
    checkpoint_storage: checkpointStorageSchema.optional(),
  })
  .strict();

/** Checks between keys, on the raw input so they are reported along with schema problems. */
const crossCheck: CrossCheck = (raw) => {
  const problems: ConfigProblem[] = [];
  const pools = Array.isArray(raw.resource_pools) ? raw.resource_pools : [{ pool_name: 'default' }];
  const names = pools.map((p) => asRecord(p)?.pool_name).filter((n): n is string => typeof n === 'string');
  names.forEach((n, i) => {
    if (names.indexOf(n) !== i) problems.push({ path: ['resource_pools', i, 'pool_name'], message: `duplicate pool ${n}` });
  });
  pools.forEach((p, i) => {
    const provider = asRecord(asRecord(p)?.provider);
    if (provider?.type === 'aws' && Array.isArray(provider.instance_types)) {
      for (const { index, message } of instanceTypeProblems(provider.instance_types as never)) problems.push({ path: ['resource_pools', i, 'provider', 'instance_types', index], message });
    }
    if (provider && typeof provider.min_instances === 'number' && typeof provider.max_instances === 'number' && provider.min_instances > provider.max_instances) {
      problems.push({ path: ['resource_pools', i, 'provider', 'min_instances'], message: `must be <= max_instances (${provider.max_instances})` });
    }
  });
  if (typeof raw.default_resource_pool === 'string' && !names.includes(raw.default_resource_pool)) {
    problems.push({ path: ['default_resource_pool'], message: `${raw.default_resource_pool} is not one of resource_pools (${names.join(', ')})` });
  }
  return problems;
};

/** Validated master config. */
export interface MasterConfig {
  host: string;
  port: number;
  dataDir: string;
  /** SQLite path or postgres URL. */
  db: string;
  clusterName: string;
  agentToken: string | undefined;
  tls: { cert: string; key: string } | undefined;
  resourcePools: { name: string; description: string; provider: ProviderConfig | undefined; scheduler: PoolPolicy }[];
  defaultResourcePool: string;
  agentReconnectGraceMs: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** Default checkpoint_storage of experiments. */
  checkpointStorage: CheckpointStorageSpec;
}

/** DET_* variables the master reads, and the key each sets. */
export const MASTER_ENV: EnvMapping = {
  DET_HOST: 'host',
  DET_PORT: { key: 'port', type: 'number' },
  DET_DATA_DIR: 'data_dir',
  DET_DB: 'db',
  DET_CLUSTER_NAME: 'cluster_name',
  DET_AGENT_TOKEN: 'agent_token',
  DET_TLS_CERT: 'tls.cert',
  DET_TLS_KEY: 'tls.key',
  DET_DEFAULT_RESOURCE_POOL: 'default_resource_pool',
  DET_AGENT_RECONNECT_GRACE: 'agent_reconnect_grace',
  DET_LOG_LEVEL: 'log_level',
};

/** Command-line flags, already parsed into a layer by the caller. */
export interface MasterFlags {
  configFile?: string;
  layer: ConfigLayer;
}

/** Runs the pipeline. Throws DET_ERR_CONFIG_INVALID listing every problem. */
export function loadMasterConfig(flags: MasterFlags, env: NodeJS.ProcessEnv = process.env): MasterConfig {
  const file = flags.configFile ?? (fs.existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
  const merged = mergeLayers(file ? readYamlFile(file) : {}, envLayer(env, MASTER_ENV), flags.layer);
  const c = validateConfig(schema, merged, `master config${file ? ` (${file})` : ''}`, crossCheck);
  const dataDir = path.resolve(c.data_dir);
  const db = c.db ?? path.join(dataDir, 'determined.db');
  return deepFreeze({
    host: c.host,
    port: c.port,
    dataDir,
    db: /^postgres(ql)?:\/\//.test(db) ? db : path.resolve(db),
    clusterName: c.cluster_name,
    agentToken: c.agent_token,
    tls: c.tls,
    resourcePools: c.resource_pools.map((p) => ({
      name: p.pool_name, description: p.description, provider: p.provider,
      scheduler: { fitting: p.scheduler.fitting_policy, preemption: p.scheduler.preemption, maxZeroSlotTasksPerAgent: p.scheduler.max_zero_slot_tasks_per_agent },
    })),
    defaultResourcePool: c.default_resource_pool ?? c.resource_pools[0].pool_name,
    agentReconnectGraceMs: c.agent_reconnect_grace as unknown as number,
    logLevel: c.log_level,
    checkpointStorage: c.checkpoint_storage ?? { type: 'shared_fs', host_path: path.join(dataDir, 'checkpoints') },
  });
}
