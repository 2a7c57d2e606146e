// A fake EC2 endpoint speaking the real EC2 Query API (protocol ec2Query, version 2016-11-15) on
// 127.0.0.1:0, so the real @aws-sdk/client-ec2 serializes, signs, retries, paginates and parses
// against it: form-encoded POSTs (Action=RunInstances&Version=2016-11-15&...), XML responses in
// the EC2 namespace, errors as <Response><Errors><Error>... with EC2's HTTP statuses.
//
// It keeps instances with EC2's state machine: pending -> running (after runningAfterMs, or on
// markRunning) -> shutting-down (TerminateInstances) -> terminated (after terminatedAfterMs, or on
// finishTermination). It honours ClientToken idempotency, Filters (tag:KEY, tag-key,
// instance-state-name, instance-type, instance-id, subnet-id, client-token; * and ? wildcards),
// MaxResults/NextToken pagination (pageSize forces small pages), per-type capacity, and injected
// errors (per action, instance type, market or subnet; N times or forever). It checks SigV4:
// an Authorization header is required and, given the secret key, its signature is verified.
import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

/** XML namespace of EC2 API version 2016-11-15 (the version the SDK speaks). */
export const EC2_XMLNS = 'http://ec2.amazonaws.com/doc/2016-11-15/';
/** The API version the fake accepts. */
export const EC2_API_VERSION = '2016-11-15';

/** An EC2 instance state. */
export type FakeInstanceState = 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated';
const STATE_CODES: Record<FakeInstanceState, number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 };

/** One request the fake received. */
export interface FakeEc2Request {
  action: string;
  /** Decoded form parameters as sent, e.g. "TagSpecification.1.Tag.1.Key" -> "det:pool". */
  params: Record<string, string>;
  /** The Authorization header (SigV4), if any. */
  authorization: string | undefined;
  /** HTTP status the fake answered. */
  status: number;
  /** EC2 error code answered, if any. */
  errorCode?: string;
}

/** One instance the fake keeps. */
export interface FakeInstance {
  id: string;
  reservationId: string;
  imageId: string;
  instanceType: string;
  subnetId: string;
  state: FakeInstanceState;
  /** When the instance entered `state` (ms, the fake's clock). */
  stateSinceMs: number;
  launchTime: Date;
  /** Instance tags. */
  tags: Record<string, string>;
  /** Tags given for the instance's volumes. */
  volumeTags: Record<string, string>;
  clientToken: string;
  spot: boolean;
  securityGroupIds: string[];
  iamInstanceProfileArn?: string;
  keyName?: string;
  /** UserData as sent (base64). */
  userData?: string;
}

/** An injected error. */
export interface FakeEc2ErrorRule {
  action: string;
  code: string;
  /** Default: a message in EC2's style for known codes. */
  message?: string;
  /** Default: EC2's status for the code (500/503 for server errors, else 400). */
  status?: number;
  /** RunInstances only: match only this instance type / market / subnet. */
  instanceType?: string;
  spot?: boolean;
  subnetId?: string;
  /** Answer this many matching requests, then stop matching (default: forever). */
  times?: number;
}

/** How the fake behaves. */
export interface FakeEc2Options {
  /** Region expected in the SigV4 credential scope; default: any. */
  region?: string;
  /** When set, the SigV4 signature is verified with this secret key (SignatureDoesNotMatch otherwise). */
  secretAccessKey?: string;
  /** Most instances per DescribeInstances page, whatever MaxResults says; default: no limit. */
  pageSize?: number;
  /** pending -> running after this long (0: at the next request); null: only on markRunning. Default 0. */
  runningAfterMs?: number | null;
  /** shutting-down -> terminated after this long; null: only on finishTermination. Default 0. */
  terminatedAfterMs?: number | null;
  /** The fake's clock (default Date.now). */
  now?: () => number;
}

/** A running fake EC2 endpoint. */
export interface FakeEc2 {
  /** http://127.0.0.1:PORT, for the SDK's `endpoint`. */
  endpoint: string;
  port: number;
  /** Every request, in order. */
  requests: FakeEc2Request[];
  /** Requests for one action. */
  calls(action: string): FakeEc2Request[];
  /** All instances (terminated ones stay, as on EC2 for a while), in launch order. */
  instances(): FakeInstance[];
  /** One instance, or undefined. */
  instance(id: string): FakeInstance | undefined;
  /** Adds an instance directly (e.g. another cluster's); default state running. */
  addInstance(init?: Partial<Omit<FakeInstance, 'id' | 'reservationId'>>): FakeInstance;
  /** Forgets an instance (EC2 stops describing terminated instances after about an hour). */
  forget(id: string): void;
  /** Injects an error; returns the rule (its `times` counts down). */
  failWith(rule: FakeEc2ErrorRule): FakeEc2ErrorRule;
  /** Removes all injected errors. */
  clearErrors(): void;
  /** Instances of `instanceType` EC2 can still start (undefined: unlimited). */
  setCapacity(instanceType: string, count: number | undefined): void;
  /** pending -> running now (all pending instances, or `ids`). */
  markRunning(ids?: string[]): void;
  /** shutting-down -> terminated now (all, or `ids`). */
  finishTermination(ids?: string[]): void;
  /** Sets an instance's state (e.g. stopped, or terminated by a spot interruption). */
  setState(id: string, state: FakeInstanceState): void;
  /** Changes the forced page size (undefined: none). */
  setPageSize(pageSize: number | undefined): void;
  /** Stops the server; calling it twice is harmless. */
  close(): Promise<void>;
}

/** An EC2 error the handlers throw; answered as <Response><Errors>. */
class Ec2Fault extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = statusFor(code),
  ) {
    super(message);
  }
}

// EC2 answers server-side errors, capacity shortages included, with 5xx (errors-overview.html:
// "Server error codes"); throttling with 503.
const SERVER_CODES = new Set([
  'InsufficientAddressCapacity',
  'InsufficientCapacity',
  'InsufficientInstanceCapacity',
  'InsufficientHostCapacity',
  'InsufficientReservedInstanceCapacity',
  'InternalError',
  'InternalFailure',
  'ServiceUnavailable',
  'Unavailable',
]);
function statusFor(code: string): number {
  if (code === 'RequestLimitExceeded') return 503;
  if (code === 'AuthFailure') return 401;
  if (code === 'SignatureDoesNotMatch') return 403;
  return SERVER_CODES.has(code) ? 500 : 400;
}

function defaultMessage(code: string, params: Record<string, string>): string {
  const type = params.InstanceType ?? 'm1.small';
  switch (code) {
    case 'InsufficientInstanceCapacity':
      return `We currently do not have sufficient ${type} capacity in the Availability Zone you requested (us-west-2a). Our system will be working on provisioning additional capacity. You can currently get ${type} capacity by not specifying an Availability Zone in your request or choosing us-west-2b, us-west-2c.`;
    case 'VcpuLimitExceeded':
      return 'You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance bucket that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.';
    case 'RequestLimitExceeded':
      return 'Request limit exceeded.';
    case 'UnauthorizedOperation':
      return 'You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/det-master/i-0abc is not authorized to perform: ec2:RunInstances';
    case 'MaxSpotInstanceCountExceeded':
      return 'Max spot instance count exceeded';
    default:
      return `${code} (injected by the fake EC2)`;
  }
}

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
const el = (name: string, content: string) => `<${name}>${content}</${name}>`;
const text = (name: string, value: string | number) => el(name, xmlEscape(String(value)));
const items = (name: string, entries: string[]) => (entries.length === 0 ? '' : el(name, entries.map((e) => el('item', e)).join('')));

/** Values of "Prefix.1", "Prefix.2", ... in order. */
function listParam(params: Record<string, string>, prefix: string): string[] {
  const out: string[] = [];
  for (let i = 1; params[`${prefix}.${i}`] !== undefined; i++) out.push(params[`${prefix}.${i}`]);
  return out;
}

/** Tags of "Prefix.Tag.N.Key/Value". */
function tagParams(params: Record<string, string>, prefix: string): Record<string, string> {
  const tags: Record<string, string> = {};
  for (let i = 1; params[`${prefix}.Tag.${i}.Key`] !== undefined; i++) tags[params[`${prefix}.Tag.${i}.Key`]] = params[`${prefix}.Tag.${i}.Value`] ?? '';
  return tags;
}

/** DescribeInstances filters the fake supports besides tag:KEY: the instance's values for each. */
const FILTERS: Record<string, (inst: FakeInstance) => string[]> = {
  'tag-key': (i) => Object.keys(i.tags),
  'instance-state-name': (i) => [i.state],
  'instance-type': (i) => [i.instanceType],
  'instance-id': (i) => [i.id],
  'subnet-id': (i) => [i.subnetId],
  'client-token': (i) => [i.clientToken],
  'instance-lifecycle': (i) => (i.spot ? ['spot'] : []),
};

/** EC2 filter value match: * any run, ? one character. */
function globMatch(pattern: string, value: string): boolean {
  const re = new RegExp('^' + pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$', 's');
  return re.test(value);
}

const sha256Hex = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();

/** Verifies a SigV4 signature of a POST to "/" (what the SDK sends for ec2Query). */
function verifySigV4(req: http.IncomingMessage, body: string, secret: string, signedHeaders: string, scope: string, signature: string): boolean {
  const names = signedHeaders.split(';');
  const canonicalHeaders = names.map((n) => `${n}:${String(req.headers[n] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
  const url = new URL(req.url ?? '/', 'http://x');
  const query = [...url.searchParams].map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).sort().join('&');
  const payloadHash = String(req.headers['x-amz-content-sha256'] ?? sha256Hex(body));
  const canonicalRequest = [req.method, url.pathname, query, canonicalHeaders, signedHeaders, payloadHash].join('\n');
  const amzDate = String(req.headers['x-amz-date'] ?? '');
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const [date, region, service] = scope.split('/');
  const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), 'aws4_request');
  return createHmac('sha256', key).update(stringToSign).digest('hex') === signature;
}

/** Starts a fake EC2 endpoint on 127.0.0.1 (any free port). */
export async function startFakeEc2(opts: FakeEc2Options = {}): Promise<FakeEc2> {
  const now = opts.now ?? Date.now;
  const runningAfterMs = opts.runningAfterMs === undefined ? 0 : opts.runningAfterMs;
  const terminatedAfterMs = opts.terminatedAfterMs === undefined ? 0 : opts.terminatedAfterMs;
  let pageSize = opts.pageSize;
  const requests: FakeEc2Request[] = [];
  const byId = new Map<string, FakeInstance>();
  const rules: FakeEc2ErrorRule[] = [];
  const capacity = new Map<string, number>();
  /** ClientToken -> what the first successful RunInstances asked for and got. */
  const tokens = new Map<string, { fingerprint: string; reservationId: string; ids: string[] }>();

  const newId = (prefix: string) => `${prefix}-${randomBytes(9).toString('hex').slice(0, 17)}`;

  const setState = (inst: FakeInstance, state: FakeInstanceState) => {
    inst.state = state;
    inst.stateSinceMs = now();
  };
  // The state machine advances lazily, when a request looks at the instances.
  const advance = () => {
    const t = now();
    for (const inst of byId.values()) {
      if (inst.state === 'pending' && runningAfterMs !== null && t - inst.stateSinceMs >= runningAfterMs) setState(inst, 'running');
      else if (inst.state === 'shutting-down' && terminatedAfterMs !== null && t - inst.stateSinceMs >= terminatedAfterMs) setState(inst, 'terminated');
    }
  };

  const instanceXml = (inst: FakeInstance) =>
    [
      text('instanceId', inst.id),
      text('imageId', inst.imageId),
      el('instanceState', text('code', STATE_CODES[inst.state]) + text('name', inst.state)),
      text('privateDnsName', `ip-10-0-${inst.id.charCodeAt(5) % 250}-${inst.id.charCodeAt(6) % 250}.ec2.internal`),
      text('amiLaunchIndex', 0),
      text('instanceType', inst.instanceType),
      text('launchTime', inst.launchTime.toISOString()),
      el('placement', text('availabilityZone', 'us-west-2a') + text('tenancy', 'default')),
      text('subnetId', inst.subnetId),
      text('vpcId', 'vpc-0fake0000000000001'),
      ...(inst.keyName ? [text('keyName', inst.keyName)] : []),
      text('clientToken', inst.clientToken),
      ...(inst.spot ? [text('instanceLifecycle', 'spot'), text('spotInstanceRequestId', `sir-${inst.id.slice(2, 10)}`)] : []),
      items('groupSet', inst.securityGroupIds.map((g) => text('groupId', g))),
      ...(inst.iamInstanceProfileArn ? [el('iamInstanceProfile', text('arn', inst.iamInstanceProfileArn) + text('id', 'AIPAFAKE'))] : []),
      items('tagSet', Object.entries(inst.tags).map(([k, v]) => text('key', k) + text('value', v))),
    ].join('');

  const response = (action: string, body: string) =>
    `<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="${EC2_XMLNS}">${text('requestId', randomUUID())}${body}</${action}Response>`;

  const matchingRule = (action: string, params: Record<string, string>) =>
    rules.find(
      (r) =>
        r.action === action &&
        (r.times === undefined || r.times > 0) &&
        (r.instanceType === undefined || r.instanceType === params.InstanceType) &&
        (r.spot === undefined || r.spot === (params['InstanceMarketOptions.MarketType'] === 'spot')) &&
        (r.subnetId === undefined || r.subnetId === params.SubnetId),
    );

  const runInstances = (params: Record<string, string>): string => {
    const imageId = params.ImageId;
    if (!imageId) throw new Ec2Fault('MissingParameter', 'The request must contain the parameter ImageId');
    const min = Number(params.MinCount);
    const max = Number(params.MaxCount);
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max < min) {
      throw new Ec2Fault('InvalidParameterValue', `Invalid MinCount (${params.MinCount}) / MaxCount (${params.MaxCount}): both must be integers >= 1 and MinCount <= MaxCount`);
    }
    const token = params.ClientToken ?? '';
    if (token.length > 64) throw new Ec2Fault('InvalidParameterValue', 'The client token must be at most 64 ASCII characters');
    if (params.UserData !== undefined) {
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(params.UserData)) throw new Ec2Fault('InvalidParameterValue', 'Invalid BASE64 encoding of user data.');
      if (Buffer.from(params.UserData, 'base64').length > 16384) throw new Ec2Fault('InvalidParameterValue', 'User data is limited to 16384 bytes');
    }
    // Same token and same parameters: the first launch's instances, no new launch.
    const { ClientToken: _token, ...rest } = params;
    const fingerprint = JSON.stringify(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1)));
    const seen = token !== '' ? tokens.get(token) : undefined;
    if (seen) {
      if (seen.fingerprint !== fingerprint) {
        throw new Ec2Fault('IdempotentParameterMismatch', 'Arguments on this idempotent request are inconsistent with arguments used in previous request(s).');
      }
      return runResponse(seen.reservationId, seen.ids.map((id) => byId.get(id)).filter((i): i is FakeInstance => i !== undefined));
    }
    const instanceType = params.InstanceType ?? 'm1.small';
    const left = capacity.get(instanceType);
    if (left !== undefined && left < min) throw new Ec2Fault('InsufficientInstanceCapacity', defaultMessage('InsufficientInstanceCapacity', params));
    const count = left === undefined ? max : Math.min(max, left);
    if (left !== undefined) capacity.set(instanceType, left - count);

    let instanceTags: Record<string, string> = {};
    let volumeTags: Record<string, string> = {};
    for (let i = 1; params[`TagSpecification.${i}.ResourceType`] !== undefined; i++) {
      const type = params[`TagSpecification.${i}.ResourceType`];
      const tags = tagParams(params, `TagSpecification.${i}`);
      if (type === 'instance') instanceTags = { ...instanceTags, ...tags };
      else if (type === 'volume') volumeTags = { ...volumeTags, ...tags };
      else if (!['network-interface', 'spot-instances-request', 'elastic-gpu'].includes(type)) {
        throw new Ec2Fault('InvalidParameterValue', `'${type}' is not a valid taggable resource type for this operation.`);
      }
    }
    const reservationId = newId('r');
    const launched: FakeInstance[] = [];
    for (let i = 0; i < count; i++) {
      const inst: FakeInstance = {
        id: newId('i'),
        reservationId,
        imageId,
        instanceType,
        subnetId: params.SubnetId ?? 'subnet-0fakedefault00001',
        state: 'pending',
        stateSinceMs: now(),
        launchTime: new Date(Math.floor(now() / 1000) * 1000),
        tags: { ...instanceTags },
        volumeTags: { ...volumeTags },
        clientToken: token,
        spot: params['InstanceMarketOptions.MarketType'] === 'spot',
        securityGroupIds: listParam(params, 'SecurityGroupId'),
        ...(params['IamInstanceProfile.Arn'] ? { iamInstanceProfileArn: params['IamInstanceProfile.Arn'] } : {}),
        ...(params.KeyName ? { keyName: params.KeyName } : {}),
        ...(params.UserData !== undefined ? { userData: params.UserData } : {}),
      };
      byId.set(inst.id, inst);
      launched.push(inst);
    }
    if (token !== '') tokens.set(token, { fingerprint, reservationId, ids: launched.map((i) => i.id) });
    return runResponse(reservationId, launched);
  };

  const runResponse = (reservationId: string, instances: FakeInstance[]) =>
    response('RunInstances', text('reservationId', reservationId) + text('ownerId', '123456789012') + items('instancesSet', instances.map(instanceXml)));

  const describeInstances = (params: Record<string, string>): string => {
    const ids = listParam(params, 'InstanceId');
    const maxResults = params.MaxResults !== undefined ? Number(params.MaxResults) : undefined;
    if (maxResults !== undefined && ids.length > 0) {
      throw new Ec2Fault('InvalidParameterCombination', 'The parameter instancesSet cannot be used with the parameter maxResults');
    }
    if (maxResults !== undefined && (!Number.isInteger(maxResults) || maxResults < 5 || maxResults > 1000)) {
      throw new Ec2Fault('InvalidParameterValue', `Value ( ${params.MaxResults} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.`);
    }
    const missing = ids.filter((id) => !byId.has(id));
    if (missing.length > 0) throw notFound(missing);

    const filters: { name: string; values: string[] }[] = [];
    for (let i = 1; params[`Filter.${i}.Name`] !== undefined; i++) filters.push({ name: params[`Filter.${i}.Name`], values: listParam(params, `Filter.${i}.Value`) });
    for (const f of filters) {
      if (!f.name.startsWith('tag:') && !(f.name in FILTERS)) throw new Ec2Fault('InvalidParameterValue', `The filter '${f.name}' is invalid`);
    }
    const field = (inst: FakeInstance, name: string): string[] =>
      name.startsWith('tag:') ? (name.slice(4) in inst.tags ? [inst.tags[name.slice(4)]] : []) : FILTERS[name](inst);
    const matching = [...byId.values()].filter(
      (inst) => (ids.length === 0 || ids.includes(inst.id)) && filters.every((f) => field(inst, f.name).some((v) => f.values.some((p) => globMatch(p, v)))),
    );

    // NextToken: the offset, bound to the query it pages through.
    const query = JSON.stringify(Object.entries(params).filter(([k]) => k !== 'NextToken' && k !== 'MaxResults').sort(([a], [b]) => (a < b ? -1 : 1)));
    let offset = 0;
    if (params.NextToken !== undefined) {
      let decoded: { o?: unknown; q?: unknown } = {};
      try {
        decoded = JSON.parse(Buffer.from(params.NextToken, 'base64url').toString('utf8'));
      } catch {
        /* reported below */
      }
      if (typeof decoded.o !== 'number' || decoded.q !== sha256Hex(query)) throw new Ec2Fault('InvalidParameterValue', `Invalid value '${params.NextToken}' for nextToken`);
      offset = decoded.o;
    }
    const size = Math.min(maxResults ?? Infinity, pageSize ?? Infinity);
    const page = matching.slice(offset, offset + size);
    const next = offset + page.length < matching.length ? Buffer.from(JSON.stringify({ o: offset + page.length, q: sha256Hex(query) })).toString('base64url') : undefined;

    // Consecutive instances of one reservation form one reservationSet item.
    const groups: FakeInstance[][] = [];
    for (const inst of page) {
      const last = groups[groups.length - 1];
      if (last && last[0].reservationId === inst.reservationId) last.push(inst);
      else groups.push([inst]);
    }
    const reservations = groups.map((g) => text('reservationId', g[0].reservationId) + text('ownerId', '123456789012') + items('instancesSet', g.map(instanceXml)));
    return response('DescribeInstances', items('reservationSet', reservations) + (next !== undefined ? text('nextToken', next) : ''));
  };

  const notFound = (ids: string[]) =>
    new Ec2Fault(
      'InvalidInstanceID.NotFound',
      ids.length === 1 ? `The instance ID '${ids[0]}' does not exist` : `The instance IDs '${ids.join(', ')}' do not exist`,
    );

  const terminateInstances = (params: Record<string, string>): string => {
    const ids = listParam(params, 'InstanceId');
    if (ids.length === 0) throw new Ec2Fault('MissingParameter', 'The request must contain the parameter InstanceId');
    const malformed = ids.find((id) => !/^i-[0-9a-f]{8}([0-9a-f]{9})?$/.test(id));
    if (malformed !== undefined) throw new Ec2Fault('InvalidInstanceID.Malformed', `Invalid id: "${malformed}"`);
    const missing = ids.filter((id) => !byId.has(id));
    if (missing.length > 0) throw notFound(missing);
    const changes = ids.map((id) => {
      const inst = byId.get(id)!;
      const previous = inst.state;
      if (previous !== 'shutting-down' && previous !== 'terminated') setState(inst, 'shutting-down');
      return (
        text('instanceId', id) +
        el('currentState', text('code', STATE_CODES[inst.state]) + text('name', inst.state)) +
        el('previousState', text('code', STATE_CODES[previous]) + text('name', previous))
      );
    });
    return response('TerminateInstances', items('instancesSet', changes));
  };

  const handlers: Record<string, (params: Record<string, string>) => string> = {
    RunInstances: runInstances,
    DescribeInstances: describeInstances,
    TerminateInstances: terminateInstances,
  };

  const checkAuth = (req: http.IncomingMessage, body: string) => {
    const auth = req.headers.authorization;
    if (auth === undefined) throw new Ec2Fault('AuthFailure', 'AWS was not able to validate the provided access credentials');
    const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8}\/([a-z0-9-]+)\/([a-z0-9]+)\/aws4_request), SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$/.exec(auth);
    if (!m) throw new Ec2Fault('AuthFailure', 'AWS was not able to validate the provided access credentials');
    const [, , scope, region, service, signedHeaders, signature] = m;
    if (service !== 'ec2') throw new Ec2Fault('AuthFailure', `Credential should be scoped to correct service: 'ec2', not '${service}'.`);
    if (opts.region !== undefined && region !== opts.region) {
      throw new Ec2Fault('AuthFailure', `Credential should be scoped to a valid region, not '${region}'.`);
    }
    if (opts.secretAccessKey !== undefined && !verifySigV4(req, body, opts.secretAccessKey, signedHeaders, scope, signature)) {
      throw new Ec2Fault('SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.');
    }
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const params = Object.fromEntries(new URLSearchParams(body));
      const record: FakeEc2Request = { action: params.Action ?? '', params, authorization: req.headers.authorization, status: 200 };
      requests.push(record);
      let status = 200;
      let xml: string;
      try {
        if (req.method !== 'POST') throw new Ec2Fault('InvalidAction', `The fake EC2 takes POST, not ${req.method}`);
        checkAuth(req, body);
        if (params.Version !== EC2_API_VERSION) throw new Ec2Fault('InvalidParameterValue', `Version '${params.Version}' is not supported; the fake speaks ${EC2_API_VERSION}`);
        const handler = handlers[params.Action ?? ''];
        if (!handler) throw new Ec2Fault('InvalidAction', `The action ${params.Action} is not valid for this web service.`);
        const rule = matchingRule(params.Action, params);
        if (rule) {
          if (rule.times !== undefined) rule.times -= 1;
          throw new Ec2Fault(rule.code, rule.message ?? defaultMessage(rule.code, params), rule.status ?? statusFor(rule.code));
        }
        advance();
        xml = handler(params);
      } catch (err) {
        const fault = err instanceof Ec2Fault ? err : new Ec2Fault('InternalError', `fake EC2 bug: ${(err as Error).message}`);
        status = fault.status;
        record.errorCode = fault.code;
        xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>${text('Code', fault.code)}${text('Message', fault.message)}</Error></Errors>${text('RequestID', randomUUID())}</Response>`;
      }
      record.status = status;
      res.writeHead(status, { 'Content-Type': 'text/xml;charset=UTF-8', 'Content-Length': Buffer.byteLength(xml) });
      res.end(xml);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;

  const pick = (ids: string[] | undefined, state: FakeInstanceState) =>
    (ids ?? [...byId.keys()]).map((id) => byId.get(id)).filter((i): i is FakeInstance => i !== undefined && i.state === state);

  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    requests,
    calls: (action) => requests.filter((r) => r.action === action),
    instances: () => [...byId.values()],
    instance: (id) => byId.get(id),
    addInstance(init = {}) {
      const inst: FakeInstance = {
        imageId: 'ami-0fake0000000000001',
        instanceType: 'm5.large',
        subnetId: 'subnet-0fakedefault00001',
        state: 'running',
        stateSinceMs: now(),
        launchTime: new Date(Math.floor(now() / 1000) * 1000),
        tags: {},
        volumeTags: {},
        clientToken: '',
        spot: false,
        securityGroupIds: [],
        ...init,
        id: newId('i'),
        reservationId: newId('r'),
      };
      byId.set(inst.id, inst);
      return inst;
    },
    forget: (id) => void byId.delete(id),
    failWith(rule) {
      rules.push(rule);
      return rule;
    },
    clearErrors: () => void rules.splice(0),
    setCapacity: (type, count) => void (count === undefined ? capacity.delete(type) : capacity.set(type, count)),
    markRunning: (ids) => pick(ids, 'pending').forEach((i) => setState(i, 'running')),
    finishTermination: (ids) => pick(ids, 'shutting-down').forEach((i) => setState(i, 'terminated')),
    setState(id, state) {
      const inst = byId.get(id);
      if (!inst) throw new Error(`fake EC2 has no instance ${id}`);
      setState(inst, state);
    },
    setPageSize: (size) => void (pageSize = size),
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}
