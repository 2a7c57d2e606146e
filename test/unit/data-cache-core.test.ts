// Pure cores of the data cache: eviction choice, progress lines, the bounded pool, cache ids.
import { strict as assert } from 'node:assert';
import { planEviction, type CachedObject } from '../../agent/data/eviction';
import { runBounded } from '../../agent/data/pool';
import { formatBytes, startLine, summaryLine, SyncProgress } from '../../agent/data/progress';
import { cacheId } from '../../agent/data/store';

const obj = (id: string, size: number, lastUsedMs: number, nlink = 1): CachedObject => ({ id, size, lastUsedMs, nlink });

describe('data cache eviction plan', () => {
  it('evicts nothing while the cache fits', () => {
    const p = planEviction([obj('a', 10, 1), obj('b', 10, 2)], 20, new Set());
    assert.deepEqual(p, { evict: [], totalBytes: 20, remainingBytes: 20 });
  });

  it('evicts least recently used first, only until it fits', () => {
    const p = planEviction([obj('new', 10, 300), obj('old', 10, 100), obj('mid', 10, 200)], 15, new Set());
    assert.deepEqual(p.evict.map((o) => o.id), ['old', 'mid']);
    assert.equal(p.remainingBytes, 10);
  });

  it('never evicts objects linked into a view or pinned by a running sync', () => {
    const objects = [obj('linked', 100, 1, 2), obj('pinned', 100, 2), obj('free', 100, 3), obj('free2', 100, 4)];
    const p = planEviction(objects, 0, new Set(['pinned']));
    assert.deepEqual(p.evict.map((o) => o.id), ['free', 'free2']);
    assert.equal(p.totalBytes, 400);
    assert.equal(p.remainingBytes, 200, 'stays above the bound: the rest is in use');
  });
});

describe('data sync progress lines', () => {
  it('formats sizes', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1023), '1023 B');
    assert.equal(formatBytes(1024), '1.0 KiB');
    assert.equal(formatBytes(1.2 * 1024 ** 3), '1.2 GiB');
  });

  it('writes the start and summary lines', () => {
    assert.equal(startLine('s3://b/p/', '/data/mnist', 1234, 1.2 * 1024 ** 3, 300), 'syncing s3://b/p/ -> /data/mnist: 1,234 objects, 1.2 GiB (300 cached)');
    assert.equal(
      summaryLine('s3://b/p/', '/data/mnist', { objects: 3, bytes: 3 * 1024 ** 2, downloadedObjects: 2, downloadedBytes: 2e6, reusedObjects: 1, elapsedMs: 2000 }),
      'synced s3://b/p/ -> /data/mnist: 3 objects, 3.0 MiB in 2.0 s (2 downloaded, 1.9 MiB at 1.0 MB/s; 1 reused)',
    );
  });

  it('emits progress at most once per interval, with percent and rate', () => {
    let t = 1000;
    const lines: string[] = [];
    const p = new SyncProgress({ source: 's3://b/p/', totalObjects: 4, totalBytes: 4_000_000, emit: (l) => lines.push(l), now: () => t });
    p.addBytes(1_000_000);
    t += 1999;
    p.addBytes(1_000_000);
    assert.deepEqual(lines, [], 'nothing before the interval passed');
    t += 1;
    p.objectDone();
    assert.deepEqual(lines, ['syncing s3://b/p/: 50% (1.9 MiB of 3.8 MiB, 1 of 4 objects) at 1.0 MB/s']);
    p.addBytes(-1_000_000); // a failed attempt's bytes are taken back
    t += 2000;
    p.addBytes(0);
    assert.equal(lines.length, 2);
    assert.match(lines[1], /^syncing s3:\/\/b\/p\/: 25% /);
  });
});

describe('data sync worker pool', () => {
  it('runs at most `limit` at once and covers every item', async () => {
    let active = 0;
    let peak = 0;
    const seen: number[] = [];
    const gates: (() => void)[] = [];
    const items = Array.from({ length: 10 }, (_, i) => i);
    const done = runBounded(items, 3, async (i) => {
      active++;
      peak = Math.max(peak, active);
      await new Promise<void>((r) => gates.push(r));
      seen.push(i);
      active--;
    });
    while (seen.length < items.length) {
      await new Promise((r) => setImmediate(r));
      gates.splice(0).forEach((g) => g());
    }
    await done;
    assert.equal(peak, 3);
    assert.deepEqual(seen.sort((a, b) => a - b), items);
  });

  it('stops at the first failure, aborts the others and rejects with that failure after they settle', async () => {
    let settled = 0;
    let started = 0;
    const err = new Error('object 2 failed');
    await assert.rejects(
      runBounded([1, 2, 3, 4, 5, 6], 2, async (i, signal) => {
        started++;
        try {
          if (i === 2) throw err;
          await new Promise<void>((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }));
        } finally {
          settled++;
        }
      }),
      (e: unknown) => e === err,
    );
    assert.equal(started, 2, 'no new work after the failure');
    assert.equal(settled, started, 'everything in flight settled first');
  });
});

describe('data cache ids', () => {
  it('differ by bucket, key and ETag, and cannot be confused by separators', () => {
    const ids = new Set([cacheId('b', 'k', 'e'), cacheId('b', 'k', 'e2'), cacheId('b', 'k2', 'e'), cacheId('b2', 'k', 'e'), cacheId('b', 'k\0e', ''), cacheId('b', 'k', '\0e')]);
    assert.equal(ids.size, 6);
    assert.match(cacheId('b', 'k', 'e'), /^[0-9a-f]{64}$/);
    assert.equal(cacheId('b', 'k', 'e'), cacheId('b', 'k', 'e'));
  });
});
