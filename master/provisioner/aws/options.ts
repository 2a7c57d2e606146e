// What the EC2 provider is configured with (the master config maps its `provisioner.aws`
// section to this), and its validation: every problem reported at once, each naming its key.
import type { AgentBootConfig } from '../../../common/userdata';
import { DetError } from '../../../common/errors';
import { validateUserTags } from './tags';

/** The EC2 provider's settings. */
export interface Ec2ProviderOptions {
  /** AWS region, e.g. us-west-2. */
  region: string;
  /** EC2 endpoint URL; default: the region's public endpoint. Set for VPC endpoints and tests. */
  endpoint?: string;
  /** This cluster's id; tagged as det:cluster-id and used to find our instances. */
  clusterId: string;
  /** The launching master's id; tagged as det:master-id (informational). */
  masterId: string;
  /** The resource pool this provider launches for; tagged as det:pool. */
  pool: string;
  /** AMI of the agent (Docker, det-agent with --config-source ec2). */
  imageId: string;
  /** Security groups of the agents; none = the VPC's default group. */
  securityGroupIds: string[];
  /** Instance profile (role) of the agents; default: none. */
  iamInstanceProfileArn?: string;
  /** EC2 key pair for SSH; default: none. */
  keyName?: string;
  /** Root EBS volume size in GiB; default: the AMI's. */
  rootVolumeSizeGb?: number;
  /** Device name of the AMI's root volume, needed to resize it; default /dev/xvda. */
  rootDeviceName?: string;
  /** Extra tags on instances and volumes; keys starting with det: or aws: are reserved. Default: none. */
  tags?: Record<string, string>;
  /** What the agents need to join; rendered into user data. */
  bootConfig: AgentBootConfig;
  /** Spot max price in USD per hour (EC2 takes a decimal string); default: the on-demand price. */
  spotMaxPrice?: string;
}

/** Default root device name (Amazon Linux 2023 and the Deep Learning AMIs built on it). */
export const DEFAULT_ROOT_DEVICE_NAME = '/dev/xvda';

/** Throws DET_ERR_CONFIG_INVALID listing every problem with `opts`. */
export function validateEc2ProviderOptions(opts: Ec2ProviderOptions): void {
  const problems: string[] = [];
  const required = ['region', 'clusterId', 'masterId', 'pool', 'imageId'] as const;
  for (const key of required) {
    if (typeof opts[key] !== 'string' || opts[key].trim() === '') problems.push(`${key}: required`);
  }
  if (opts.endpoint !== undefined && !/^https?:\/\/[^\s]+$/.test(opts.endpoint)) {
    problems.push(`endpoint: "${opts.endpoint}" is not an http(s) URL`);
  }
  if (!Array.isArray(opts.securityGroupIds) || opts.securityGroupIds.some((id) => !/^sg-[0-9a-z]+$/.test(id))) {
    problems.push(`securityGroupIds: must be a list of security group ids (sg-...)`);
  }
  if (opts.rootVolumeSizeGb !== undefined && (!Number.isInteger(opts.rootVolumeSizeGb) || opts.rootVolumeSizeGb < 1 || opts.rootVolumeSizeGb > 65536)) {
    problems.push(`rootVolumeSizeGb: must be an integer from 1 to 65536, got ${opts.rootVolumeSizeGb}`);
  }
  if (opts.spotMaxPrice !== undefined && !/^\d+(\.\d+)?$/.test(opts.spotMaxPrice)) {
    problems.push(`spotMaxPrice: must be a decimal number of USD per hour (e.g. "0.75"), got "${opts.spotMaxPrice}"`);
  }
  if (opts.iamInstanceProfileArn !== undefined && !/^arn:aws[a-z-]*:iam::\d{12}:instance-profile\/.+/.test(opts.iamInstanceProfileArn)) {
    problems.push(`iamInstanceProfileArn: "${opts.iamInstanceProfileArn}" is not an instance profile ARN (arn:aws:iam::ACCOUNT:instance-profile/NAME)`);
  }
  problems.push(...validateUserTags(opts.tags ?? {}).map((p) => `tags: ${p}`));
  if (opts.bootConfig?.resourcePool !== opts.pool) {
    problems.push(`bootConfig.resourcePool: "${opts.bootConfig?.resourcePool}" differs from pool "${opts.pool}": agents would join the wrong pool`);
  }
  if (problems.length > 0) {
    throw new DetError(
      'DET_ERR_CONFIG_INVALID',
      `invalid EC2 provider settings (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n` + problems.map((p) => `  - ${p}`).join('\n'),
    );
  }
}
