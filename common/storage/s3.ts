// s3: checkpoints in an S3 bucket under an optional prefix. An object of known size up to the
// multipart threshold whose sha256 the caller knows (or a Buffer) goes as ONE PutObject signed
// with that sha256 (s3-put.ts; Buffers and open files (FileSource) through the lean request path
// of s3-lean-put.ts, without the SDK's middleware stack); anything else through lib-storage's
// Upload (multipart above one part: 8 MiB parts, 4 in flight). Requests are retried (maxAttempts;
// not a streamed single PUT: the caller reopens the source) and credentials come from the SDK's
// default chain (environment, profile, instance profile).
// Every error is mapped to a message that names the object and never carries credentials.
import { Readable } from 'node:stream';
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { DetError, errorMessage } from '../errors';
import { ObjectNotFoundError, redact } from './errors';
import { validateKey, validatePrefix } from './paths';
import { LeanPut } from './s3-lean-put';
import { isSha256Hex, MAX_SINGLE_PUT_BYTES, putSingle } from './s3-put';
import { isFileSource, withoutFileSource } from './file-source';
import type { CheckpointStorage, ListedObject, ObjectInfo, PutBody, PutOptions, PutResult } from './storage';

/** Multipart part size (S3's minimum is 5 MiB). */
export const PART_SIZE = 8 * 1024 * 1024;
/** Parts uploaded in parallel per object. */
export const QUEUE_SIZE = 4;
/**
 * Default multipart threshold: larger objects go multipart, smaller ones (of known size) as one
 * PutObject. Why 256 MiB: docs/checkpoints.md, "How files are sent to S3".
 */
export const DEFAULT_MULTIPART_THRESHOLD_BYTES = 256 * 1024 * 1024;
/** S3's limit of keys per DeleteObjects request. */
export const DELETE_BATCH = 1000;

/** Options of the s3 backend. */
export interface S3StorageOptions {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing '/' (default: none). */
  prefix?: string;
  /** Region (default: the SDK's chain, else us-east-1). */
  region?: string;
  /** Endpoint of an S3-compatible server, e.g. http://127.0.0.1:4569. */
  endpointUrl?: string;
  /** Path-style URLs (bucket in the path), for S3-compatible servers. */
  forcePathStyle?: boolean;
  /** Attempts per request, first included (default 5). */
  maxAttempts?: number;
  /** Explicit credentials (tests); production uses the SDK default chain. */
  credentials?: S3ClientConfig['credentials'];
  /** Keys per ListObjectsV2 page (default 1000, S3's maximum). */
  listPageSize?: number;
  /**
   * A request that connects, sends or receives nothing for this long fails with a timeout (and is
   * retried like a network error); catches stalled connections (default: none, the SDK's default).
   */
  requestTimeoutMs?: number;
  /**
   * Buffers, and streams with a size and a sha256 in PutOptions, of up to this many bytes are
   * sent as one PutObject (signed with the sha256 when given); larger ones, and streams without
   * both, go through lib-storage (multipart above PART_SIZE). Default 256 MiB; at most 5 GiB,
   * S3's single PUT limit.
   */
  multipartThresholdBytes?: number;
}

const noop = () => undefined;
const SILENT_SDK_LOGGER = { debug: noop, info: noop, warn: noop, error: noop };

interface AwsLikeError {
  name?: string;
  code?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number; requestId?: string };
}

/** Checkpoint storage in an S3 bucket. */
export class S3Storage implements CheckpointStorage {
  readonly kind = 's3' as const;
  /** The bucket. */
  readonly bucket: string;
  /** The prefix ('' for none). */
  readonly prefix: string;
  /** The SDK client (tests add middleware to it). */
  readonly client: S3Client;
  /** Objects of known size up to this go as one PutObject. */
  readonly multipartThresholdBytes: number;
  private readonly pageSize: number;
  private readonly endpoint: string;
  private readonly secrets: string[] = [];
  private readonly lean: LeanPut;

  constructor(opts: S3StorageOptions) {
    this.bucket = opts.bucket;
    this.prefix = (opts.prefix ?? '').replace(/^\/+|\/+$/g, '');
    if (this.prefix !== '') validatePrefix(this.prefix);
    this.pageSize = opts.listPageSize ?? 1000;
    const threshold = opts.multipartThresholdBytes ?? DEFAULT_MULTIPART_THRESHOLD_BYTES;
    if (!Number.isSafeInteger(threshold) || threshold < 0 || threshold > MAX_SINGLE_PUT_BYTES) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `multipartThresholdBytes must be an integer from 0 to ${MAX_SINGLE_PUT_BYTES} (5 GiB, S3's single PUT limit), got ${threshold}`);
    }
    this.multipartThresholdBytes = threshold;
    this.endpoint = opts.endpointUrl ?? 'AWS S3';
    const creds = opts.credentials;
    if (creds && typeof creds === 'object' && 'secretAccessKey' in creds) {
      this.secrets.push(creds.secretAccessKey, creds.accessKeyId, creds.sessionToken ?? '');
    }
    this.client = new S3Client({
      region: opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      endpoint: opts.endpointUrl,
      forcePathStyle: opts.forcePathStyle,
      maxAttempts: opts.maxAttempts ?? 5,
      credentials: opts.credentials,
      // No extra CRC32 per request: a buffered body's sha256 is signed by SigV4 and checked by S3,
      // and checkpoint content is verified end to end against the manifest's sha256. The CRC costs
      // about a tenth of the client's CPU on small files, and older S3-compatible servers reject it.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // The SDK's default logger drops everything but prints "An error was encountered in a
      // non-retryable streaming request" to the console for every failed streamed PUT, which
      // the uploader retries itself (and logs). Errors reach the caller through mapError.
      logger: SILENT_SDK_LOGGER,
      ...(opts.requestTimeoutMs !== undefined
        ? { requestHandler: { connectionTimeout: opts.requestTimeoutMs, socketTimeout: opts.requestTimeoutMs } }
        : {}),
    });
    this.lean = new LeanPut(this.client, this.bucket, { maxAttempts: opts.maxAttempts ?? 5, requestTimeoutMs: opts.requestTimeoutMs });
  }

  /** Full object key in the bucket. */
  objectKey(key: string): string {
    validateKey(key);
    return this.prefix === '' ? key : `${this.prefix}/${key}`;
  }

  location(key: string): string {
    return `s3://${this.bucket}/${this.objectKey(key)}`;
  }

  /** Closes the SDK's connections. */
  destroy(): void {
    this.lean.destroy();
    this.client.destroy();
  }

  async put(key: string, source: PutBody, opts: PutOptions = {}, signal?: AbortSignal): Promise<PutResult> {
    const Key = this.objectKey(key);
    if (opts.sha256 !== undefined && !isSha256Hex(opts.sha256)) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot upload s3://${this.bucket}/${Key}: sha256 must be 64 lowercase hex digits, got ${JSON.stringify(opts.sha256)}`);
    }
    const file = isFileSource(source) ? source : undefined;
    const own = Buffer.isBuffer(source) ? source.length : file?.size;
    const size = own ?? opts.size;
    if (own !== undefined && opts.size !== undefined && opts.size !== own) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot upload s3://${this.bucket}/${Key}: size ${opts.size} given for a ${own}-byte ${file ? 'file' : 'buffer'}`);
    }
    // One request when the size is known and small enough, and the body's sha256 is known (a
    // stream cannot be hashed before it is sent) or the SDK can hash it (a Buffer).
    if (size !== undefined && size <= this.multipartThresholdBytes && (opts.sha256 !== undefined || Buffer.isBuffer(source))) {
      signal?.throwIfAborted();
      try {
        // Buffers and files skip the SDK's per-request middleware where the endpoint allows (s3-lean-put.ts).
        const leanBody = Buffer.isBuffer(source) ? source : file;
        if (leanBody && (await this.lean.available())) {
          const out = await this.lean.put({ key: Key, body: leanBody, sha256: opts.sha256, contentType: opts.contentType }, signal);
          return { etag: unquote(out.ETag) };
        }
        const out = await putSingle(this.client, { bucket: this.bucket, key: Key, body: withoutFileSource(source), size, sha256: opts.sha256, contentType: opts.contentType }, signal);
        return { etag: unquote(out.ETag) };
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        throw this.mapError(err, 'upload', Key);
      }
    }
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.bucket,
        Key,
        Body: withoutFileSource(source),
        ContentType: opts.contentType,
        ...(size !== undefined ? { ContentLength: size } : {}),
      },
      partSize: PART_SIZE,
      queueSize: QUEUE_SIZE,
      leavePartsOnError: false,
    });
    const onAbort = () => void upload.abort().catch(() => undefined);
    signal?.throwIfAborted();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const out = await upload.done();
      return { etag: unquote(out.ETag) };
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw this.mapError(err, 'upload', Key);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async get(key: string, signal?: AbortSignal): Promise<Readable> {
    const Key = this.objectKey(key);
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }), { abortSignal: signal });
      if (!(out.Body instanceof Readable)) throw new Error('the response has no body stream');
      return out.Body;
    } catch (err) {
      if (isNotFound(err)) throw new ObjectNotFoundError(key, `s3://${this.bucket}/${Key}`);
      throw this.mapError(err, 'download', Key);
    }
  }

  async head(key: string, signal?: AbortSignal): Promise<ObjectInfo | undefined> {
    const Key = this.objectKey(key);
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }), { abortSignal: signal });
      return { size: out.ContentLength ?? 0, etag: unquote(out.ETag) ?? '' };
    } catch (err) {
      // HEAD has no body: a missing bucket also reads as 404 "NotFound" here.
      if (isNotFound(err) && (err as AwsLikeError).name !== 'NoSuchBucket') return undefined;
      throw this.mapError(err, 'stat', Key);
    }
  }

  async *list(prefix: string, signal?: AbortSignal): AsyncIterable<ListedObject> {
    validatePrefix(prefix);
    const root = this.prefix === '' ? '' : `${this.prefix}/`;
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: root + prefix, ContinuationToken: token, MaxKeys: this.pageSize }),
          { abortSignal: signal },
        );
      } catch (err) {
        throw this.mapError(err, 'list', root + prefix);
      }
      for (const obj of page.Contents ?? []) {
        const full = obj.Key ?? '';
        // A key planted by another client ("team-a/../x") must not reach a download path.
        const key = full.slice(root.length);
        // Zero-byte "folder" markers that consoles create ("a/b/") are no objects: skipped, but
        // checked like a prefix first, so a planted "a/../" is still refused.
        const marker = full.endsWith('/') && (obj.Size ?? 0) === 0;
        try {
          if (marker) validatePrefix(key);
          else validateKey(key);
        } catch (err) {
          throw new DetError('DET_ERR_INVALID_ARGUMENT', `refusing object s3://${this.bucket}/${full} listed under s3://${this.bucket}/${root}: ${errorMessage(err)}`);
        }
        if (marker) continue;
        yield { key, size: obj.Size ?? 0, etag: unquote(obj.ETag) ?? '' };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(keys: readonly string[], signal?: AbortSignal): Promise<void> {
    const full = keys.map((k) => this.objectKey(k));
    for (let i = 0; i < full.length; i += DELETE_BATCH) {
      const batch = full.slice(i, i + DELETE_BATCH);
      let out;
      try {
        out = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }),
          { abortSignal: signal },
        );
      } catch (err) {
        throw this.mapError(err, 'delete', `${batch.length} object(s) starting with ${batch[0]}`);
      }
      // Missing keys are already deleted; anything else is a failure.
      const failed = (out.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      if (failed.length > 0) {
        const first = failed[0];
        throw new DetError(
          'DET_ERR_INTERNAL',
          redact(`cannot delete ${failed.length} object(s) in s3://${this.bucket}, e.g. ${first.Key}: ${first.Code ?? 'error'} ${first.Message ?? ''}`.trim(), this.secrets),
        );
      }
    }
  }

  // One clear, credential-free message per failure.
  private mapError(err: unknown, op: string, key: string): DetError {
    const e = (err ?? {}) as AwsLikeError;
    const name = e.name ?? e.Code ?? e.code ?? 'Error';
    const status = e.$metadata?.httpStatusCode;
    const where = `s3://${this.bucket}/${key}`;
    const detail = `${name}${status ? ` (HTTP ${status})` : ''}${e.$metadata?.requestId ? `, request id ${e.$metadata.requestId}` : ''}`;
    let message: string;
    switch (name) {
      case 'NoSuchBucket':
        message = `cannot ${op} ${where}: bucket ${this.bucket} does not exist (at ${this.endpoint})`;
        break;
      case 'AccessDenied':
      case 'Forbidden':
      case 'AllAccessDisabled':
        message = `cannot ${op} ${where}: access denied (${detail}); check that the credentials (instance profile or AWS_* environment) allow it`;
        break;
      case 'InvalidAccessKeyId':
      case 'SignatureDoesNotMatch':
      case 'ExpiredToken':
      case 'InvalidToken':
      case 'TokenRefreshRequired':
        message = `cannot ${op} ${where}: S3 rejected the credentials (${detail}); check the instance profile or the AWS_* environment`;
        break;
      case 'XAmzContentSHA256Mismatch':
      case 'BadDigest':
        message = `cannot ${op} ${where}: S3 received content that does not match its sha256 (${detail}): the file changed while it was sent, or the data was corrupted on the way`;
        break;
      case 'CredentialsProviderError':
        message = `cannot ${op} ${where}: no AWS credentials found (instance profile, AWS_* environment or ~/.aws); configure one`;
        break;
      default:
        if (isNetworkError(e)) {
          message = `cannot ${op} ${where}: cannot reach S3 at ${this.endpoint} (${e.code ?? name}); is the endpoint right and reachable?`;
        } else {
          message = `cannot ${op} ${where}: ${detail}: ${e.message ?? errorMessage(err)}`;
        }
    }
    // No `cause`: SDK errors hold the request, and a logged cause must not leak a signature.
    return new DetError('DET_ERR_INTERNAL', redact(message, this.secrets));
  }
}

function unquote(etag: string | undefined): string | undefined {
  return etag?.replace(/^"|"$/g, '');
}

function isNotFound(err: unknown): boolean {
  const e = err as AwsLikeError;
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || (e?.$metadata?.httpStatusCode === 404 && e?.name !== 'NoSuchBucket');
}

function isNetworkError(e: AwsLikeError): boolean {
  return ['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'EPIPE'].includes(e.code ?? '') || e.name === 'TimeoutError';
}
