// Uploads completed checkpoints (see contract.ts) to the experiment's checkpoint storage, in the
// layout of common/checkpoints/layout.ts: files first, in parallel, each retried with backoff,
// then the manifest LAST. A checkpoint whose upload fails leaves no manifest, and what the
// attempt uploaded is deleted again (best effort). One uploader serves one trial allocation: it
// remembers the content of the trial's stored checkpoints and uploads each content once
// (dedupe.ts), and its HashCache spares re-hashing unchanged files.
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import type { BackoffOptions } from '../../common/backoff';
import { checkpointPrefix, manifestKey as manifestKeyOf } from '../../common/checkpoints/layout';
import { buildManifest, type CheckpointInfo, type Manifest, type ManifestFile } from '../../common/checkpoints/manifest';
import { DEFAULT_STORAGE_ATTEMPTS, formatBytes, mapBounded, STORAGE_RETRY_BACKOFF, transferSignal, withRetries } from '../../common/checkpoints/transfer';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { CheckpointStorage } from '../../common/storage';
import { planUpload } from './dedupe';
import type { HashCache } from './hash-cache';

/** Default number of files uploaded at once. */
export const DEFAULT_FILE_CONCURRENCY = 16;

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
    const built = await buildManifest(dir, info, { hash: this.opts.hashCache?.hash });
    const plan = planUpload(built, this.stored);
    const manifest: Manifest = { ...built, files: plan.files };
    this.progress(
      `${what}: uploading ${plan.upload.length} file(s), ${formatBytes(plan.uploadBytes)}` +
        (plan.skip.length ? `; ${plan.skip.length} file(s), ${formatBytes(plan.skippedBytes)}, already stored` : '') +
        ` to ${storage.location(checkpointPrefix(info.uuid).slice(0, -1))}`,
    );
    const attempted: string[] = [];
    try {
      const root = await fs.realpath(dir);
      await mapBounded(plan.upload, Math.max(1, this.opts.fileConcurrency ?? DEFAULT_FILE_CONCURRENCY), async (f) => {
        attempted.push(f.key);
        await withRetries(() => this.putFile(root, f, signal), {
          signal,
          maxAttempts: this.opts.maxAttempts ?? DEFAULT_STORAGE_ATTEMPTS,
          backoff: this.opts.backoff ?? STORAGE_RETRY_BACKOFF,
          onRetry: (attempt, delayMs, err) => {
            log.warn('uploading a checkpoint file failed; retrying', { uuid: info.uuid, file: f.path, attempt, delayMs, err: errorMessage(err) });
            this.progress(`${what}: retrying ${f.path} in ${delayMs} ms after attempt ${attempt} failed: ${errorMessage(err)}`);
          },
        });
      });
      // LAST: only now does the checkpoint exist.
      const body = Buffer.from(JSON.stringify(manifest) + '\n');
      attempted.push(mKey);
      await withRetries(() => storage.put(mKey, body, { size: body.length, contentType: 'application/json' }, signal), {
        signal,
        maxAttempts: this.opts.maxAttempts ?? DEFAULT_STORAGE_ATTEMPTS,
        backoff: this.opts.backoff ?? STORAGE_RETRY_BACKOFF,
      });
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
  // real path was checked to be inside the checkpoint, and hashed while it streams: what is stored
  // must be what the manifest says, even if the trial broke the contract and changed the file.
  private async putFile(root: string, f: ManifestFile, signal?: AbortSignal): Promise<void> {
    const real = await fs.realpath(path.join(root, ...f.path.split('/')));
    if (!isInside(root, real)) throw changed(f, `it now resolves outside the checkpoint (to ${real})`);
    const fh = await fs.open(real, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw changed(f, 'it is no longer a regular file');
      if (st.size !== f.size) throw changed(f, `it has ${st.size} bytes now, ${f.size} when it was hashed`);
      const hash = createHash('sha256');
      let bytes = 0;
      const tap = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          bytes += chunk.length;
          cb(null, chunk);
        },
      });
      const source = fh.createReadStream({ autoClose: false, start: 0 });
      source.on('error', (err) => tap.destroy(err));
      try {
        await this.opts.storage.put(f.key, source.pipe(tap), { size: f.size }, signal);
      } finally {
        source.destroy();
        tap.destroy();
      }
      const sha256 = hash.digest('hex');
      if (bytes !== f.size || sha256 !== f.sha256) throw changed(f, 'its content differs from when it was hashed');
    } finally {
      await fh.close();
    }
  }

  // Best effort: the manifest first (it should not exist, but a timed-out put may have landed),
  // then the files this attempt started. Errors are logged; the caller reports the upload's own.
  private async cleanup(uuid: string, mKey: string, attempted: string[]): Promise<void> {
    if (attempted.length === 0) return;
    const keys = attempted.includes(mKey) ? [mKey, ...attempted.filter((k) => k !== mKey)] : attempted;
    try {
      await withRetries(() => this.opts.storage.delete([keys[0]]), { maxAttempts: 2 });
      if (keys.length > 1) await withRetries(() => this.opts.storage.delete(keys.slice(1)), { maxAttempts: 2 });
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
