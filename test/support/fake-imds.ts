// A fake EC2 instance metadata service (IMDSv2 only) on 127.0.0.1: a session
// token from PUT /latest/api/token (X-aws-ec2-metadata-token-ttl-seconds,
// 1..21600), then GETs with X-aws-ec2-metadata-token for instance-id,
// instance-type, user-data (404 when unset) and spot/instance-action (404
// until a notice is set). Missing, unknown or expired tokens get 401, as on
// EC2. It records every request, and can be told to fail the next N requests
// with 500 or to expire its tokens.
import { randomBytes } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request as the fake saw it. */
export interface ImdsRequest {
  method: string;
  path: string;
  /** The token header sent, if any. */
  token: string | undefined;
  /** The TTL header sent, if any. */
  ttl: string | undefined;
  /** The status answered. */
  status: number;
}

/** Options of the fake. */
export interface FakeImdsOptions {
  instanceId?: string;
  instanceType?: string;
  /** Undefined: the instance has no user data (404). */
  userData?: string;
}

/** The fake IMDS. */
export class FakeImds {
  /** Every request, in arrival order. */
  readonly requests: ImdsRequest[] = [];
  instanceId: string;
  instanceType: string;
  /** Undefined: 404, like an instance launched without user data. */
  userData: string | undefined;
  /** The spot/instance-action document; undefined: 404 (no notice). */
  spotNotice: { action: string; time: string } | undefined;
  /** Raw body for spot/instance-action, overriding spotNotice (to test malformed answers). */
  spotNoticeRaw: string | undefined;
  private failures = 0;
  private failStatus = 500;
  private readonly tokens = new Map<string, number>(); // token -> expiry (epoch ms)
  private server: http.Server | undefined;
  private boundPort = 0;

  private constructor(opts: FakeImdsOptions) {
    this.instanceId = opts.instanceId ?? 'i-0123456789abcdef0';
    this.instanceType = opts.instanceType ?? 'p5.48xlarge';
    this.userData = opts.userData;
  }

  /** Starts a fake on 127.0.0.1 on a free port. */
  static async start(opts: FakeImdsOptions = {}): Promise<FakeImds> {
    const fake = new FakeImds(opts);
    fake.server = http.createServer((req, res) => fake.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      fake.server!.once('error', reject);
      fake.server!.listen(0, '127.0.0.1', () => resolve());
    });
    fake.boundPort = (fake.server.address() as AddressInfo).port;
    return fake;
  }

  /** The bound port. */
  get port(): number {
    return this.boundPort;
  }

  /** Base URL, for ImdsClient's endpoint or AWS_EC2_METADATA_SERVICE_ENDPOINT. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.boundPort}`;
  }

  /** Answers the next `n` requests (any path) with `status` (default 500). */
  failNext(n: number, status = 500): void {
    this.failures = n;
    this.failStatus = status;
  }

  /** Invalidates every token handed out (the next GET with one gets 401). */
  expireTokens(): void {
    this.tokens.clear();
  }

  /** Requests to a path (and method), in order. */
  requestsTo(path: string, method?: string): ImdsRequest[] {
    return this.requests.filter((r) => r.path === path && (method === undefined || r.method === method));
  }

  /** Stops the server. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    const token = header(req, 'x-aws-ec2-metadata-token');
    const ttl = header(req, 'x-aws-ec2-metadata-token-ttl-seconds');
    const record: ImdsRequest = { method: req.method ?? '', path, token, ttl, status: 0 };
    this.requests.push(record);
    const reply = (status: number, body = '', headers: Record<string, string> = {}) => {
      record.status = status;
      res.writeHead(status, { 'content-type': 'text/plain', ...headers });
      res.end(body);
    };
    req.resume();
    req.on('end', () => {
      if (this.failures > 0) {
        this.failures--;
        return reply(this.failStatus, 'Internal Server Error');
      }
      if (path === '/latest/api/token') {
        if (req.method !== 'PUT') return reply(405, 'Method Not Allowed');
        const seconds = Number(ttl);
        if (ttl === undefined || !Number.isInteger(seconds) || seconds < 1 || seconds > 21_600) return reply(400, 'Bad Request');
        const t = randomBytes(24).toString('base64url');
        this.tokens.set(t, Date.now() + seconds * 1000);
        return reply(200, t, { 'x-aws-ec2-metadata-token-ttl-seconds': String(seconds) });
      }
      if (req.method !== 'GET') return reply(405, 'Method Not Allowed');
      const expiry = token === undefined ? undefined : this.tokens.get(token);
      if (expiry === undefined || expiry <= Date.now()) return reply(401, 'Unauthorized');
      switch (path) {
        case '/latest/meta-data/instance-id':
          return reply(200, this.instanceId);
        case '/latest/meta-data/instance-type':
          return reply(200, this.instanceType);
        case '/latest/user-data':
          return this.userData === undefined ? reply(404, 'Not Found') : reply(200, this.userData, { 'content-type': 'application/octet-stream' });
        case '/latest/meta-data/spot/instance-action': {
          const body = this.spotNoticeRaw ?? (this.spotNotice ? JSON.stringify(this.spotNotice) : undefined);
          return body === undefined ? reply(404, 'Not Found') : reply(200, body);
        }
        default:
          return reply(404, 'Not Found');
      }
    });
  }
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
