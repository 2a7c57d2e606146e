// The `provider:` block of a resource pool in master.yaml, validated with the
// rest of the master config.
import { z } from 'zod';
import { parseDurationMs } from '../experiment/units';
import type { Offering, PoolScaling } from './types';

const duration = (fallback: string) =>
  z
    .union([z.string(), z.number()])
    .default(fallback)
    .transform((v, ctx) => {
      const ms = parseDurationMs(v);
      if (ms === undefined) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `cannot parse ${JSON.stringify(v)} as a duration: use e.g. 30s, 5m` });
        return z.NEVER;
      }
      return ms;
    });

/** GPUs per instance for common EC2 GPU types; others need `{type, slots}`. */
export const KNOWN_INSTANCE_SLOTS: Record<string, number> = {
  'g4dn.xlarge': 1, 'g4dn.2xlarge': 1, 'g4dn.4xlarge': 1, 'g4dn.8xlarge': 1, 'g4dn.12xlarge': 4, 'g4dn.16xlarge': 1, 'g4dn.metal': 8,
  'g5.xlarge': 1, 'g5.2xlarge': 1, 'g5.4xlarge': 1, 'g5.8xlarge': 1, 'g5.12xlarge': 4, 'g5.16xlarge': 1, 'g5.24xlarge': 4, 'g5.48xlarge': 8,
  'g6.xlarge': 1, 'g6.2xlarge': 1, 'g6.12xlarge': 4, 'g6.48xlarge': 8,
  'p3.2xlarge': 1, 'p3.8xlarge': 4, 'p3.16xlarge': 8, 'p4d.24xlarge': 8, 'p5.48xlarge': 8,
};

const instanceType = z.union([z.string().min(1), z.object({ type: z.string().min(1), slots: z.number().int().min(0) }).strict()]);

const scaling = {
  min_instances: z.number().int().min(0).default(0),
  max_instances: z.number().int().min(1).default(5),
  max_idle_agent_period: duration('5m'),
  max_agent_starting_period: duration('10m'),
  max_disconnected_period: duration('5m'),
  /** Extra agent config keys for the instances (e.g. slot_type, container_network_mode). */
  agent: z.record(z.string(), z.unknown()).default({}),
  /** Moving trials off lightly used instances so they can be terminated (consolidation.ts). */
  consolidation: z
    .object({
      enabled: z.boolean().default(false),
      max_checkpoint_age: duration('2m'),
      min_underused_period: duration('0s'),
    })
    .strict()
    .default({}),
};

/** Schema of `resource_pools[].provider`. */
export const providerSchema = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('aws'),
      region: z.string().min(1),
      /** EC2 API endpoint override (VPC endpoints; tests). */
      endpoint: z.string().url().optional(),
      image_id: z.string().regex(/^ami-[0-9a-f]+$/, 'must look like ami-0123456789abcdef0'),
      instance_types: z.array(instanceType).min(1, 'needs at least one instance type'),
      subnet_ids: z.array(z.string().min(1)).default([]),
      security_group_ids: z.array(z.string().min(1)).default([]),
      iam_instance_profile_arn: z.string().startsWith('arn:', 'must be an ARN').optional(),
      key_name: z.string().min(1).optional(),
      root_volume_size_gb: z.number().int().min(8).optional(),
      /** Root device of the AMI, to resize it (Ubuntu: /dev/sda1; default /dev/xvda). */
      root_device_name: z.string().startsWith('/dev/').optional(),
      spot: z.boolean().default(false),
      spot_only: z.boolean().default(false),
      spot_max_price: z.string().regex(/^\d+(\.\d+)?$/, 'a price in USD like "1.20"').optional(),
      tags: z.record(z.string(), z.string()).default({}),
      /** How agents reach the master (its VPC address); default: the master's host and port. */
      master_host: z.string().min(1).optional(),
      master_port: z.number().int().min(1).max(65535).optional(),
      /** PEM file of the CA agents should trust for the master's TLS certificate. */
      master_ca_cert: z.string().min(1).optional(),
      ...scaling,
    })
    .strict(),
  z
    .object({
      type: z.literal('local'),
      /** CPU slots each local agent offers. */
      slots_per_instance: z.number().int().min(0).default(1),
      /** Docker socket the local agents use (default: DOCKER_HOST or /var/run/docker.sock). */
      docker_socket: z.string().min(1).optional(),
      ...scaling,
    })
    .strict(),
]);

/** A pool's provider config as given. */
export type ProviderConfig = z.output<typeof providerSchema>;

/** Problems of an instance type list that the schema cannot see (unknown types without slots). */
export function instanceTypeProblems(types: z.output<typeof instanceType>[]): { index: number; message: string }[] {
  return types.flatMap((t, index) =>
    typeof t === 'string' && KNOWN_INSTANCE_SLOTS[t] === undefined
      ? [{ index, message: `unknown instance type ${t}: write it as {type: ${t}, slots: N} with N the GPUs its agent offers` }]
      : [],
  );
}

/** The decider's view of a pool's provider config. */
export function poolScaling(pool: string, p: ProviderConfig): PoolScaling {
  const offerings: Offering[] =
    p.type === 'aws'
      ? p.instance_types.map((t) => (typeof t === 'string' ? { instanceType: t, slots: KNOWN_INSTANCE_SLOTS[t] ?? 0 } : { instanceType: t.type, slots: t.slots }))
      : [{ instanceType: 'local', slots: p.slots_per_instance }];
  return {
    pool,
    instanceTypes: offerings,
    subnetIds: p.type === 'aws' && p.subnet_ids.length > 0 ? p.subnet_ids : [''],
    spot: p.type === 'aws' && p.spot,
    spotOnly: p.type === 'aws' && p.spot_only,
    minInstances: p.min_instances,
    maxInstances: p.max_instances,
    maxIdleAgentPeriodMs: p.max_idle_agent_period,
    maxAgentStartingPeriodMs: p.max_agent_starting_period,
    maxDisconnectedPeriodMs: p.max_disconnected_period,
    consolidation: {
      enabled: p.consolidation.enabled,
      maxCheckpointAgeMs: p.consolidation.max_checkpoint_age,
      minUnderusedPeriodMs: p.consolidation.min_underused_period,
    },
  };
}
