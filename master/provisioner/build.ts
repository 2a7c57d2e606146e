// Builds each provisioned pool's provider from the master config.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DetError } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { MasterConfig } from '../config';
import { Ec2Provider } from './aws/ec2-provider';
import { poolScaling } from './config';
import { LocalProvider } from './local/local-provider';
import type { ProvisionedPool } from './service';

/** What the providers need from the running master. */
export interface MasterEndpoint {
  clusterId: string;
  masterId: string;
  /** Port the master actually listens on. */
  port: number;
  agentToken: string;
}

/** The pools with a `provider:` block, with their providers. */
export function buildProvisionedPools(config: MasterConfig, master: MasterEndpoint, log: Logger): Map<string, ProvisionedPool> {
  const pools = new Map<string, ProvisionedPool>();
  for (const pool of config.resourcePools) {
    const p = pool.provider;
    if (!p) continue;
    const scaling = poolScaling(pool.name, p);
    if (p.type === 'local') {
      const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host;
      const provider = new LocalProvider({
        pool: pool.name,
        masterHost: host,
        masterPort: master.port,
        agentToken: master.agentToken,
        // A local agent trusts the master's own certificate (self-signed or its chain).
        tlsCaCert: config.tls?.cert,
        tlsServerName: undefined,
        dockerSocket: p.docker_socket ?? (process.env.DOCKER_HOST?.startsWith('unix://') ? process.env.DOCKER_HOST.slice(7) : '/var/run/docker.sock'),
        slotsPerInstance: p.slots_per_instance,
        workDir: path.join(config.dataDir, 'provisioner'),
        agentConfig: p.agent,
        log: log.child(`local.${pool.name}`),
      });
      pools.set(pool.name, { scaling, provider });
      continue;
    }
    const masterHost = p.master_host ?? config.host;
    if (/^(127\.|localhost$|0\.0\.0\.0$|::1?$)/.test(masterHost)) {
      log.warn(`resource_pools.${pool.name}.provider.master_host is ${masterHost}: agents on EC2 instances cannot reach that; set master_host to the master's address in the VPC`);
    }
    // Agents trust master_ca_cert, else the master's own certificate (self-signed or its chain).
    const caFile = p.master_ca_cert ?? config.tls?.cert;
    let caPem: string | undefined;
    if (caFile) {
      try {
        caPem = fs.readFileSync(caFile, 'utf8');
      } catch (err) {
        throw new DetError('DET_ERR_CONFIG_INVALID', `resource_pools.${pool.name}.provider.master_ca_cert: cannot read ${caFile}: ${(err as NodeJS.ErrnoException).code}`);
      }
    }
    const provider = new Ec2Provider({
      region: p.region,
      endpoint: p.endpoint,
      clusterId: master.clusterId,
      masterId: master.masterId,
      pool: pool.name,
      imageId: p.image_id,
      securityGroupIds: p.security_group_ids,
      iamInstanceProfileArn: p.iam_instance_profile_arn,
      keyName: p.key_name,
      rootVolumeSizeGb: p.root_volume_size_gb,
      rootDeviceName: p.root_device_name,
      tags: p.tags,
      spotMaxPrice: p.spot_max_price,
      bootConfig: {
        masterHost,
        masterPort: p.master_port ?? master.port,
        resourcePool: pool.name,
        agentToken: master.agentToken,
        ...(caPem ? { tlsCaCertPem: caPem } : {}),
        agent: p.agent,
      },
    });
    pools.set(pool.name, { scaling, provider });
  }
  return pools;
}
