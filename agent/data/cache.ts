// The agent's data-input cache. prepare() lists each input's S3 prefix, downloads what the cache
// lacks (a bounded pool; one download per object version even across concurrent prepares), builds
// a read-only view per input from hard links, and then evicts least recently used objects that no
// live view links to until the cache fits its bound. release() removes the views; the objects stay
// for the next trial. Every failure is a rejected promise with a DetError naming the source.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { abortReason } from '../../common/abort';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { CheckpointStorageOverrides } from '../../common/storage';
import { S3Storage } from '../../common/storage/s3';
import { formatS3Url, parseS3Url } from '../../common/storage/s3-url';
import type { DataInput } from '../../common/types';
import { downloadObject } from './download';
import { planEviction } from './eviction';
import { runBounded } from './pool';
import { emptyLine, startLine, summaryLine, SyncProgress } from './progress';
import { cacheId, ObjectStore } from './store';
import { buildView, removeView } from './view';
import { planView } from './view-plan';

/** Default cache size bound: 50 GiB. */
export const DEFAULT_MAX_BYTES = 50 * 1024 ** 3;
/** Default objects downloaded at once. */
export const DEFAULT_CONCURRENCY = 16;

/** Options of a DataCache. */
export interface DataCacheOptions {
  /** Cache directory, e.g. <work_dir>/data-cache; created if missing. Views should be on the same filesystem (hard links). */
  root: string;
  /** Cache size bound in bytes (default 50 GiB); after each prepare, least recently used objects no view uses are evicted. */
  maxBytes?: number;
  /** Objects downloaded at once (default 16). */
  concurrency?: number;
  log: Logger;
  /** Extras for S3Storage (tests pass credentials); production uses the SDK's default chain. */
  s3?: CheckpointStorageOverrides;
}

/** One synced input: what to bind-mount read-only where, and what the sync did. */
export interface PreparedInput {
  /** Path inside the container (the input's target). */
  target: string;
  /** Host directory to bind-mount read-only at `target`. */
  hostDir: string;
  objects: number;
  bytes: number;
  downloadedObjects: number;
  downloadedBytes: number;
  reusedObjects: number;
}

/** An object being fetched or evicted; others wait for it instead of touching the same file. */
interface InFlight {
  kind: 'fetch' | 'evict';
  promise: Promise<unknown>;
  /** The fetching prepare's signal: when it aborts, a waiter fetches itself. */
  signal?: AbortSignal;
}

interface Item {
  id: string;
  key: string;
  size: number;
  etag: string;
}

/** The data-input cache of one agent; see the file comment. One instance per root. */
export class DataCache {
  private readonly store: ObjectStore;
  private readonly maxBytes: number;
  private readonly concurrency: number;
  private readonly log: Logger;
  private initialized?: Promise<void>;
  private readonly inFlight = new Map<string, InFlight>();
  /** Objects that running prepares still need (use counts): never evicted. */
  private readonly pins = new Map<string, number>();
  private evicting: Promise<void> = Promise.resolve();

  constructor(private readonly opts: DataCacheOptions) {
    this.store = new ObjectStore(path.resolve(opts.root));
    this.maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    this.concurrency = Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY);
    this.log = opts.log;
  }

  /** Syncs every input and builds read-only views under viewRoot (one subdir per input); returns what to bind-mount. */
  async prepare(inputs: DataInput[], viewRoot: string, progress: (line: string) => void, signal?: AbortSignal): Promise<PreparedInput[]> {
    const root = path.resolve(viewRoot);
    const pinned: string[] = [];
    const built: string[] = [];
    try {
      signal?.throwIfAborted();
      // Every source is checked before anything is downloaded.
      const sources = inputs.map((input) => ({ input, url: parseS3Url(input.source) }));
      await this.init();
      await fs.mkdir(root, { recursive: true });
      const out: PreparedInput[] = [];
      for (const [i, { input, url }] of sources.entries()) {
        const viewDir = path.join(root, String(i));
        await removeView(viewDir);
        out.push(await this.prepareInput(input, url, viewDir, progress, pinned, built, signal));
      }
      return out;
    } catch (err) {
      for (const dir of built) await removeView(dir).catch(() => undefined);
      throw err instanceof DetError ? err : toDetError(err, signal, 'syncing data inputs');
    } finally {
      for (const id of pinned) this.unpin(id);
      await this.evict();
    }
  }

  /** Removes the views under viewRoot (cache objects stay); harmless if missing. */
  async release(viewRoot: string): Promise<void> {
    const root = path.resolve(viewRoot);
    let entries: string[];
    try {
      entries = await fs.readdir(root);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw new DetError('DET_ERR_INTERNAL', `cannot remove data views under ${root}: ${errorMessage(err)}`);
    }
    try {
      // Only what prepare() made: one numbered directory per input.
      for (const name of entries) if (/^\d+$/.test(name)) await removeView(path.join(root, name));
      await fs.rmdir(root).catch(() => undefined);
    } catch (err) {
      throw new DetError('DET_ERR_INTERNAL', `cannot remove data views under ${root}: ${errorMessage(err)}`);
    }
  }

  private init(): Promise<void> {
    this.initialized ??= this.store.init().catch((err) => {
      this.initialized = undefined;
      throw new DetError('DET_ERR_INTERNAL', `cannot create the data cache at ${this.store.root}: ${errorMessage(err)}`);
    });
    return this.initialized;
  }

  private async prepareInput(
    input: DataInput,
    url: { bucket: string; prefix: string },
    viewDir: string,
    progress: (line: string) => void,
    pinned: string[],
    built: string[],
    signal?: AbortSignal,
  ): Promise<PreparedInput> {
    const source = formatS3Url(url);
    const started = Date.now();
    const storage = new S3Storage({
      bucket: url.bucket,
      prefix: url.prefix,
      region: input.region,
      endpointUrl: input.endpointUrl,
      forcePathStyle: input.forcePathStyle,
      ...this.opts.s3,
    });
    try {
      const items: Item[] = [];
      try {
        for await (const o of storage.list('', signal)) {
          items.push({ id: cacheId(url.bucket, storage.objectKey(o.key), o.etag), key: o.key, size: o.size, etag: o.etag });
        }
        const plan = planView(items.map((it) => it.key), source);
        for (const it of items) {
          this.pin(it.id);
          pinned.push(it.id);
        }
        const cached = new Set<string>();
        for (const it of items) if (reusable(it) && !this.inFlight.has(it.id) && (await this.store.has(it.id, it.size))) cached.add(it.id);
        const bytes = items.reduce((sum, it) => sum + it.size, 0);
        const toFetch = items.filter((it) => !cached.has(it.id));
        progress(startLine(source, input.target, items.length, bytes, cached.size));
        if (items.length === 0) progress(emptyLine(source, input.target));
        const meter = new SyncProgress({
          source,
          totalObjects: toFetch.length,
          totalBytes: toFetch.reduce((sum, it) => sum + it.size, 0),
          emit: progress,
        });
        let downloadedObjects = 0;
        let downloadedBytes = 0;
        await runBounded(
          items,
          this.concurrency,
          async (it, sig) => {
            const got = await this.ensure(it, storage, meter, sig);
            if (got === 'downloaded') {
              downloadedObjects++;
              downloadedBytes += it.size;
              meter.objectDone();
            }
          },
          signal,
        );
        const byKey = new Map(items.map((it) => [it.key, it.id]));
        built.push(viewDir);
        const view = await buildView(viewDir, plan, (rel) => this.store.pathOf(byKey.get(rel)!), signal);
        if (view.copied > 0) {
          this.log.warn('data view files were copied, not hard-linked: put the data cache on the same filesystem as the views', { source, copied: view.copied });
        }
        const result: PreparedInput = {
          target: input.target,
          hostDir: viewDir,
          objects: items.length,
          bytes,
          downloadedObjects,
          downloadedBytes,
          reusedObjects: items.length - downloadedObjects,
        };
        progress(summaryLine(source, input.target, { ...result, elapsedMs: Date.now() - started }));
        this.log.info('data input synced', { source, target: input.target, objects: result.objects, bytes, downloaded: downloadedObjects, downloaded_bytes: downloadedBytes });
        return result;
      } catch (err) {
        throw toDetError(err, signal, `syncing data input ${source} -> ${input.target}`);
      }
    } finally {
      storage.destroy();
    }
  }

  // Makes object `it` present in the cache; 'downloaded' when this call fetched it.
  private async ensure(it: Item, storage: S3Storage, meter: SyncProgress, signal: AbortSignal): Promise<'downloaded' | 'reused'> {
    for (;;) {
      const running = this.inFlight.get(it.id);
      if (running) {
        try {
          await untilAborted(running.promise, signal);
        } catch (err) {
          signal.throwIfAborted();
          // The other prepare was cancelled: fetch it here.
          if (running.kind === 'fetch' && !running.signal?.aborted) throw err;
        }
        continue;
      }
      const fetch = (async (): Promise<'downloaded' | 'reused'> => {
        if (reusable(it) && (await this.store.has(it.id, it.size))) {
          await this.store.touch(it.id);
          return 'reused';
        }
        await downloadObject(it, { storage, store: this.store, log: this.log, onBytes: (n) => meter.addBytes(n) }, signal);
        return 'downloaded';
      })();
      this.inFlight.set(it.id, { kind: 'fetch', promise: fetch, signal });
      try {
        return await fetch;
      } finally {
        this.inFlight.delete(it.id);
      }
    }
  }

  private pin(id: string): void {
    this.pins.set(id, (this.pins.get(id) ?? 0) + 1);
  }

  private unpin(id: string): void {
    const n = (this.pins.get(id) ?? 0) - 1;
    if (n > 0) this.pins.set(id, n);
    else this.pins.delete(id);
  }

  // One eviction pass at a time; failures are logged (a full cache must not fail a trial that synced).
  private evict(): Promise<void> {
    const run = async () => {
      if (this.initialized === undefined) return;
      const objects = await this.store.scan();
      const plan = planEviction(objects, this.maxBytes, new Set(this.pins.keys()));
      let freed = 0;
      for (const o of plan.evict) {
        // Re-checked right before deleting: a prepare may have pinned or started fetching it since the scan.
        if (this.pins.has(o.id) || this.inFlight.has(o.id)) continue;
        const removal = this.store.remove(o.id);
        this.inFlight.set(o.id, { kind: 'evict', promise: removal });
        try {
          await removal;
          freed += o.size;
        } finally {
          this.inFlight.delete(o.id);
        }
      }
      if (plan.evict.length > 0) {
        const left = plan.totalBytes - freed;
        this.log.info('data cache evicted least recently used objects', { evicted: plan.evict.length, freed_bytes: freed, cache_bytes: left, max_bytes: this.maxBytes });
      }
      if (plan.remainingBytes > this.maxBytes) {
        this.log.warn('data cache is above its size bound: the rest is in use by views', { cache_bytes: plan.remainingBytes, max_bytes: this.maxBytes });
      }
    };
    this.evicting = this.evicting.then(run).catch((err) => this.log.warn('data cache eviction failed', { root: this.store.root, error: errorMessage(err) }));
    return this.evicting;
  }
}

// Servers that list no ETag give no way to tell versions apart: such objects are always fetched.
function reusable(it: Item): boolean {
  return it.etag !== '';
}

// Every failure as a DetError: `what` names the work ("syncing data input s3://b/p/ -> /data").
function toDetError(err: unknown, signal: AbortSignal | undefined, what: string): DetError {
  if (signal?.aborted) {
    const reason = abortReason(signal);
    if (reason instanceof DetError) return reason;
    return new DetError('DET_ERR_INTERNAL', `${what} was cancelled: ${reason.message}`);
  }
  const context = what.replace(/^syncing /, 'cannot sync ');
  if (err instanceof DetError) return new DetError(err.code, `${context}: ${err.message}`);
  return new DetError('DET_ERR_INTERNAL', `${context}: ${errorMessage(err)}`, { cause: err });
}

// Waits for `p`, or rejects when `signal` aborts first.
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
