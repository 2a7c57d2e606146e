// IMDSv2 client: the EC2 instance metadata service, reached over plain HTTP on
// the link-local address. Every read needs a session token obtained with
// PUT /latest/api/token (X-aws-ec2-metadata-token-ttl-seconds) and sent back
// as X-aws-ec2-metadata-token. Transient failures (connection errors,
// timeouts, 5xx, 429) are retried a bounded number of times with backoff;
// anything else fails at once with an error that names the endpoint.
import * as http from 'node:http';
import { abortReason, sleep } from '../../common/abort';
import { backoffDelay, type BackoffOptions } from '../../common/backoff';
import { DetError, errorMessage } from '../../common/errors';

/** Where IMDS lives on every EC2 instance. */
export const DEFAULT_IMDS_ENDPOINT = 'http://169.254.169.254';

/** Requested token lifetime: the maximum IMDS grants (6 hours). */
export const IMDS_MAX_TOKEN_TTL_SECONDS = 21_600;

/** Request header carrying the wanted token lifetime on the token PUT. */
export const IMDS_TTL_HEADER = 'x-aws-ec2-metadata-token-ttl-seconds';

/** Request header carrying the session token on every read. */
export const IMDS_TOKEN_HEADER = 'x-aws-ec2-metadata-token';

/** Retry delays for transient IMDS failures. */
export const IMDS_BACKOFF: BackoffOptions = { baseMs: 100, maxMs: 1_000, jitter: 0.5 };

/** A pending spot interruption, from /latest/meta-data/spot/instance-action. */
export interface SpotInstanceAction {
  /** What EC2 will do: "terminate", "stop" or "hibernate". */
  action: string;
  /** When it will happen (epoch ms). */
  timeMs: number;
}

/** The reads the agent needs from IMDS (the port that tests fake). */
export interface InstanceMetadata {
  /** The IMDS base URL, for messages. */
  readonly endpoint: string;
  instanceId(signal?: AbortSignal): Promise<string>;
  instanceType(signal?: AbortSignal): Promise<string>;
  /** The instance's user data; undefined when it has none. */
  userData(signal?: AbortSignal): Promise<string | undefined>;
  /** The pending spot interruption; undefined when there is none. */
  spotInstanceAction(signal?: AbortSignal): Promise<SpotInstanceAction | undefined>;
}

/** Options of the IMDS client. */
export interface ImdsClientOptions {
  /** Base URL (default: $AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254). */
  endpoint?: string;
  /** Timeout of one HTTP request (default 2000 ms). */
  timeoutMs?: number;
  /** Retries after a transient failure, per call (default 3). */
  retries?: number;
  /** Delays between retries (default IMDS_BACKOFF). */
  backoff?: BackoffOptions;
  /** Token lifetime to ask for (default 21600 s, the maximum). */
  tokenTtlSeconds?: number;
  /** Clock, injectable for token-expiry tests (default Date.now). */
  now?: () => number;
}

interface HttpResult {
  status: number;
  body: string;
}

/** A failed HTTP exchange; `transient` when retrying can help. */
class ImdsRequestError extends Error {
  constructor(message: string, readonly transient: boolean, readonly status?: number) {
    super(message);
  }
}

/** IMDSv2 client with a cached, refreshed session token. */
export class ImdsClient implements InstanceMetadata {
  readonly endpoint: string;
  private readonly url: URL;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoff: BackoffOptions;
  private readonly ttlSeconds: number;
  private readonly now: () => number;
  private cached: { token: string; refreshAtMs: number } | undefined;
  private pendingToken: Promise<string> | undefined;

  constructor(opts: ImdsClientOptions = {}) {
    const endpoint = opts.endpoint ?? process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? DEFAULT_IMDS_ENDPOINT;
    this.endpoint = endpoint.replace(/\/+$/, '');
    try {
      this.url = new URL(this.endpoint);
    } catch {
      throw new DetError('DET_ERR_CONFIG_INVALID', `EC2 instance metadata endpoint "${endpoint}" is not a URL (check AWS_EC2_METADATA_SERVICE_ENDPOINT)`);
    }
    if (this.url.protocol !== 'http:') {
      throw new DetError('DET_ERR_CONFIG_INVALID', `EC2 instance metadata endpoint "${endpoint}" must be an http:// URL (check AWS_EC2_METADATA_SERVICE_ENDPOINT)`);
    }
    this.timeoutMs = opts.timeoutMs ?? 2_000;
    this.retries = Math.max(0, opts.retries ?? 3);
    this.backoff = opts.backoff ?? IMDS_BACKOFF;
    this.ttlSeconds = Math.min(IMDS_MAX_TOKEN_TTL_SECONDS, Math.max(1, Math.floor(opts.tokenTtlSeconds ?? IMDS_MAX_TOKEN_TTL_SECONDS)));
    this.now = opts.now ?? Date.now;
  }

  /** A session token; cached and renewed before it expires (a tenth of its life, at most a minute, early). */
  async token(signal?: AbortSignal): Promise<string> {
    if (this.cached && this.now() < this.cached.refreshAtMs) return this.cached.token;
    // Concurrent callers share one PUT.
    this.pendingToken ??= this.fetchToken(signal).finally(() => (this.pendingToken = undefined));
    return this.pendingToken;
  }

  /** The instance id, e.g. i-0123456789abcdef0. */
  async instanceId(signal?: AbortSignal): Promise<string> {
    return this.required('/latest/meta-data/instance-id', signal);
  }

  /** The instance type, e.g. p5.48xlarge. */
  async instanceType(signal?: AbortSignal): Promise<string> {
    return this.required('/latest/meta-data/instance-type', signal);
  }

  /** The user data as given at launch; undefined when the instance has none (404). */
  async userData(signal?: AbortSignal): Promise<string | undefined> {
    return this.get('/latest/user-data', signal);
  }

  /** The pending spot interruption; undefined when there is none (404). */
  async spotInstanceAction(signal?: AbortSignal): Promise<SpotInstanceAction | undefined> {
    const path = '/latest/meta-data/spot/instance-action';
    const body = await this.get(path, signal);
    if (body === undefined) return undefined;
    let doc: unknown;
    try {
      doc = JSON.parse(body);
    } catch {
      throw this.badAnswer(path, `not JSON: ${JSON.stringify(body.slice(0, 100))}`);
    }
    const { action, time } = (doc ?? {}) as { action?: unknown; time?: unknown };
    const timeMs = typeof time === 'string' ? Date.parse(time) : NaN;
    if (typeof action !== 'string' || action === '' || Number.isNaN(timeMs)) {
      throw this.badAnswer(path, `expected {"action": "...", "time": "<ISO 8601>"}, got ${JSON.stringify(body.slice(0, 200))}`);
    }
    return { action, timeMs };
  }

  private badAnswer(path: string, detail: string): DetError {
    return new DetError('DET_ERR_CONFIG_INVALID', `EC2 instance metadata service at ${this.endpoint} answered GET ${path} with ${detail}`);
  }

  private async required(path: string, signal?: AbortSignal): Promise<string> {
    const body = await this.get(path, signal);
    if (body === undefined || body.trim() === '') throw this.badAnswer(path, body === undefined ? '404 Not Found' : 'an empty body');
    return body.trim();
  }

  /** GET with the token; 404 gives undefined; a 401 (token expired or revoked) renews the token once. */
  private async get(path: string, signal?: AbortSignal): Promise<string | undefined> {
    for (let renewed = false; ; renewed = true) {
      const token = await this.token(signal);
      const res = await this.withRetries(`GET ${path}`, signal, () => this.request('GET', path, { [IMDS_TOKEN_HEADER]: token }, signal));
      if (res.status === 404) return undefined;
      if (res.status === 401 && !renewed) {
        this.cached = undefined;
        continue;
      }
      if (res.status !== 200) throw this.badAnswer(path, `HTTP ${res.status}${res.body ? `: ${res.body.slice(0, 200)}` : ''}`);
      return res.body;
    }
  }

  private async fetchToken(signal?: AbortSignal): Promise<string> {
    const path = '/latest/api/token';
    const startedMs = this.now();
    const res = await this.withRetries(`PUT ${path}`, signal, () => this.request('PUT', path, { [IMDS_TTL_HEADER]: String(this.ttlSeconds) }, signal));
    if (res.status === 403) {
      throw new DetError('DET_ERR_CONFIG_INVALID', `EC2 instance metadata service at ${this.endpoint} refused a session token (HTTP 403): IMDS is disabled for this instance; enable it (aws ec2 modify-instance-metadata-options --http-endpoint enabled)`);
    }
    if (res.status !== 200 || res.body.trim() === '') throw this.badAnswer(`${path} (PUT)`, `HTTP ${res.status}${res.body ? `: ${res.body.slice(0, 200)}` : ''}`);
    const ttlMs = this.ttlSeconds * 1000;
    this.cached = { token: res.body.trim(), refreshAtMs: startedMs + ttlMs - Math.min(60_000, ttlMs / 10) };
    return this.cached.token;
  }

  /** Runs `attempt`, retrying transient failures; the last failure becomes a DetError naming the endpoint. */
  private async withRetries(what: string, signal: AbortSignal | undefined, attempt: () => Promise<HttpResult>): Promise<HttpResult> {
    let last = '';
    for (let i = 0; ; i++) {
      if (signal?.aborted) throw abortReason(signal);
      let err: ImdsRequestError;
      try {
        const res = await attempt();
        if (res.status < 500 && res.status !== 429) return res;
        err = new ImdsRequestError(`HTTP ${res.status}${res.body ? `: ${res.body.slice(0, 200)}` : ''}`, true, res.status);
      } catch (e) {
        if (signal?.aborted) throw abortReason(signal);
        if (!(e instanceof ImdsRequestError)) throw e;
        err = e;
      }
      last = err.message;
      if (!err.transient || i >= this.retries) break;
      await sleep(backoffDelay(i, this.backoff), signal);
    }
    const attempts = `${this.retries + 1} attempt${this.retries === 0 ? '' : 's'}`;
    throw new DetError(
      'DET_ERR_CONFIG_INVALID',
      `cannot reach the EC2 instance metadata service at ${this.endpoint}: ${what} failed after ${attempts} (last: ${last}). ` +
        'Is this an EC2 instance with IMDS enabled (and hop limit >= 2 in containers)?',
    );
  }

  /** One HTTP exchange; connection errors and timeouts are transient ImdsRequestErrors. */
  private request(method: 'GET' | 'PUT', path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<HttpResult> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          protocol: this.url.protocol,
          hostname: this.url.hostname.replace(/^\[|\]$/g, ''),
          port: this.url.port || 80,
          method,
          path,
          headers,
          signal,
          agent: false, // no keep-alive: a daemon polling every few seconds needs no pool, and tests close cleanly
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', (e) => reject(new ImdsRequestError(errorMessage(e), true)));
        },
      );
      req.setTimeout(this.timeoutMs, () => req.destroy(new ImdsRequestError(`no answer within ${this.timeoutMs} ms`, true)));
      req.on('error', (e) => {
        if (e instanceof ImdsRequestError) return reject(e);
        if (signal?.aborted) return reject(abortReason(signal));
        const code = (e as NodeJS.ErrnoException).code;
        reject(new ImdsRequestError(code ? `${code}${e.message.includes(code) ? '' : `: ${e.message}`}` : errorMessage(e), true));
      });
      req.end();
    });
  }
}
