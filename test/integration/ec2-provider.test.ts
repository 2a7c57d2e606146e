// The EC2 provider with the real @aws-sdk/client-ec2 against the fake EC2 Query API endpoint
// (test/support/fake-ec2.ts): what RunInstances carries, tag-scoped listing across pages,
// termination, idempotency, error classification and SDK retries. Only 127.0.0.1 is reached:
// the endpoint is always given and IMDS probing is disabled.
import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { DetError } from '../../common/errors';
import { parseAgentUserData, type AgentBootConfig } from '../../common/userdata';
import { Ec2ApiError, Ec2Provider } from '../../master/provisioner/aws/ec2-provider';
import type { Ec2ProviderOptions } from '../../master/provisioner/aws/options';
import { LaunchError, type LaunchRequest } from '../../master/provisioner/types';
import { startFakeEc2, type FakeEc2 } from '../support/fake-ec2';

const CLUSTER = 'c-7f3a';
const POOL = 'gpu';
const SUBNET = 'subnet-0aaa1111bbbb22223';
const PROFILE = 'arn:aws:iam::123456789012:instance-profile/det-agent';
const OUR_TAGS = { 'det:cluster-id': CLUSTER, 'det:pool': POOL, 'det:managed-by': 'determined-aws' };

function bootConfig(over: Partial<AgentBootConfig> = {}): AgentBootConfig {
  return {
    masterHost: 'det-master.internal',
    masterPort: 8090,
    resourcePool: POOL,
    agentToken: 'join-token-s3cret',
    tlsCaCertPem: '-----BEGIN CERTIFICATE-----\nMIIBfakefakefake\n-----END CERTIFICATE-----\n',
    tlsServerName: 'det-master',
    agent: { slot_type: 'cuda', labels: { team: 'vision' } },
    ...over,
  };
}

function options(fake: FakeEc2, over: Partial<Ec2ProviderOptions> = {}): Ec2ProviderOptions {
  return {
    region: 'us-west-2',
    endpoint: fake.endpoint,
    clusterId: CLUSTER,
    masterId: 'master-1',
    pool: POOL,
    imageId: 'ami-0123456789abcdef0',
    securityGroupIds: ['sg-0123456789abcdef0', 'sg-0fedcba9876543210'],
    iamInstanceProfileArn: PROFILE,
    tags: { team: 'ml-platform', 'cost-center': '42' },
    bootConfig: bootConfig(),
    ...over,
  };
}

function launchRequest(over: Partial<LaunchRequest> = {}): LaunchRequest {
  return { pool: POOL, instanceType: 'g5.xlarge', subnetId: SUBNET, spot: false, count: 1, clientToken: randomUUID(), ...over };
}

/** Tags of TagSpecification.N as sent. */
function tagSpec(params: Record<string, string>, n: number): { type: string; tags: Record<string, string> } {
  const tags: Record<string, string> = {};
  for (let i = 1; params[`TagSpecification.${n}.Tag.${i}.Key`] !== undefined; i++) {
    tags[params[`TagSpecification.${n}.Tag.${i}.Key`]] = params[`TagSpecification.${n}.Tag.${i}.Value`];
  }
  return { type: params[`TagSpecification.${n}.ResourceType`], tags };
}

async function launchError(p: Promise<unknown>): Promise<LaunchError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof LaunchError, `expected a LaunchError, got ${err}`);
    return err;
  }
  assert.fail('launch succeeded; expected a LaunchError');
}

describe('EC2 provider against the fake EC2 Query API', function () {
  const env = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_EC2_METADATA_DISABLED: 'true' } as const;
  const cleared = ['AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_EC2', 'AWS_MAX_ATTEMPTS', 'AWS_RETRY_MODE'];
  const saved: Record<string, string | undefined> = {};
  let fake: FakeEc2;
  let providers: Ec2Provider[] = [];
  const provider = (over: Partial<Ec2ProviderOptions> = {}) => {
    const p = new Ec2Provider(options(fake, over));
    providers.push(p);
    return p;
  };

  before(() => {
    for (const k of [...Object.keys(env), ...cleared]) saved[k] = process.env[k];
    Object.assign(process.env, env);
    for (const k of cleared) delete process.env[k];
  });
  after(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  beforeEach(async () => {
    // The fake verifies SigV4 with the test secret and the region's credential scope.
    fake = await startFakeEc2({ region: 'us-west-2', secretAccessKey: 'test' });
  });
  afterEach(async () => {
    for (const p of providers) p.close();
    providers = [];
    await fake.close();
  });

  describe('launch', () => {
    it('sends RunInstances with the AMI, network, IMDSv2, shutdown behaviour, tags, client token and user data', async () => {
      const req = launchRequest({ count: 2 });
      const launched = await provider({ keyName: 'ops', rootVolumeSizeGb: 200 }).launch(req);

      const [call] = fake.calls('RunInstances');
      const p = call.params;
      assert.equal(p.Version, '2016-11-15');
      assert.equal(p.ImageId, 'ami-0123456789abcdef0');
      assert.equal(p.InstanceType, 'g5.xlarge');
      assert.equal(p.MinCount, '1');
      assert.equal(p.MaxCount, '2');
      assert.equal(p.SubnetId, SUBNET);
      assert.equal(p['SecurityGroupId.1'], 'sg-0123456789abcdef0');
      assert.equal(p['SecurityGroupId.2'], 'sg-0fedcba9876543210');
      assert.equal(p['IamInstanceProfile.Arn'], PROFILE);
      assert.equal(p.KeyName, 'ops');
      assert.equal(p['BlockDeviceMapping.1.DeviceName'], '/dev/xvda');
      assert.equal(p['BlockDeviceMapping.1.Ebs.VolumeSize'], '200');
      assert.equal(p['BlockDeviceMapping.1.Ebs.VolumeType'], 'gp3');
      assert.equal(p['BlockDeviceMapping.1.Ebs.DeleteOnTermination'], 'true');
      assert.equal(p['MetadataOptions.HttpTokens'], 'required');
      assert.equal(p['MetadataOptions.HttpPutResponseHopLimit'], '2');
      assert.equal(p['MetadataOptions.HttpEndpoint'], 'enabled');
      assert.equal(p.InstanceInitiatedShutdownBehavior, 'terminate');
      assert.equal(p.ClientToken, req.clientToken);
      assert.equal(p['InstanceMarketOptions.MarketType'], undefined, 'on-demand sends no market options');

      const expectedTags = {
        Name: `det-agent-${POOL}`,
        team: 'ml-platform',
        'cost-center': '42',
        'det:cluster-id': CLUSTER,
        'det:pool': POOL,
        'det:master-id': 'master-1',
        'det:managed-by': 'determined-aws',
      };
      assert.deepEqual(tagSpec(p, 1), { type: 'instance', tags: expectedTags });
      assert.deepEqual(tagSpec(p, 2), { type: 'volume', tags: expectedTags });
      assert.equal(p['TagSpecification.3.ResourceType'], undefined);

      const userData = Buffer.from(p.UserData, 'base64').toString('utf8');
      assert.deepEqual(parseAgentUserData(userData), bootConfig());

      assert.equal(launched.length, 2);
      for (const info of launched) {
        assert.match(info.id, /^i-[0-9a-f]{17}$/);
        assert.deepEqual({ ...info, id: '', launchedAtMs: 0 }, { id: '', pool: POOL, instanceType: 'g5.xlarge', subnetId: SUBNET, state: 'pending', launchedAtMs: 0, spot: false });
        assert.equal(info.launchedAtMs, fake.instance(info.id)!.launchTime.getTime());
      }
      // What EC2 stored is what we asked for.
      assert.deepEqual(fake.instance(launched[0].id)!.volumeTags, expectedTags);
    });

    it('signs with SigV4 for ec2 in the configured region', async () => {
      await provider().launch(launchRequest());
      const auth = fake.calls('RunInstances')[0].authorization ?? '';
      assert.match(auth, /^AWS4-HMAC-SHA256 Credential=test\/\d{8}\/us-west-2\/ec2\/aws4_request, /);
    });

    it('is refused when signed with the wrong secret (the fake verifies SigV4), as an auth error', async () => {
      process.env.AWS_SECRET_ACCESS_KEY = 'not-the-secret';
      try {
        const err = await launchError(provider().launch(launchRequest()));
        assert.deepEqual([err.kind, err.code], ['auth', 'SignatureDoesNotMatch']);
        assert.equal(fake.instances().length, 0);
      } finally {
        process.env.AWS_SECRET_ACCESS_KEY = env.AWS_SECRET_ACCESS_KEY;
      }
    });

    it('asks for a one-time spot instance with the max price when spot', async () => {
      const [info] = await provider({ spotMaxPrice: '0.55' }).launch(launchRequest({ spot: true }));
      const p = fake.calls('RunInstances')[0].params;
      assert.equal(p['InstanceMarketOptions.MarketType'], 'spot');
      assert.equal(p['InstanceMarketOptions.SpotOptions.SpotInstanceType'], 'one-time');
      assert.equal(p['InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior'], 'terminate');
      assert.equal(p['InstanceMarketOptions.SpotOptions.MaxPrice'], '0.55');
      assert.equal(info.spot, true);
    });

    it('leaves out what is not configured: subnet, profile, key, root volume, max price', async () => {
      await provider({ iamInstanceProfileArn: undefined, securityGroupIds: [] }).launch(launchRequest({ subnetId: '', spot: true }));
      const p = fake.calls('RunInstances')[0].params;
      for (const key of Object.keys(p)) {
        assert.doesNotMatch(key, /^(SubnetId|IamInstanceProfile|KeyName|BlockDeviceMapping|SecurityGroupId|InstanceMarketOptions\.SpotOptions\.MaxPrice)/, `unexpected ${key}`);
      }
    });

    it('returns the instances EC2 could start when there is capacity for fewer than asked (MinCount 1)', async () => {
      fake.setCapacity('g5.xlarge', 2);
      const launched = await provider().launch(launchRequest({ count: 3 }));
      assert.equal(launched.length, 2);
      assert.equal(fake.instances().length, 2);
    });

    it('launches once for the same client token (a retried launch returns the same instances)', async () => {
      const p = provider();
      const req = launchRequest({ count: 2 });
      const first = await p.launch(req);
      const second = await p.launch(req);
      assert.equal(fake.calls('RunInstances').length, 2);
      assert.equal(fake.instances().length, 2, 'no second launch');
      assert.deepEqual(second.map((i) => i.id).sort(), first.map((i) => i.id).sort());
      await p.launch(launchRequest({ count: 2 }));
      assert.equal(fake.instances().length, 4, 'a new token launches again');
      const mismatch = await launchError(p.launch({ ...req, count: 3 }));
      assert.deepEqual([mismatch.kind, mismatch.code], ['other', 'IdempotentParameterMismatch']);
    });

    it('classifies a capacity shortage of one type as capacity (other types still launch)', async () => {
      fake.failWith({ action: 'RunInstances', instanceType: 'g5.xlarge', code: 'InsufficientInstanceCapacity' });
      const p = provider();
      const err = await launchError(p.launch(launchRequest()));
      assert.equal(err.kind, 'capacity');
      assert.equal(err.code, 'InsufficientInstanceCapacity');
      assert.match(err.message, /g5\.xlarge/);
      // EC2 answers capacity shortages with HTTP 500, which the SDK's standard mode retries.
      const calls = fake.calls('RunInstances');
      assert.equal(calls.length, 3);
      assert.ok(calls.every((c) => c.status === 500 && c.params.ClientToken === calls[0].params.ClientToken));

      const launched = await p.launch(launchRequest({ instanceType: 'g5.2xlarge' }));
      assert.equal(launched.length, 1);
    });

    it('classifies capacity by market: a spot shortage leaves on-demand launchable', async () => {
      fake.failWith({ action: 'RunInstances', spot: true, code: 'MaxSpotInstanceCountExceeded' });
      const p = provider();
      const err = await launchError(p.launch(launchRequest({ spot: true })));
      assert.deepEqual([err.kind, err.code], ['capacity', 'MaxSpotInstanceCountExceeded']);
      assert.equal((await p.launch(launchRequest())).length, 1);
    });

    it('classifies VcpuLimitExceeded as limit, UnauthorizedOperation as auth, anything else as other', async () => {
      const p = provider();
      const cases: [string, string][] = [
        ['VcpuLimitExceeded', 'limit'],
        ['UnauthorizedOperation', 'auth'],
        ['InvalidAMIID.NotFound', 'other'],
      ];
      for (const [code, kind] of cases) {
        fake.clearErrors();
        fake.failWith({ action: 'RunInstances', code, times: 1 });
        const before = fake.calls('RunInstances').length;
        const err = await launchError(p.launch(launchRequest()));
        assert.deepEqual([err.kind, err.code], [kind, code]);
        assert.equal(fake.calls('RunInstances').length - before, 1, `${code} (HTTP 400) is not retried`);
      }
      assert.equal(fake.instances().length, 0);
    });

    it('tells the operator what to do about an auth error', async () => {
      fake.failWith({ action: 'RunInstances', code: 'UnauthorizedOperation' });
      const err = await launchError(provider().launch(launchRequest()));
      assert.match(err.message, /UnauthorizedOperation/);
      assert.match(err.message, /docs\/iam\/master-policy\.json/);
    });

    it('succeeds after RequestLimitExceeded twice (the SDK retries throttling with the same client token)', async () => {
      fake.failWith({ action: 'RunInstances', code: 'RequestLimitExceeded', times: 2 });
      const launched = await provider().launch(launchRequest());
      assert.equal(launched.length, 1);
      const calls = fake.calls('RunInstances');
      assert.deepEqual(
        calls.map((c) => [c.status, c.errorCode]),
        [
          [503, 'RequestLimitExceeded'],
          [503, 'RequestLimitExceeded'],
          [200, undefined],
        ],
      );
      assert.equal(new Set(calls.map((c) => c.params.ClientToken)).size, 1);
      assert.equal(fake.instances().length, 1);
    });

    it('gives up after 3 throttled attempts and reports it as other', async () => {
      fake.failWith({ action: 'RunInstances', code: 'RequestLimitExceeded' });
      const err = await launchError(provider().launch(launchRequest()));
      assert.deepEqual([err.kind, err.code], ['other', 'RequestLimitExceeded']);
      assert.equal(fake.calls('RunInstances').length, 3);
    });

    it('reports an unreachable endpoint as other with the network error code', async () => {
      const closed = http.createServer();
      await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
      const port = (closed.address() as AddressInfo).port;
      await new Promise<void>((r) => closed.close(() => r()));
      const err = await launchError(provider({ endpoint: `http://127.0.0.1:${port}` }).launch(launchRequest()));
      assert.deepEqual([err.kind, err.code], ['other', 'ECONNREFUSED']);
    });

    it('rejects user data over 16 KiB with DET_ERR_CONFIG_INVALID before any EC2 call', () => {
      const big = bootConfig({ agent: { notes: 'x'.repeat(17 * 1024) } });
      assert.throws(
        () => provider({ bootConfig: big }),
        (err: unknown) => err instanceof DetError && err.code === 'DET_ERR_CONFIG_INVALID' && /16384-byte limit/.test(err.message),
      );
      assert.equal(fake.requests.length, 0);
    });

    it('reports every invalid setting at once, before any EC2 call', () => {
      assert.throws(
        () => provider({ imageId: '', securityGroupIds: ['default'], tags: { 'det:pool': 'x' }, bootConfig: bootConfig({ resourcePool: 'cpu' }) }),
        (err: unknown) =>
          err instanceof DetError &&
          err.code === 'DET_ERR_CONFIG_INVALID' &&
          ['imageId', 'securityGroupIds', 'tags', 'bootConfig.resourcePool'].every((k) => err.message.includes(`- ${k}:`)),
      );
      assert.equal(fake.requests.length, 0);
    });
  });

  describe('list', () => {
    it('pages through DescribeInstances and returns only this cluster and pool, not terminated', async () => {
      fake.setPageSize(10);
      const ours = Array.from({ length: 25 }, (_, i) =>
        fake.addInstance({ tags: { ...OUR_TAGS, Name: `det-agent-${POOL}` }, instanceType: i % 2 ? 'g5.xlarge' : 'g5.2xlarge', spot: i % 3 === 0 }),
      );
      fake.addInstance({ tags: { ...OUR_TAGS }, state: 'terminated' });
      fake.addInstance({ tags: { ...OUR_TAGS, 'det:cluster-id': 'other-cluster' } });
      fake.addInstance({ tags: { ...OUR_TAGS, 'det:pool': 'cpu' } });
      fake.addInstance({ tags: { Name: 'unrelated' } });
      fake.addInstance({});
      // Matches the filters but lacks det:managed-by: not something we launched.
      fake.addInstance({ tags: { 'det:cluster-id': CLUSTER, 'det:pool': POOL } });

      const listed = await provider().list(POOL);

      assert.deepEqual(listed.map((i) => i.id).sort(), ours.map((i) => i.id).sort());
      const calls = fake.calls('DescribeInstances');
      assert.equal(calls.length, 3, '25 instances in pages of 10');
      const first = calls[0].params;
      assert.equal(first['Filter.1.Name'], 'tag:det:cluster-id');
      assert.equal(first['Filter.1.Value.1'], CLUSTER);
      assert.equal(first['Filter.2.Name'], 'tag:det:pool');
      assert.equal(first['Filter.2.Value.1'], POOL);
      assert.equal(first['Filter.3.Name'], 'instance-state-name');
      assert.deepEqual(
        Object.keys(first).filter((k) => k.startsWith('Filter.3.Value.')).map((k) => first[k]).sort(),
        ['pending', 'running', 'shutting-down', 'stopped', 'stopping'],
      );
      assert.equal(first.MaxResults, '1000');
      assert.equal(first.NextToken, undefined);
      assert.ok(calls[1].params.NextToken && calls[2].params.NextToken);
      for (const [i, inst] of ours.entries()) {
        const info = listed.find((l) => l.id === inst.id)!;
        assert.deepEqual(info, {
          id: inst.id,
          pool: POOL,
          instanceType: inst.instanceType,
          subnetId: inst.subnetId,
          state: 'running',
          launchedAtMs: inst.launchTime.getTime(),
          spot: i % 3 === 0,
        });
      }
    });

    it('follows launched instances from pending to running', async () => {
      await fake.close();
      fake = await startFakeEc2({ region: 'us-west-2', secretAccessKey: 'test', runningAfterMs: null });
      const p = provider();
      const [launched] = await p.launch(launchRequest());
      assert.deepEqual((await p.list(POOL)).map((i) => [i.id, i.state]), [[launched.id, 'pending']]);
      fake.markRunning();
      assert.deepEqual((await p.list(POOL)).map((i) => [i.id, i.state]), [[launched.id, 'running']]);
    });

    it('returns nothing for an empty pool', async () => {
      assert.deepEqual(await provider().list(POOL), []);
    });

    it('reports a failed DescribeInstances as an Ec2ApiError', async () => {
      fake.failWith({ action: 'DescribeInstances', code: 'UnauthorizedOperation' });
      await assert.rejects(provider().list(POOL), (err: unknown) => err instanceof Ec2ApiError && err.code === 'UnauthorizedOperation' && err.kind === 'auth');
    });
  });

  describe('terminate', () => {
    it('terminates instances, which stay listed while shutting down and vanish once terminated', async () => {
      await fake.close();
      fake = await startFakeEc2({ region: 'us-west-2', secretAccessKey: 'test', terminatedAfterMs: null });
      const p = provider();
      const launched = await p.launch(launchRequest({ count: 3 }));
      const [a, b, c] = launched.map((i) => i.id);
      await p.terminate([a, b, a]);
      const [call] = fake.calls('TerminateInstances');
      assert.deepEqual([call.params['InstanceId.1'], call.params['InstanceId.2'], call.params['InstanceId.3']], [a, b, undefined]);
      const states = new Map((await p.list(POOL)).map((i) => [i.id, i.state]));
      assert.deepEqual([states.get(a), states.get(b), states.get(c)], ['shutting-down', 'shutting-down', 'running']);
      fake.finishTermination();
      assert.deepEqual((await p.list(POOL)).map((i) => i.id), [c]);
    });

    it('makes no call for an empty list', async () => {
      await provider().terminate([]);
      assert.equal(fake.requests.length, 0);
    });

    it('does not throw for instances already terminated or gone, and still terminates the others', async () => {
      const p = provider();
      const [a, b] = (await p.launch(launchRequest({ count: 2 }))).map((i) => i.id);
      await p.terminate([a]);
      fake.finishTermination();
      await p.terminate([a]); // already terminated
      fake.forget(a); // EC2 no longer describes it
      await p.terminate([a]);
      await p.terminate(['i-0123456789abcdef0', b]);
      assert.equal(fake.instance(b)!.state, 'shutting-down');
      const gone = fake.calls('TerminateInstances').filter((c) => c.errorCode === 'InvalidInstanceID.NotFound');
      assert.equal(gone.length, 3, 'a once forgotten; then the unknown id with b, and alone');
    });

    it('reports other failures as an Ec2ApiError', async () => {
      fake.failWith({ action: 'TerminateInstances', code: 'UnauthorizedOperation' });
      await assert.rejects(provider().terminate(['i-0123456789abcdef0']), (err: unknown) => err instanceof Ec2ApiError && err.kind === 'auth');
    });
  });
});
