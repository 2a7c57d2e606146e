// The EC2 Provider: launches agent instances with RunInstances, finds them by their tags with
// DescribeInstances, and terminates them. Credentials come from the SDK's default chain (env,
// shared config, the master's instance role); throttling is retried by the SDK's standard retry
// mode, everything else is reported to the caller, classified (launch-errors.ts).
import {
  EC2Client,
  RunInstancesCommand,
  TerminateInstancesCommand,
  paginateDescribeInstances,
  type DescribeInstancesCommandInput,
} from '@aws-sdk/client-ec2';
import { DetError } from '../../../common/errors';
import { renderAgentUserData } from '../../../common/userdata';
import { classifyEc2Error } from '../launch-errors';
import { LaunchError, type InstanceInfo, type LaunchErrorKind, type LaunchRequest, type Provider } from '../types';
import { LIVE_STATES, toInstanceInfo } from './instance-info';
import { validateEc2ProviderOptions, type Ec2ProviderOptions } from './options';
import { buildRunInstancesInput } from './run-params';
import { TAG_CLUSTER_ID, TAG_POOL, isOurInstance } from './tags';

/** Attempts per EC2 call (first try + retries of throttling and transient errors). */
export const EC2_MAX_ATTEMPTS = 3;
/** DescribeInstances page size (EC2's maximum). */
const DESCRIBE_PAGE_SIZE = 1000;

/** A failed EC2 call other than a launch (DescribeInstances, TerminateInstances). */
export class Ec2ApiError extends Error {
  constructor(
    /** EC2 error code (e.g. UnauthorizedOperation) or the network error code. */
    readonly code: string,
    /** Same classification as launches: auth needs an operator; other may pass on a later try. */
    readonly kind: LaunchErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'Ec2ApiError';
  }
}

/** The EC2 error code and message of anything the SDK threw (service error, network error, credentials). */
export function ec2ErrorDetails(err: unknown): { code: string; message: string } {
  const e = err as { name?: string; Code?: string; code?: unknown; message?: string; $metadata?: { httpStatusCode?: number } };
  const code =
    e?.Code ?? // service errors carry EC2's <Code> (their `name` too, modelled or not)
    (e?.$metadata?.httpStatusCode !== undefined ? e?.name : undefined) ??
    (typeof e?.code === 'string' ? e.code : undefined) ?? // Node network errors: ECONNREFUSED, ENOTFOUND, ...
    e?.name ??
    'Unknown';
  return { code, message: e?.message ?? String(err) };
}

const ADVICE: Record<LaunchErrorKind, string> = {
  capacity: 'EC2 has no capacity for this offering now; the provisioner falls back to the next instance type, subnet or market',
  limit: "an account quota is reached: raise the vCPU quota of this instance family in Service Quotas (on-demand and spot have separate quotas) or lower the pool's max_instances",
  auth: "the master's AWS credentials may not launch agents: attach docs/iam/master-policy.json to its role and check the AMI, subnet and instance profile are usable",
  other: 'the provisioner retries with backoff; if it persists, act on the message (for network errors check the region, the endpoint and the route to EC2)',
};

/** Provider of agent instances on EC2 for one resource pool. */
export class Ec2Provider implements Provider {
  readonly type = 'aws';
  private readonly opts: Ec2ProviderOptions;
  private readonly client: EC2Client;
  private readonly userDataBase64: string;

  /** Validates the settings and renders the user data: DET_ERR_CONFIG_INVALID before any EC2 call. */
  constructor(opts: Ec2ProviderOptions) {
    validateEc2ProviderOptions(opts);
    this.opts = { ...opts, securityGroupIds: [...opts.securityGroupIds], tags: { ...(opts.tags ?? {}) } };
    // EC2's 16 KiB limit applies to the raw text, which renderAgentUserData checks.
    this.userDataBase64 = Buffer.from(renderAgentUserData(opts.bootConfig), 'utf8').toString('base64');
    this.client = new EC2Client({
      region: opts.region,
      ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
      maxAttempts: EC2_MAX_ATTEMPTS,
      // A stalled connection must fail (and be retried) rather than freeze the pool's provisioner.
      requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000 },
    });
  }

  /** Launches up to req.count instances (at least one, or LaunchError); returns those EC2 started. */
  async launch(req: LaunchRequest): Promise<InstanceInfo[]> {
    if (req.pool !== this.opts.pool) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `the EC2 provider of pool "${this.opts.pool}" was asked to launch for pool "${req.pool}"`);
    }
    if (!Number.isInteger(req.count) || req.count < 1) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `launch count must be a positive integer, got ${req.count}`);
    }
    if (!/^[\x20-\x7e]{1,64}$/.test(req.clientToken)) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `client token must be 1 to 64 printable ASCII characters, got "${req.clientToken}"`);
    }
    const input = buildRunInstancesInput(this.opts, req, this.userDataBase64);
    const what = `RunInstances of ${req.count} ${req.instanceType} (${req.spot ? 'spot' : 'on-demand'}) in ${req.subnetId || 'the default subnet'}`;
    let instances;
    try {
      instances = (await this.client.send(new RunInstancesCommand(input))).Instances ?? [];
    } catch (err) {
      const { code, message } = ec2ErrorDetails(err);
      const kind = classifyEc2Error(code);
      throw new LaunchError(kind, code, `${what} failed: ${code}: ${message} (${ADVICE[kind]})`);
    }
    if (instances.length === 0) {
      throw new LaunchError('other', 'NoInstancesLaunched', `${what} succeeded but returned no instances`);
    }
    const nowMs = Date.now();
    return instances.map((i) => toInstanceInfo(i, req.pool, { instanceType: req.instanceType, subnetId: req.subnetId, spot: req.spot, nowMs }));
  }

  /** This cluster's instances of `pool` that are not terminated (only those carrying our tags). */
  async list(pool: string): Promise<InstanceInfo[]> {
    // A fresh input per call: the paginator writes NextToken and MaxResults into it.
    const input: DescribeInstancesCommandInput = {
      Filters: [
        { Name: `tag:${TAG_CLUSTER_ID}`, Values: [this.opts.clusterId] },
        { Name: `tag:${TAG_POOL}`, Values: [pool] },
        { Name: 'instance-state-name', Values: [...LIVE_STATES] },
      ],
    };
    const found = new Map<string, InstanceInfo>();
    try {
      const pages = paginateDescribeInstances({ client: this.client, pageSize: DESCRIBE_PAGE_SIZE, stopOnSameToken: true }, input);
      for await (const page of pages) {
        for (const reservation of page.Reservations ?? []) {
          for (const inst of reservation.Instances ?? []) {
            // The filters should already have done this; we act only on instances we tagged.
            if (!inst.InstanceId || !isOurInstance(inst.Tags, this.opts.clusterId, pool)) continue;
            const info = toInstanceInfo(inst, pool);
            if (info.state !== 'terminated') found.set(info.id, info);
          }
        }
      }
    } catch (err) {
      throw this.apiError('DescribeInstances', err);
    }
    return [...found.values()];
  }

  /** Terminates `ids`; ids EC2 no longer knows count as terminated. */
  async terminate(ids: string[]): Promise<void> {
    const unique = [...new Set(ids)];
    if (unique.length === 0) return;
    try {
      await this.client.send(new TerminateInstancesCommand({ InstanceIds: unique }));
    } catch (err) {
      if (ec2ErrorDetails(err).code !== 'InvalidInstanceID.NotFound') throw this.apiError('TerminateInstances', err);
      // EC2 rejects the whole call when any id is unknown (gone for over an hour, or never
      // existed); terminate the rest one by one so one stale id cannot pin the others.
      if (unique.length === 1) return;
      for (const id of unique) await this.terminate([id]);
    }
  }

  /** Releases the SDK's sockets; the provider is unusable afterwards. Calling it twice is harmless. */
  close(): void {
    this.client.destroy();
  }

  private apiError(action: string, err: unknown): Ec2ApiError {
    const { code, message } = ec2ErrorDetails(err);
    const kind = classifyEc2Error(code);
    const advice = kind === 'auth' ? ` (${ADVICE.auth})` : '';
    return new Ec2ApiError(code, kind, `EC2 ${action} failed: ${code}: ${message}${advice}`, { cause: err });
  }
}
