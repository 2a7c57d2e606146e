// The RunInstances request for a launch, as a pure function of the provider's settings and the
// request, so what we ask EC2 for is readable in one place.
import type { RunInstancesCommandInput } from '@aws-sdk/client-ec2';
import type { LaunchRequest } from '../types';
import { DEFAULT_ROOT_DEVICE_NAME, type Ec2ProviderOptions } from './options';
import { agentTags } from './tags';

/**
 * RunInstances input for `req`. `userDataBase64` is the rendered agent boot config, base64-encoded
 * (the SDK sends UserData as given).
 *
 * MinCount is 1 and MaxCount is req.count: when a type is short of capacity EC2 launches what it
 * can instead of failing the whole call (MinCount = count would), and the decider launches the
 * remainder, possibly elsewhere, on its next pass. The caller returns what EC2 launched.
 */
export function buildRunInstancesInput(opts: Ec2ProviderOptions, req: LaunchRequest, userDataBase64: string): RunInstancesCommandInput {
  const tags = agentTags({ clusterId: opts.clusterId, masterId: opts.masterId, pool: req.pool }, opts.tags);
  return {
    ImageId: opts.imageId,
    InstanceType: req.instanceType as RunInstancesCommandInput['InstanceType'],
    MinCount: 1,
    MaxCount: req.count,
    ...(req.subnetId !== '' ? { SubnetId: req.subnetId } : {}),
    ...(opts.securityGroupIds.length > 0 ? { SecurityGroupIds: [...opts.securityGroupIds] } : {}),
    ...(opts.iamInstanceProfileArn ? { IamInstanceProfile: { Arn: opts.iamInstanceProfileArn } } : {}),
    ...(opts.keyName ? { KeyName: opts.keyName } : {}),
    ...(opts.rootVolumeSizeGb !== undefined
      ? {
          BlockDeviceMappings: [
            {
              DeviceName: opts.rootDeviceName ?? DEFAULT_ROOT_DEVICE_NAME,
              Ebs: { VolumeSize: opts.rootVolumeSizeGb, VolumeType: 'gp3', DeleteOnTermination: true },
            },
          ],
        }
      : {}),
    // IMDSv2 only; hop limit 2 so containers on the Docker bridge can still reach IMDS.
    MetadataOptions: { HttpTokens: 'required', HttpPutResponseHopLimit: 2, HttpEndpoint: 'enabled' },
    // An agent that shuts its machine down (e.g. after a fatal error) must not leave a stopped,
    // still-billed volume behind.
    InstanceInitiatedShutdownBehavior: 'terminate',
    TagSpecifications: [
      { ResourceType: 'instance', Tags: tags },
      { ResourceType: 'volume', Tags: tags.map((t) => ({ ...t })) },
    ],
    ClientToken: req.clientToken,
    ...(req.spot
      ? {
          InstanceMarketOptions: {
            MarketType: 'spot',
            SpotOptions: {
              SpotInstanceType: 'one-time',
              InstanceInterruptionBehavior: 'terminate',
              ...(opts.spotMaxPrice !== undefined ? { MaxPrice: opts.spotMaxPrice } : {}),
            },
          },
        }
      : {}),
    UserData: userDataBase64,
  };
}
