// Uploads completed checkpoints (see contract.ts) to the experiment's checkpoint storage, in the
// layout of common/checkpoints/layout.ts: files first, in parallel, each uploaded as soon as its
// hash is known (upload-pipeline.ts) and retried with backoff, then the manifest LAST. A checkpoint whose upload fails leaves no manifest, and what the
// attempt uploaded is deleted again (best effort). One uploader serves one trial allocation: it
// remembers the content of the trial's stored checkpoints and uploads each content once
// (dedupe.ts), and its HashCache spares re-hashing unchanged files.
import type { BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { BackoffOptions } from '../../common/backoff';
import { checkpointPrefix, fileKey, manifestKey as manifestKeyOf } from '../../common/checkpoints/layout';
import {
  assembleManifest,
  hashFile,
  listCheckpoint,
  type CheckpointEntry,
  type CheckpointInfo,
  type CheckpointListing,
  type Manifest,
  type ManifestFile,
} from '../../common/checkpoints/manifest';
import { DEFAULT_STORAGE_ATTEMPTS, formatBytes, mapBounded, STORAGE_RETRY_BACKOFF, transferSignal, withRetries } from '../../common/checkpoints/transfer';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { CheckpointStorage } from '../../common/storage';
import { planUpload, UploadPlanner, type UploadPlan } from './dedupe';
import type { HashCache } from './hash-cache';
import { fileChanged, openInCheckpoint, readSmallFile, SizeOrder, SMALL_FILE_BYTES, type SmallFile } from './upload-pipeline';

/** Default number of files uploaded at once. */
export const DEFAULT_FILE_CONCURRENCY = 16;
/** Longest time the removal of a failed upload's objects may take. */
const CLEANUP_TIMEOUT_MS = 60_000;

/** Options of a CheckpointUploader. */
export interface UploaderOptions {
  storage: CheckpointStorage;
  log: Logger;
  /** Files uploaded at once (default 16). Each large S3 file also has its own parts in flight. */
  fileConcurrency?: number;
  /** Attempts per file, the first included (default 5). */
  maxAttempts?: number;
  /** Delay between attempts (default 200 ms doubling to 10 s, half jitter). */
  backoff?: BackoffOptions;
  /** Remembers file hashes across uploads (default: none, every file is hashed). */
  hashCache?: HashCache;
  /** Human-readable lines that the agent puts into the trial log. */
  onProgress?: (line: string) => void;
}

/** What an upload stored. */
export interface UploadedCheckpoint {
  manifest: Manifest;
  /** Storage key of the manifest. */
  manifestKey: string;
  /** storage.location(manifestKey). */
  location: string;
  uploadedFiles: number;
  uploadedBytes: number;
  /** Files not uploaded because their content was already stored. */
  skippedFiles: number;
  skippedBytes: number;
}

/** Uploads the checkpoints of one trial allocation; see the file comment. */
export class CheckpointUploader {
  private readonly opts: UploaderOptions;
  /** Content already stored for this trial: sha256 -> key of the object holding it. */
  private readonly stored = new Map<string, string>();

  constructor(opts: UploaderOptions) {
    this.opts = opts;
  }

  /** Counts the content of an already stored checkpoint (e.g. the one a restarted trial resumes from) as stored. */
  remember(manifest: Manifest): void {
    for (const f of manifest.files) if (!this.stored.has(f.sha256)) this.stored.set(f.sha256, f.key);
  }

  /**
   * Uploads the completed checkpoint in `dir` as checkpoint `info.uuid` and resolves once its
   * manifest is stored. On failure nothing of this attempt stays in storage (best effort) and the
   * DetError names the checkpoint and the cause.
   */
  async upload(dir: string, info: CheckpointInfo, signal?: AbortSignal): Promise<UploadedCheckpoint> {
    const linked = transferSignal(signal);
    try {
      return await this.uploadOnce(dir, info, linked.signal);
    } finally {
      linked.dispose();
    }
  }

  // Files go through one bounded pipeline (fileConcurrency files at once, so at most that many
  // small-file buffers): each is hashed (a small one read once, its buffer kept to be sent),
  // decided (dedupe, in SizeOrder) and uploaded at once, while other files are still being hashed.
  private async uploadOnce(dir: string, info: CheckpointInfo, signal: AbortSignal): Promise<UploadedCheckpoint> {
    const { storage, log } = this.opts;
    const started = performance.now();
    const what = `checkpoint ${info.name} (${info.uuid})`;
    const mKey = manifestKeyOf(info.uuid);
    let listing: CheckpointListing;
    try {
      listing = await listCheckpoint(dir, info);
    } catch (err) {
      const message = `cannot upload ${what}: ${errorMessage(err)}`;
      this.progress(message);
      throw new DetError(err instanceof DetError ? err.code : 'DET_ERR_INTERNAL', message);
    }
    const { root, entries } = listing;
    const stored = new Map(this.stored); // what this attempt decides against, start to end
    const planner = new UploadPlanner(stored);
    const order = new SizeOrder(entries.map((e) => e.stat.size));
    const files = new Array<ManifestFile>(entries.length);
    const uploaded: string[] = [];
    const attempted: string[] = [];
    let plan: UploadPlan | undefined;
    let decided = 0;
    const announce = () => {
      plan = planUpload({ files }, stored);
      this.progress(
        `${what}: uploading ${plan.upload.length} file(s), ${formatBytes(plan.uploadBytes)}` +
          (plan.skip.length ? `; ${plan.skip.length} file(s), ${formatBytes(plan.skippedBytes)}, already stored` : '') +
          ` to ${storage.location(checkpointPrefix(info.uuid).slice(0, -1))}`,
      );
    };
    const retry = (object: string) => ({
      signal,
      maxAttempts: this.opts.maxAttempts ?? DEFAULT_STORAGE_ATTEMPTS,
      backoff: this.opts.backoff ?? STORAGE_RETRY_BACKOFF,
      onRetry: (attempt: number, delayMs: number, err: unknown) => {
        log.warn('uploading a checkpoint object failed; retrying', { uuid: info.uuid, object, attempt, delayMs, err: errorMessage(err) });
        this.progress(`checkpoint ${info.name}: retrying ${object} in ${delayMs} ms after attempt ${attempt} failed: ${errorMessage(err)}`);
      },
    });
    // Records file i as hashed and decides whether its content goes up now.
    const decide = (i: number, f: ManifestFile): boolean => {
      files[i] = f;
      const { upload } = planner.decide(f);
      order.done(i);
      if (++decided === entries.length) announce();
      return upload;
    };
    const transfer = async (e: CheckpointEntry, i: number): Promise<void> => {
      signal.throwIfAborted();
      const key = fileKey(info.uuid, e.rel);
      const size = Number(e.stat.size);
      if (size <= SMALL_FILE_BYTES) {
        const cache = this.opts.hashCache;
        const cached = cache?.lookup(e.stat);
        let read = cached === undefined ? await this.readOnce(root, e) : undefined;
        await order.turn(i);
        // Content known from the cache and already stored (or planned) is not read at all.
        if (read === undefined && (cached === undefined || planner.holder(cached) === undefined)) read = await this.readOnce(root, e);
        const sha256 = read?.sha256 ?? (cached as string);
        if (!decide(i, { path: e.rel, size, sha256, key }) || read === undefined) return;
        const body = read.body;
        attempted.push(key);
        await withRetries(() => storage.put(key, body, { size, sha256 }, signal), retry(e.rel));
      } else {
        const hashed = await this.hashLarge(e);
        if (hashed.size !== size) throw fileChanged(e.rel, `it has ${hashed.size} bytes now, ${size} when it was listed`);
        await order.turn(i);
        const f: ManifestFile = { path: e.rel, size, sha256: hashed.sha256, key };
        if (!decide(i, f)) return;
        attempted.push(key);
        await withRetries(() => this.putLarge(root, f, hashed.identity, signal), retry(e.rel));
      }
      uploaded.push(key);
    };
    let manifest: Manifest;
    try {
      if (entries.length === 0) announce();
      await mapBounded(entries, Math.max(1, this.opts.fileConcurrency ?? DEFAULT_FILE_CONCURRENCY), async (e, i) => {
        try {
          await transfer(e, i);
        } finally {
          order.done(i); // a failed file must not leave the next of its size waiting
        }
      });
      if (!plan) throw new DetError('DET_ERR_INTERNAL', 'not every file was hashed');
      // What went up must be exactly what planUpload says: the manifest points only at it.
      const missing = symmetricDifference(plan.upload.map((f) => f.key), uploaded);
      if (missing.length) throw new DetError('DET_ERR_INTERNAL', `the uploaded objects differ from the upload plan (${missing.slice(0, 3).join(', ')})`);
      manifest = { ...assembleManifest(info, files, listing.metadata), files: plan.files };
      // LAST: only now does the checkpoint exist.
      const body = Buffer.from(JSON.stringify(manifest) + '\n');
      attempted.push(mKey);
      await withRetries(() => storage.put(mKey, body, { size: body.length, contentType: 'application/json' }, signal), retry('the manifest'));
    } catch (err) {
      await this.cleanup(info.uuid, mKey, attempted);
      const message = `cannot upload ${what} to ${storage.location(mKey)}: ${signal.aborted ? `aborted (${errorMessage(signal.reason)})` : errorMessage(err)}`;
      this.progress(message);
      if (signal.aborted) throw signal.reason;
      throw new DetError(err instanceof DetError ? err.code : 'DET_ERR_INTERNAL', message);
    }
    this.remember(manifest);
    const seconds = (performance.now() - started) / 1000;
    const result: UploadedCheckpoint = {
      manifest,
      manifestKey: mKey,
      location: storage.location(mKey),
      uploadedFiles: plan.upload.length,
      uploadedBytes: plan.uploadBytes,
      skippedFiles: plan.skip.length,
      skippedBytes: plan.skippedBytes,
    };
    log.info('checkpoint uploaded', { uuid: info.uuid, name: info.name, files: manifest.files.length, uploadedBytes: plan.uploadBytes, skippedBytes: plan.skippedBytes, seconds: round2(seconds) });
    this.progress(`${what}: stored at ${result.location} in ${seconds.toFixed(1)} s (${formatBytes(plan.uploadBytes)} uploaded, ${mbPerSecond(plan.uploadBytes, seconds)} MB/s)`);
    return result;
  }

  // A small file, read once; the hash cache learns its sha256.
  private async readOnce(root: string, e: CheckpointEntry): Promise<SmallFile> {
    const read = await readSmallFile(root, e);
    this.opts.hashCache?.set(read.stat, read.sha256);
    return read;
  }

  // Size and sha256 of a large file, streamed (through the hash cache), and its identity when it
  // did not change while it was hashed: putLarge checks it instead of hashing the file again.
  private async hashLarge(e: CheckpointEntry): Promise<{ size: number; sha256: string; identity?: string }> {
    const before = await fs.stat(e.abs, { bigint: true });
    const got = await (this.opts.hashCache?.hash ?? hashFile)(e.abs);
    const after = await fs.stat(e.abs, { bigint: true });
    return identityOf(after) === identityOf(before) ? { ...got, identity: identityOf(after) } : got;
  }

  // One attempt at uploading the large file `f`, read from its open handle (a FileSource: the
  // storage reads it into reused buffers and may send it again on a retry). It is opened without
  // following a final symlink after its real path was checked to be inside the checkpoint, and what is sent
  // must be what was hashed, even if the trial broke the contract and changed the file. On S3 a
  // single PUT is signed with the manifest's sha256 and S3 refuses other content, but
  // S3-compatible servers may not check (s3rver does not), so the identity (device, inode, size,
  // mtime and ctime, which no one can set back) must be the one the file had when hashed, before
  // and after.
  private async putLarge(root: string, f: ManifestFile, expected: string | undefined, signal?: AbortSignal): Promise<void> {
    const { fh, stat: st } = await openInCheckpoint(root, f.path, BigInt(f.size), 'hashed');
    try {
      if (expected === undefined) throw fileChanged(f.path, 'it was modified while it was hashed');
      if (identityOf(st) !== expected) throw fileChanged(f.path, 'it was modified after it was hashed');
      await this.opts.storage.put(f.key, { handle: fh, size: f.size }, { sha256: f.sha256 }, signal);
      // On a change the upload fails and its cleanup removes the object.
      if (identityOf(await fh.stat({ bigint: true })) !== expected) throw fileChanged(f.path, 'it was modified while it was uploaded');
    } finally {
      await fh.close();
    }
  }

  // Best effort: the manifest first (it should not exist, but a timed-out put may have landed),
  // then the files this attempt started. Bounded in time (storage that hangs must not hang the
  // agent's shutdown); errors are logged, the caller reports the upload's own.
  private async cleanup(uuid: string, mKey: string, attempted: string[]): Promise<void> {
    if (attempted.length === 0) return;
    const keys = attempted.includes(mKey) ? [mKey, ...attempted.filter((k) => k !== mKey)] : attempted;
    const signal = AbortSignal.timeout(CLEANUP_TIMEOUT_MS);
    try {
      await withRetries(() => this.opts.storage.delete([keys[0]], signal), { maxAttempts: 2, signal });
      if (keys.length > 1) await withRetries(() => this.opts.storage.delete(keys.slice(1), signal), { maxAttempts: 2, signal });
    } catch (err) {
      this.opts.log.warn('cannot remove the objects of a failed checkpoint upload; they are no checkpoint (no manifest) and can be deleted', {
        uuid,
        objects: keys.length,
        err: errorMessage(err),
      });
    }
  }

  private progress(line: string): void {
    try {
      this.opts.onProgress?.(line);
    } catch (err) {
      this.opts.log.warn('onProgress threw', { err: errorMessage(err) });
    }
  }
}

/** Keys in exactly one of `a` and `b`. */
function symmetricDifference(a: readonly string[], b: readonly string[]): string[] {
  const sa = new Set(a);
  const sb = new Set(b);
  return [...a.filter((k) => !sb.has(k)), ...b.filter((k) => !sa.has(k))];
}

/** What identifies a file's content: any write changes mtime and ctime, and ctime cannot be set back. */
function identityOf(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

function mbPerSecond(bytes: number, seconds: number): string {
  return seconds > 0 ? (bytes / 1e6 / seconds).toFixed(1) : '-';
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
