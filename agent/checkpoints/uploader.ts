// Uploads completed checkpoints (see contract.ts) to the experiment's checkpoint storage, in the
// layout of common/checkpoints/layout.ts: files first, in parallel, each retried with backoff,
// then the manifest LAST. A checkpoint whose upload fails leaves no manifest, and what the
// attempt uploaded is deleted again (best effort). One uploader serves one trial allocation: it
// remembers the content of the trial's stored checkpoints and uploads each content once
// (dedupe.ts), and its HashCache spares re-hashing unchanged files.
import { createHash } from 'node:crypto';
import { constants as fsConstants, type BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { BackoffOptions } from '../../common/backoff';
import { checkpointPrefix, manifestKey as manifestKeyOf } from '../../common/checkpoints/layout';
import { buildManifest, hashFile, READ_CHUNK_BYTES, type CheckpointInfo, type HashFn, type Manifest, type ManifestFile } from '../../common/checkpoints/manifest';
import { DEFAULT_STORAGE_ATTEMPTS, formatBytes, mapBounded, STORAGE_RETRY_BACKOFF, transferSignal, withRetries } from '../../common/checkpoints/transfer';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { CheckpointStorage } from '../../common/storage';
import { planUpload } from './dedupe';
import type { HashCache } from './hash-cache';

/** Default number of files uploaded at once. */
export const DEFAULT_FILE_CONCURRENCY = 16;
/** Longest time the removal of a failed upload's objects may take. */
const CLEANUP_TIMEOUT_MS = 60_000;
/** Files up to this size are read into memory in one go and sent as one buffer. */
const SMALL_FILE_BYTES = 1024 * 1024;

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

  private async uploadOnce(dir: string, info: CheckpointInfo, signal: AbortSignal): Promise<UploadedCheckpoint> {
    const { storage, log } = this.opts;
    const started = performance.now();
    const what = `checkpoint ${info.name} (${info.uuid})`;
    const mKey = manifestKeyOf(info.uuid);
    // Identity of every large file when it was hashed, by real path: putFile checks it instead of
    // hashing the file again while it streams.
    const hashedAs = new Map<string, string>();
    const hashOnce = this.opts.hashCache?.hash ?? hashFile;
    const hash: HashFn = async (file) => {
      const before = await fs.stat(file, { bigint: true });
      if (before.size <= SMALL_FILE_BYTES) return hashOnce(file);
      const got = await hashOnce(file);
      const after = await fs.stat(file, { bigint: true });
      if (identityOf(after) === identityOf(before)) hashedAs.set(file, identityOf(after));
      return got;
    };
    let built: Manifest;
    try {
      built = await buildManifest(dir, info, { hash });
    } catch (err) {
      const message = `cannot upload ${what}: ${errorMessage(err)}`;
      this.progress(message);
      throw new DetError(err instanceof DetError ? err.code : 'DET_ERR_INTERNAL', message);
    }
    const plan = planUpload(built, this.stored);
    const manifest: Manifest = { ...built, files: plan.files };
    this.progress(
      `${what}: uploading ${plan.upload.length} file(s), ${formatBytes(plan.uploadBytes)}` +
        (plan.skip.length ? `; ${plan.skip.length} file(s), ${formatBytes(plan.skippedBytes)}, already stored` : '') +
        ` to ${storage.location(checkpointPrefix(info.uuid).slice(0, -1))}`,
    );
    const attempted: string[] = [];
    const retry = (object: string) => ({
      signal,
      maxAttempts: this.opts.maxAttempts ?? DEFAULT_STORAGE_ATTEMPTS,
      backoff: this.opts.backoff ?? STORAGE_RETRY_BACKOFF,
      onRetry: (attempt: number, delayMs: number, err: unknown) => {
        log.warn('uploading a checkpoint object failed; retrying', { uuid: info.uuid, object, attempt, delayMs, err: errorMessage(err) });
        this.progress(`checkpoint ${info.name}: retrying ${object} in ${delayMs} ms after attempt ${attempt} failed: ${errorMessage(err)}`);
      },
    });
    try {
      const root = await fs.realpath(dir);
      await mapBounded(plan.upload, Math.max(1, this.opts.fileConcurrency ?? DEFAULT_FILE_CONCURRENCY), async (f) => {
        attempted.push(f.key);
        await withRetries(() => this.putFile(root, f, hashedAs, signal), retry(f.path));
      });
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

  // One attempt at uploading `f`. The file is opened without following a final symlink after its
  // real path was checked to be inside the checkpoint, and what is sent must be what was hashed,
  // even if the trial broke the contract and changed the file. On S3 a single PUT is signed with
  // the manifest's sha256 and S3 refuses other content, but S3-compatible servers may not check
  // (s3rver does not), so: small files are hashed again in memory before they are sent (about
  // 1 CPU-s per GB); for large ones the identity (device, inode, size, mtime and ctime, which no
  // one can set back) must be the one they had when hashed, before and after.
  private async putFile(root: string, f: ManifestFile, hashedAs: ReadonlyMap<string, string>, signal?: AbortSignal): Promise<void> {
    const real = await fs.realpath(path.join(root, ...f.path.split('/')));
    if (!isInside(root, real)) throw changed(f, `it now resolves outside the checkpoint (to ${real})`);
    const fh = await fs.open(real, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      const st = await fh.stat({ bigint: true });
      if (!st.isFile()) throw changed(f, 'it is no longer a regular file');
      if (st.size !== BigInt(f.size)) throw changed(f, `it has ${st.size} bytes now, ${f.size} when it was hashed`);
      if (f.size <= SMALL_FILE_BYTES) {
        const body = await fh.readFile();
        if (body.length !== f.size || sha256Of(body) !== f.sha256) throw changed(f, 'its content differs from when it was hashed');
        await this.opts.storage.put(f.key, body, { size: f.size, sha256: f.sha256 }, signal);
        return;
      }
      const expected = hashedAs.get(real);
      if (expected === undefined) throw changed(f, 'it was modified while it was hashed');
      if (identityOf(st) !== expected) throw changed(f, 'it was modified after it was hashed');
      // Destroying the stream would close `fh` too: only on failure (the handle is closed below anyway).
      const source = fh.createReadStream({ autoClose: false, start: 0, highWaterMark: READ_CHUNK_BYTES });
      try {
        await this.opts.storage.put(f.key, source, { size: f.size, sha256: f.sha256 }, signal);
      } catch (err) {
        source.destroy();
        throw err;
      }
      // On a change the upload fails and its cleanup removes the object.
      if (identityOf(await fh.stat({ bigint: true })) !== expected) throw changed(f, 'it was modified while it was uploaded');
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

function changed(f: ManifestFile, why: string): DetError {
  return new DetError(
    'DET_ERR_INVALID_ARGUMENT',
    `checkpoint file ${JSON.stringify(f.path)} changed during the upload (${why}): a trial must not modify a checkpoint after writing its .det-complete marker`,
  );
}

/** What identifies a file's content: any write changes mtime and ctime, and ctime cannot be set back. */
function identityOf(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

function sha256Of(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function isInside(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel !== '' && !rel.startsWith('..' + path.sep) && rel !== '..' && !path.isAbsolute(rel);
}

function mbPerSecond(bytes: number, seconds: number): string {
  return seconds > 0 ? (bytes / 1e6 / seconds).toFixed(1) : '-';
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
