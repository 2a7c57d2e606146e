// A lean signed PutObject for Buffer and open-file bodies: the AWS SDK spends about 2 ms of CPU per request
// in its middleware stack (schema serde, endpoint rules, user agent, retry bookkeeping, log
// filters), which is most of the client's cost for the many small files of a checkpoint. This
// path keeps the SDK's decisions but takes them once: the bucket's endpoint is resolved ONCE
// through the SDK's own endpoint rules (virtual-hosted or path style, custom endpoints, FIPS,
// dual stack), credentials come from the client's provider (the SDK's default chain, memoized
// and refreshed by it), clock skew is shared with the client (config.systemClockOffset), and
// SigV4 is @smithy/signature-v4 with S3's rules. Each request is then one node http(s) request
// on a keep-alive agent. Endpoints that need anything but plain SigV4 (S3 Express, multi-region
// access points) or extra headers are not served here: S3Storage uses the SDK for them.
// Errors look like the SDK's to S3Storage.mapError (name = S3's <Code>, $metadata with the HTTP
// status and request id; network errors keep their node code), and are retried like the SDK's
// standard strategy does: network errors, timeouts, throttling and 5xx, up to maxAttempts.
// A file body (FileSource) is sent from a few reused buffers with positional reads (file-source.ts),
// so a retry sends it again from the start, and it costs neither a stream pipeline nor a fresh
// buffer per chunk; it must come with its sha256 (the signed payload hash). Bodies of 2 MiB and
// more wait for S3's "100 Continue" (as the SDK's do), so an error S3 answers before the body is
// read as that error, not as the reset of a connection the client was still sending on.
import { createHash } from 'node:crypto';
import * as diagnostics from 'node:diagnostics_channel';
import * as http from 'node:http';
import * as https from 'node:https';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getEndpointFromInstructions } from '@smithy/core/endpoints';
import { SignatureV4 } from '@smithy/signature-v4';
import { sleep } from '../abort';
import { backoffDelay, type BackoffOptions } from '../backoff';
import { readChunks, type FileSource } from './file-source';
import { CONTENT_SHA256_HEADER } from './s3-put';

/** The SDK's standard retry delay: 100 ms doubling to 20 s, full jitter. */
export const LEAN_PUT_BACKOFF: BackoffOptions = { baseMs: 100, maxMs: 20_000, jitter: 1 };
/** Bytes of an error response kept for its <Code> and <Message>. */
const MAX_ERROR_BODY = 64 * 1024;
const USER_AGENT = 'determined-aws (s3-lean-put)';
/** Chunks of a file body in flight per request (read ahead of, or queued on, the socket). */
const FILE_BODY_BUFFERS = 4;
/** Bodies from this size on are sent after S3's 100 Continue (the SDK's threshold). */
export const EXPECT_CONTINUE_BYTES = 2 * 1024 * 1024;
/** How long a request waits for 100 Continue before it sends the body anyway. */
const CONTINUE_WAIT_MS = 1000;

/** One upload. */
export interface LeanPutRequest {
  /** Full object key (with the storage's prefix). */
  key: string;
  body: Buffer | FileSource;
  /** Hex sha256 of the body; computed for a Buffer when absent, required for a file. */
  sha256?: string;
  contentType?: string;
}

/** Options of a LeanPut. */
export interface LeanPutOptions {
  /** Attempts per object, the first included. */
  maxAttempts: number;
  /** A request that sends or receives nothing for this long fails with a TimeoutError. */
  requestTimeoutMs?: number;
  /** Randomness for backoff jitter (tests). */
  random?: () => number;
}

/** Where a bucket's objects go and how requests to it are signed. */
interface Target {
  protocol: 'http:' | 'https:';
  hostname: string;
  port?: number;
  /** Host header ("host" or "host:port"). */
  host: string;
  /** Path of the bucket's root, without a trailing '/' ('' for virtual-hosted style). */
  basePath: string;
  signer: SignatureV4;
}

/** An S3-shaped error (what S3Storage.mapError reads). */
export class LeanS3Error extends Error {
  readonly $metadata: { httpStatusCode?: number; requestId?: string };
  readonly $retryable: boolean;
  constructor(name: string, message: string, status: number | undefined, requestId: string | undefined, retryable: boolean) {
    super(message);
    this.name = name;
    this.$metadata = { httpStatusCode: status, requestId };
    this.$retryable = retryable;
  }
}

/**
 * Diagnostics channel with every request (attempt) the lean path starts, as `{ client, request }`
 * (`client` the S3Client it follows), published when the request is created: tests record what
 * goes on the wire, also for requests that fail before their body is sent.
 */
export const LEAN_PUT_REQUEST_CHANNEL = 'det:s3-lean-put:request';
const requestChannel = diagnostics.channel(LEAN_PUT_REQUEST_CHANNEL);

/** A message of LEAN_PUT_REQUEST_CHANNEL. */
export interface LeanPutRequestMessage {
  client: S3Client;
  request: http.ClientRequest;
}

interface ClientConfigView {
  credentials: () => Promise<{ accessKeyId: string; secretAccessKey: string; sessionToken?: string }>;
  sha256: ConstructorParameters<typeof SignatureV4>[0]['sha256'];
  systemClockOffset?: number;
}

/** Signed single PutObjects of Buffers and files to one bucket, beside the SDK client they follow. */
export class LeanPut {
  private target?: Promise<Target | undefined>;
  private agent?: http.Agent;

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    private readonly opts: LeanPutOptions,
  ) {}

  /** Whether this path serves the bucket (plain SigV4 endpoint); resolved once. */
  async available(): Promise<boolean> {
    return (await this.resolve()) !== undefined;
  }

  /**
   * Sends one PutObject and returns its ETag (quoted, as S3 sends it); throws LeanS3Error or the
   * network error of the last attempt. Call only when available() is true.
   */
  async put(req: LeanPutRequest, signal?: AbortSignal): Promise<{ ETag?: string }> {
    const target = await this.resolve();
    if (!target) throw new Error('the lean PUT path does not serve this bucket');
    const body = req.body;
    const sha256 = req.sha256 ?? (Buffer.isBuffer(body) ? createHash('sha256').update(body).digest('hex') : undefined);
    if (sha256 === undefined) throw new Error('a file body needs its sha256');
    const max = Math.max(1, this.opts.maxAttempts);
    for (let attempt = 1; ; attempt++) {
      signal?.throwIfAborted();
      const offsetBefore = this.config().systemClockOffset ?? 0;
      try {
        return await this.attempt(target, req, sha256, signal);
      } catch (err) {
        if (signal?.aborted) throw err;
        const skewFixed = isClockSkewError(err) && (this.config().systemClockOffset ?? 0) !== offsetBefore;
        if (attempt >= max || !(skewFixed || isRetryable(err))) throw err;
        if (!skewFixed) await sleep(backoffDelay(attempt - 1, LEAN_PUT_BACKOFF, this.opts.random), signal);
      }
    }
  }

  /** Closes the keep-alive connections. */
  destroy(): void {
    this.agent?.destroy();
  }

  private config(): ClientConfigView {
    return this.client.config as unknown as ClientConfigView;
  }

  private resolve(): Promise<Target | undefined> {
    this.target ??= this.resolveOnce().catch(() => undefined);
    return this.target;
  }

  private async resolveOnce(): Promise<Target | undefined> {
    const config = this.client.config;
    // The SDK's own endpoint rules for a PutObject to this bucket (the key does not change them).
    const endpoint = await getEndpointFromInstructions({ Bucket: this.bucket, Key: 'k' }, PutObjectCommand, config as never);
    const schemes = (endpoint.properties?.authSchemes ?? []) as { name?: string; signingName?: string; signingRegion?: string }[];
    const auth = schemes[0];
    if (!auth || auth.name !== 'sigv4' || auth.signingName !== 's3' || !auth.signingRegion) return undefined;
    if (endpoint.headers && Object.keys(endpoint.headers).length > 0) return undefined;
    const url = new URL(String(endpoint.url));
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
    if (url.search !== '' || url.username !== '' || url.password !== '') return undefined;
    const view = this.config();
    const signer = new SignatureV4({
      credentials: () => view.credentials(),
      region: auth.signingRegion,
      service: 's3',
      sha256: view.sha256,
      // S3's SigV4 rules: the path is signed as sent, and the payload hash is the header we set.
      uriEscapePath: false,
      applyChecksum: false,
    });
    const Agent = url.protocol === 'https:' ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: 50 });
    return {
      protocol: url.protocol,
      hostname: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port === '' ? undefined : Number(url.port),
      host: url.host,
      basePath: url.pathname.replace(/\/+$/, ''),
      signer,
    };
  }

  private async attempt(t: Target, req: LeanPutRequest, sha256: string, signal?: AbortSignal): Promise<{ ETag?: string }> {
    const path = `${t.basePath}/${req.key.split('/').map(escapeSegment).join('/')}`;
    const body = req.body;
    const size = Buffer.isBuffer(body) ? body.length : body.size;
    const offset = this.config().systemClockOffset ?? 0;
    const signed = await t.signer.sign(
      {
        method: 'PUT',
        protocol: t.protocol,
        hostname: t.hostname,
        port: t.port,
        path,
        query: {},
        headers: {
          host: t.host,
          'content-length': String(size),
          'content-type': req.contentType ?? 'application/octet-stream',
          [CONTENT_SHA256_HEADER]: sha256,
        },
      },
      { signingDate: new Date(Date.now() + offset) },
    );
    const sentAt = Date.now();
    // As the SDK does for bodies of 2 MiB and more: S3 answers an error (a denial, a redirect,
    // SlowDown) before the body is sent, instead of closing a connection it is still sending on.
    const expectContinue = size >= EXPECT_CONTINUE_BYTES;
    return new Promise((resolve, reject) => {
      const mod = t.protocol === 'https:' ? https : http;
      const r = mod.request({
        method: 'PUT',
        protocol: t.protocol,
        hostname: t.hostname,
        port: t.port,
        path,
        headers: { ...signed.headers, 'user-agent': USER_AGENT, ...(expectContinue ? { expect: '100-continue' } : {}) },
        agent: this.agent,
        signal,
        ...(this.opts.requestTimeoutMs !== undefined ? { timeout: this.opts.requestTimeoutMs } : {}),
      });
      if (requestChannel.hasSubscribers) requestChannel.publish({ client: this.client, request: r } satisfies LeanPutRequestMessage);
      // Stops (or keeps from starting) sending the body once the request is over: failed, answered
      // early, or aborted by the caller (also while it still waits for a socket).
      const stop = new AbortController();
      let continueTimer: NodeJS.Timeout | undefined;
      const end = () => {
        clearTimeout(continueTimer);
        stop.abort();
      };
      r.on('timeout', () => r.destroy(timeoutError(this.opts.requestTimeoutMs ?? 0)));
      r.on('error', reject);
      signal?.addEventListener('abort', end, { once: true });
      r.on('close', () => {
        end();
        signal?.removeEventListener('abort', end);
      });
      r.on('response', (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          res.on('error', reject);
          res.on('end', () => resolve({ ETag: headerOf(res, 'etag') }));
          res.resume();
          return;
        }
        // An error answer can come before the whole body was sent: the rest is not sent, and
        // the connection, with half a request on it, is not used again.
        end();
        res.on('end', () => {
          if (!r.writableFinished) r.destroy();
        });
        const chunks: Buffer[] = [];
        let kept = 0;
        res.on('data', (c: Buffer) => {
          if (kept < MAX_ERROR_BODY) chunks.push(c);
          kept += c.length;
        });
        res.on('error', reject);
        res.on('end', () => {
          this.sampleClock(headerOf(res, 'date'), headerOf(res, 'age'), sentAt);
          reject(s3Error(status, headerOf(res, 'x-amz-request-id'), Buffer.concat(chunks).toString('utf8')));
        });
      });
      let started = false;
      const sendBody = () => {
        clearTimeout(continueTimer);
        if (started || stop.signal.aborted) return;
        started = true;
        if (Buffer.isBuffer(body)) r.end(body);
        else writeFileBody(r, body, stop);
      };
      if (!expectContinue) return sendBody();
      // Servers that do not answer 100 Continue get the body after a while anyway (the SDK waits 1 s).
      r.on('continue', sendBody);
      continueTimer = setTimeout(sendBody, CONTINUE_WAIT_MS);
    });
  }

  // As the SDK does after a failed request: the server's Date sets the clock offset used to sign.
  private sampleClock(date: string | undefined, age: string | undefined, sentAt: number): void {
    if (date === undefined || age !== undefined) return;
    const server = Date.parse(date);
    const now = Date.now();
    if (Number.isNaN(server) || now - sentAt > 900_000) return;
    this.config().systemClockOffset = server - now;
  }
}

// Sends the file body of `r` from reused buffers: write()'s callback runs once the socket has
// taken a chunk, and then its buffer is read into again. Stops when `stop` aborts.
function writeFileBody(r: http.ClientRequest, src: FileSource, stop: AbortController): void {
  const take = (chunk: Buffer, release: () => void) => {
    if (r.destroyed) {
      stop.abort(); // a destroyed request calls back at once: reading the rest would be for nothing
      release();
      return;
    }
    r.write(chunk, release);
  };
  readChunks(src.handle, src.size, take, { until: 'length', buffers: FILE_BODY_BUFFERS, signal: stop.signal }).then(
    () => r.end(),
    (err: unknown) => {
      if (!stop.signal.aborted) r.destroy(err as Error);
    },
  );
}

function headerOf(res: http.IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

// S3's key encoding (the SDK's extendedEncodeURIComponent): RFC 3986, '/' kept between segments.
function escapeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function timeoutError(ms: number): Error {
  const err = new Error(`no progress for ${ms} ms`);
  err.name = 'TimeoutError';
  return err;
}

const THROTTLING = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled', 'RequestThrottledException', 'TooManyRequestsException', 'RequestLimitExceeded', 'ProvisionedThroughputExceededException', 'BandwidthLimitExceeded', 'EC2ThrottledException', 'PriorRequestNotComplete', 'TransactionInProgressException']);
const TRANSIENT = new Set(['RequestTimeout', 'RequestTimeoutException', 'InternalError', 'TimeoutError']);
const CLOCK_SKEW = new Set(['RequestTimeTooSkewed', 'RequestExpired', 'RequestInTheFuture']);
const NETWORK = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'ECONNABORTED']);

/** An S3-shaped error from a failed response: S3's <Code> and <Message>, else the status. */
export function s3Error(status: number, requestId: string | undefined, body: string): LeanS3Error {
  const code = xmlText(body, 'Code') ?? (status === 404 ? 'NotFound' : status === 403 ? 'Forbidden' : `HTTP${status}`);
  const message = xmlText(body, 'Message') ?? `S3 answered HTTP ${status}`;
  const retryable = status === 429 || status >= 500 || THROTTLING.has(code) || TRANSIENT.has(code);
  return new LeanS3Error(code, message, status, requestId, retryable);
}

function xmlText(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
  if (!m) return undefined;
  return m[1].replace(/&(lt|gt|quot|apos|amp|#\d+|#x[0-9a-fA-F]+);/g, (_, e: string) => {
    if (e === 'lt') return '<';
    if (e === 'gt') return '>';
    if (e === 'quot') return '"';
    if (e === 'apos') return "'";
    if (e === 'amp') return '&';
    return String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
  });
}

/** Whether another attempt may succeed (the SDK's standard retry strategy's classes). */
export function isRetryable(err: unknown): boolean {
  if (err instanceof LeanS3Error) return err.$retryable;
  const e = err as { code?: string; name?: string } | undefined;
  return NETWORK.has(e?.code ?? '') || e?.name === 'TimeoutError';
}

function isClockSkewError(err: unknown): boolean {
  return err instanceof LeanS3Error && CLOCK_SKEW.has(err.name);
}
