// The single-request upload of S3Storage: one PutObject whose SigV4 payload hash
// (x-amz-content-sha256) is the sha256 the caller already computed (the checkpoint manifest's).
// The SDK's signer uses a pre-set payload hash instead of hashing the body, so the client hashes
// nothing again, and S3 checks the whole object against that hash (XAmzContentSHA256Mismatch when
// it differs). A streamed body can be sent only once: the SDK does not retry streaming requests,
// and a guard inside its retry middleware refuses a second attempt anyway, so no retry can send a
// truncated or empty body. The caller retries by opening the source again. The SDK pipes a
// stream into the request, and a pipe passes on neither the source's error nor a short end (the
// server would wait for the missing bytes until a timeout): a counting stage in between fails
// the request at once instead.
import { pipeline, Readable, Transform } from 'node:stream';
import { PutObjectCommand, type PutObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3';

/** The SigV4 header that carries the payload's sha256. */
export const CONTENT_SHA256_HEADER = 'x-amz-content-sha256';
/** S3's limit for one PutObject: 5 GiB. */
export const MAX_SINGLE_PUT_BYTES = 5 * 1024 * 1024 * 1024;

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** What one single-request upload sends. */
export interface SinglePut {
  bucket: string;
  key: string;
  body: Readable | Buffer;
  size: number;
  /** Hex sha256 of the body (lowercase); when absent the SDK hashes a Buffer body itself. */
  sha256?: string;
  contentType?: string;
}

/** Whether `s` is a lowercase hex sha256. */
export function isSha256Hex(s: string): boolean {
  return SHA256_HEX.test(s);
}

/** Sends `p` as one PutObject; errors are the SDK's (the caller maps them). */
export async function putSingle(client: S3Client, p: SinglePut, signal?: AbortSignal): Promise<PutObjectCommandOutput> {
  if (!(p.body instanceof Readable)) return send(client, p, p.body, signal);
  const failed = new AbortController();
  let bodyError: Error | undefined;
  const body = counted(p.body, p.size, (err) => {
    bodyError ??= err;
    failed.abort(err);
  });
  try {
    return await send(client, p, body, signal ? AbortSignal.any([signal, failed.signal]) : failed.signal);
  } catch (err) {
    if (signal?.aborted) throw err;
    throw bodyError ?? err;
  } finally {
    if (!body.destroyed) body.destroy();
  }
}

// `source` piped through a stage that fails (calling `fail`) when the source fails or closes
// early, or delivers more or fewer than `size` bytes.
function counted(source: Readable, size: number, fail: (err: Error) => void): Readable {
  let n = 0;
  const stage = new Transform({
    highWaterMark: source.readableHighWaterMark,
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > size) cb(new Error(`the source delivered more than the ${size} bytes declared`));
      else cb(null, chunk);
    },
    flush(cb) {
      cb(n === size ? null : new Error(`the source ended after ${n} of the ${size} bytes declared`));
    },
  });
  // pipeline, not pipe: a source that fails or closes before its end fails the stage too.
  return pipeline(source, stage, (err) => {
    if (err) fail(err);
  });
}

async function send(client: S3Client, p: SinglePut, body: Readable | Buffer, signal: AbortSignal | undefined): Promise<PutObjectCommandOutput> {
  const command = new PutObjectCommand({ Bucket: p.bucket, Key: p.key, Body: body, ContentLength: p.size, ContentType: p.contentType });
  const sha256 = p.sha256;
  if (sha256 !== undefined) {
    // 'build' runs before signing (finalizeRequest): the signer finds the header and signs it.
    command.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { headers?: Record<string, string> };
        if (req.headers) req.headers[CONTENT_SHA256_HEADER] = sha256;
        return next(args);
      },
      { step: 'build', name: 'detPayloadSha256', override: true },
    );
  }
  if (body instanceof Readable) {
    let sent = false;
    let firstError: unknown;
    // Inside the retry middleware (finalizeRequest, priority high): runs once per attempt.
    command.middlewareStack.add(
      (next) => async (args) => {
        // A second attempt fails with the first one's error, without sending anything.
        if (sent) throw firstError ?? new Error('a streamed body cannot be sent twice');
        sent = true;
        try {
          return await next(args);
        } catch (err) {
          firstError = err;
          throw err;
        }
      },
      { step: 'finalizeRequest', priority: 'low', name: 'detSendStreamOnce', override: true },
    );
  }
  return client.send(command, { abortSignal: signal });
}
