// Downloads one S3 object into the cache: body -> temp file -> size check -> fsync -> 0444 ->
// rename. The SDK retries failed requests (maxAttempts); a body cut short mid-stream is not
// retried by the SDK, so the whole object is retried here with backoff. Request failures
// (missing object, access denied, missing bucket) are final: the SDK already retried them.
import { createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { sleep } from '../../common/abort';
import { backoffDelay, type BackoffOptions } from '../../common/backoff';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import { isObjectNotFound } from '../../common/storage/errors';
import type { S3Storage } from '../../common/storage/s3';
import { OBJECT_MODE, type ObjectStore } from './store';

/** Retry delays for whole-object downloads. */
export const DOWNLOAD_BACKOFF: BackoffOptions = { baseMs: 250, maxMs: 10_000, jitter: 0.5 };
/** Attempts per object, first included. */
export const DOWNLOAD_ATTEMPTS = 4;

/** One object to fetch. */
export interface DownloadRequest {
  id: string;
  /** Key relative to the storage's prefix. */
  key: string;
  size: number;
  etag: string;
}

/** Where and how to fetch. */
export interface DownloadContext {
  storage: S3Storage;
  store: ObjectStore;
  log: Logger;
  /** Bytes arrived; negative when a failed attempt's bytes are taken back. */
  onBytes: (n: number) => void;
  attempts?: number;
  backoff?: BackoffOptions;
}

// Failures worth another attempt: the body broke off or came short.
const transient = new WeakSet<object>();
// Local disk problems: another attempt does not help.
const LOCAL_FS_CODES = new Set(['ENOSPC', 'EDQUOT', 'EACCES', 'EPERM', 'EROFS', 'EMFILE', 'ENFILE', 'EIO']);

/** Downloads `req` into the store, retrying a broken body; rejects with a DetError naming the object. */
export async function downloadObject(req: DownloadRequest, ctx: DownloadContext, signal: AbortSignal): Promise<void> {
  const attempts = Math.max(1, ctx.attempts ?? DOWNLOAD_ATTEMPTS);
  const where = ctx.storage.location(req.key);
  for (let attempt = 0; ; attempt++) {
    let received = 0;
    try {
      await downloadOnce(req, ctx, (n) => {
        received += n;
        ctx.onBytes(n);
      }, signal);
      return;
    } catch (err) {
      ctx.onBytes(-received);
      if (signal.aborted) throw err;
      const retry = typeof err === 'object' && err !== null && transient.has(err) && attempt + 1 < attempts;
      if (!retry) {
        if (err instanceof DetError && !transient.has(err)) throw err;
        const tries = attempt + 1 > 1 ? ` after ${attempt + 1} attempts` : '';
        throw new DetError('DET_ERR_INTERNAL', `cannot download ${where} (${req.size} bytes)${tries}: ${errorMessage(err)}`);
      }
      const delay = backoffDelay(attempt, ctx.backoff ?? DOWNLOAD_BACKOFF);
      ctx.log.warn('data object download failed; retrying', { object: where, attempt: attempt + 1, retry_in_ms: delay, error: errorMessage(err) });
      await sleep(delay, signal);
    }
  }
}

async function downloadOnce(req: DownloadRequest, ctx: DownloadContext, onBytes: (n: number) => void, signal: AbortSignal): Promise<void> {
  const where = ctx.storage.location(req.key);
  let body;
  try {
    body = await ctx.storage.get(req.key, signal);
  } catch (err) {
    if (isObjectNotFound(err)) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `${where} was listed but is gone (deleted while syncing?); start the trial again`);
    }
    throw err;
  }
  // The SDK's body is the HTTP response: if the object was replaced since the listing, its ETag
  // says so, and the new content must not be cached under the old ETag.
  const served = (body as { headers?: Record<string, unknown> }).headers?.etag;
  if (typeof served === 'string' && req.etag !== '' && served.replace(/^"|"$/g, '') !== req.etag) {
    body.destroy();
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `${where} changed while it was being synced (listed ETag ${req.etag}, now ${served}); start the trial again once the data set is no longer being written`);
  }
  const tmp = ctx.store.tempPath(req.id);
  let written = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      written += chunk.length;
      onBytes(chunk.length);
      done(null, chunk);
    },
  });
  try {
    try {
      await pipeline(body, counter, createWriteStream(tmp, { flags: 'wx', mode: 0o600 }), { signal });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (signal.aborted || (code !== undefined && LOCAL_FS_CODES.has(code))) throw err;
      throw markTransient(new DetError('DET_ERR_INTERNAL', `the download broke off after ${written} of ${req.size} bytes: ${code ?? errorMessage(err)}`));
    }
    if (written !== req.size) {
      throw markTransient(new DetError('DET_ERR_INTERNAL', `received ${written} bytes, but the listing says ${req.size}`));
    }
    const fh = await fs.open(tmp, 'r');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await fs.chmod(tmp, OBJECT_MODE);
    await ctx.store.commit(tmp, req.id);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

function markTransient<E extends object>(err: E): E {
  transient.add(err);
  return err;
}
