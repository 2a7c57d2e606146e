import { strict as assert } from 'node:assert';
import { isTransientStorageError, mapBounded, withRetries, formatBytes } from '../../common/checkpoints/transfer';
import { DetError } from '../../common/errors';
import { ObjectNotFoundError } from '../../common/storage';

const noDelay = { baseMs: 0, maxMs: 0, jitter: 0 };

describe('checkpoint transfers: retries', () => {
  it('retries transient errors until an attempt succeeds', async () => {
    const retries: number[] = [];
    let calls = 0;
    const got = await withRetries(
      async (attempt) => {
        calls++;
        if (attempt < 3) throw new DetError('DET_ERR_INTERNAL', 'cannot upload s3://b/k: cannot reach S3 at http://x (ECONNRESET); is the endpoint right and reachable?');
        return 'ok';
      },
      { maxAttempts: 5, backoff: noDelay, onRetry: (a) => retries.push(a) },
    );
    assert.equal(got, 'ok');
    assert.equal(calls, 3);
    assert.deepEqual(retries, [1, 2]);
  });

  it('gives up after maxAttempts with the last error', async () => {
    let calls = 0;
    await assert.rejects(
      withRetries(async () => {
        calls++;
        throw new Error(`boom ${calls}`);
      }, { maxAttempts: 3, backoff: noDelay }),
      /boom 3/,
    );
    assert.equal(calls, 3);
  });

  it('does not retry permanent errors', async () => {
    const permanent = [
      new ObjectNotFoundError('k', 's3://b/k'),
      new DetError('DET_ERR_INVALID_ARGUMENT', 'bad key'),
      new DetError('DET_ERR_INTERNAL', 'cannot upload s3://b/k: access denied (AccessDenied (HTTP 403)); check that the credentials allow it'),
      new DetError('DET_ERR_INTERNAL', 'cannot upload s3://b/k: S3 rejected the credentials (InvalidAccessKeyId)'),
      new DetError('DET_ERR_INTERNAL', 'cannot upload s3://b/k: bucket b does not exist (at http://x)'),
      new DetError('DET_ERR_INTERNAL', 'cannot write /x/y: ENOSPC: the disk is full'),
    ];
    for (const err of permanent) {
      assert.equal(isTransientStorageError(err), false, err.message);
      let calls = 0;
      await assert.rejects(
        withRetries(async () => {
          calls++;
          throw err;
        }, { maxAttempts: 5, backoff: noDelay }),
        (e: unknown) => e === err,
      );
      assert.equal(calls, 1, err.message);
    }
    for (const msg of ['cannot upload s3://b/k: InternalError (HTTP 500): oops', 'cannot upload s3://b/k: cannot reach S3 at http://x (ECONNREFUSED); is it up?']) {
      assert.equal(isTransientStorageError(new DetError('DET_ERR_INTERNAL', msg)), true, msg);
    }
  });

  it('stops waiting when aborted, with the reason', async () => {
    const ac = new AbortController();
    const reason = new Error('shutting down');
    const p = withRetries(
      async () => {
        ac.abort(reason);
        throw new Error('transient');
      },
      { signal: ac.signal, backoff: { baseMs: 60_000, maxMs: 60_000, jitter: 0 } },
    );
    await assert.rejects(p, (e: unknown) => e === reason);
  });
});

describe('checkpoint transfers: mapBounded', () => {
  it('keeps order and never exceeds the limit', async () => {
    let active = 0;
    let peak = 0;
    const out = await mapBounded([1, 2, 3, 4, 5, 6, 7], 3, async (n) => {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setImmediate(r));
      active--;
      return n * 2;
    });
    assert.deepEqual(out, [2, 4, 6, 8, 10, 12, 14]);
    assert.equal(peak, 3);
  });

  it('starts nothing after a failure and waits for the calls in flight', async () => {
    const started: number[] = [];
    let settled = 0;
    await assert.rejects(
      mapBounded([0, 1, 2, 3, 4, 5], 2, async (n) => {
        started.push(n);
        await new Promise((r) => setImmediate(r));
        settled++;
        if (n === 1) throw new Error('fail 1');
      }),
      /fail 1/,
    );
    assert.deepEqual(started, [0, 1, 2]);
    assert.equal(settled, started.length, 'every started call settled before mapBounded returned');
  });

  it('formats sizes', () => {
    assert.equal(formatBytes(300), '300 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(20 * 1024 * 1024), '20.0 MiB');
  });
});
