// What uploads, downloads and deletes of checkpoints share: bounded parallelism that stops
// starting work after the first failure, per-operation retries with backoff, and which storage
// errors are worth retrying.
import { setMaxListeners } from 'node:events';
import { sleep } from '../abort';
import { backoffDelay, type BackoffOptions } from '../backoff';
import { DetError } from '../errors';

/** Default retry delay of one storage operation: 200 ms doubling to 10 s, half jitter. */
export const STORAGE_RETRY_BACKOFF: BackoffOptions = { baseMs: 200, maxMs: 10_000, jitter: 0.5 };
/** Default attempts of one storage operation (the first included). */
export const DEFAULT_STORAGE_ATTEMPTS = 5;

// Storage errors that another attempt cannot fix. The storage adapters report everything the
// backend refuses as DET_ERR_INTERNAL with a message that says why (common/storage/s3.ts and
// shared-fs.ts); these are the permanent ones among them. Everything else that is not
// DET_ERR_INVALID_ARGUMENT (bad key, missing object, corrupt content) is a network error, a
// timeout or a server error, and is retried.
const PERMANENT_MESSAGES = [
  /: access denied \(/,
  /: S3 rejected the credentials/,
  /: no AWS credentials found/,
  /: bucket \S+ does not exist/,
  /: the disk is full$/,
  /: check the permissions of the checkpoint directory$/,
];

/** Whether another attempt of the storage operation that threw `err` may succeed. */
export function isTransientStorageError(err: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted) return false;
  if (err instanceof Error && err.name === 'AbortError') return false;
  if (err instanceof DetError) {
    if (err.code !== 'DET_ERR_INTERNAL') return err.retryable;
    return !PERMANENT_MESSAGES.some((re) => re.test(err.message));
  }
  return true;
}

/** Options of withRetries. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 5). */
  maxAttempts?: number;
  /** Delay between attempts (default STORAGE_RETRY_BACKOFF). */
  backoff?: BackoffOptions;
  signal?: AbortSignal;
  /** Told before each retry (to log it). */
  onRetry?: (attempt: number, delayMs: number, err: unknown) => void;
  /** Which errors are retried (default isTransientStorageError). */
  isTransient?: (err: unknown, signal?: AbortSignal) => boolean;
  /** Randomness for backoff jitter (tests). */
  random?: () => number;
}

/**
 * Runs `op` until it succeeds, a non-transient error occurs or the attempts are used up; throws
 * the last error (the signal's reason when aborted).
 */
export async function withRetries<T>(op: (attempt: number) => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const max = Math.max(1, opts.maxAttempts ?? DEFAULT_STORAGE_ATTEMPTS);
  const transient = opts.isTransient ?? isTransientStorageError;
  for (let attempt = 1; ; attempt++) {
    opts.signal?.throwIfAborted();
    try {
      return await op(attempt);
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (attempt >= max || !transient(err, opts.signal)) throw err;
      const delayMs = backoffDelay(attempt - 1, opts.backoff ?? STORAGE_RETRY_BACKOFF, opts.random);
      opts.onRetry?.(attempt, delayMs, err);
      await sleep(delayMs, opts.signal);
    }
  }
}

/**
 * Maps `items` through `fn` with at most `limit` calls in flight. After the first failure no new
 * call starts; the calls in flight are awaited (so nothing runs on after this returns) and the
 * first error is thrown.
 */
export async function mapBounded<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  let firstError: unknown;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (err) {
        if (!failed) firstError = err;
        failed = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw firstError;
  return out;
}

/**
 * A signal that follows `parent`, for one transfer's many concurrent requests: each adds a
 * listener, so the usual limit of 10 (and its leak warning) does not fit. dispose() unlinks it.
 */
export function transferSignal(parent?: AbortSignal): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  setMaxListeners(0, ac.signal);
  if (!parent) return { signal: ac.signal, dispose: () => undefined };
  const onAbort = () => ac.abort(parent.reason);
  if (parent.aborted) onAbort();
  else parent.addEventListener('abort', onAbort, { once: true });
  return { signal: ac.signal, dispose: () => parent.removeEventListener('abort', onAbort) };
}

export { formatBytes } from '../format';
