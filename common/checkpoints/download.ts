// Downloads a checkpoint from checkpoint storage into a local directory: used by
// `det checkpoint download` and by the agent when a trial restarts from a checkpoint. The
// manifest is the only source of truth; everything it names is checked before anything is
// written, each file lands under a temp name and is renamed into place only after its size and
// sha256 match, and a failed download leaves no partial target behind.
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DetError, errorMessage } from '../errors';
import { isObjectNotFound, type CheckpointStorage } from '../storage';
import { validateKey } from '../storage/paths';
import { checkpointUuidProblem, manifestKey } from './layout';
import { parseManifest, resolveManifestPath, verifyFileAgainstManifest, type Manifest, type ManifestFile } from './manifest';
import { DEFAULT_STORAGE_ATTEMPTS, formatBytes, mapBounded, STORAGE_RETRY_BACKOFF, transferSignal, withRetries } from './transfer';
import type { BackoffOptions } from '../backoff';

/** Largest manifest read (about 300,000 files); a bigger object is not a manifest we wrote. */
export const MAX_MANIFEST_BYTES = 128 * 1024 * 1024;
/** Default number of files downloaded at once. */
export const DEFAULT_DOWNLOAD_CONCURRENCY = 8;
/** Temp files of unfinished downloads start with this. */
const TEMP_PREFIX = '.det-tmp-';

/** How far a download is. */
export interface DownloadProgress {
  doneBytes: number;
  totalBytes: number;
  doneFiles: number;
  totalFiles: number;
}

/** Options of downloadCheckpoint. */
export interface DownloadOptions {
  /** Files downloaded at once (default 8). */
  concurrency?: number;
  signal?: AbortSignal;
  /** Called once at the start and after every file. */
  onProgress?: (p: DownloadProgress) => void;
  /** Attempts per file (default 5). */
  maxAttempts?: number;
  /** Delay between attempts (default 200 ms doubling to 10 s). */
  backoff?: BackoffOptions;
}

/**
 * Reads and validates checkpoint `uuid`'s manifest. Throws DET_ERR_CHECKPOINT_NOT_FOUND when there
 * is none (the checkpoint does not exist or was never completed), DET_ERR_INVALID_ARGUMENT when it
 * is invalid; transient storage errors are retried with backoff.
 */
export async function readManifest(storage: CheckpointStorage, uuid: string, signal?: AbortSignal): Promise<Manifest> {
  const problem = checkpointUuidProblem(uuid);
  if (problem) throw new DetError('DET_ERR_INVALID_ARGUMENT', `invalid checkpoint uuid ${JSON.stringify(uuid)}: ${problem}`);
  const key = manifestKey(uuid);
  let text: string;
  try {
    text = await withRetries(async () => readSmall(await storage.get(key, signal), MAX_MANIFEST_BYTES, storage.location(key)), { signal });
  } catch (err) {
    if (isObjectNotFound(err)) {
      throw new DetError('DET_ERR_CHECKPOINT_NOT_FOUND', `checkpoint ${uuid} has no manifest at ${storage.location(key)}: it does not exist or was not completed`);
    }
    throw err;
  }
  let manifest: Manifest;
  try {
    manifest = parseManifest(text);
  } catch (err) {
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `the manifest of checkpoint ${uuid} at ${storage.location(key)} is unusable: ${errorMessage(err)}`);
  }
  if (manifest.uuid !== uuid) {
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `the manifest at ${storage.location(key)} belongs to checkpoint ${manifest.uuid}, not ${uuid}: refusing it`);
  }
  return manifest;
}

/**
 * Downloads checkpoint `uuid` into `targetDir`, which must not exist or be empty. Resolves with
 * the manifest once every file is in place and verified; on failure removes what it wrote
 * (and `targetDir` itself when it created it) and throws a DetError that names the checkpoint.
 */
export async function downloadCheckpoint(storage: CheckpointStorage, uuid: string, targetDir: string, opts: DownloadOptions = {}): Promise<Manifest> {
  const linked = transferSignal(opts.signal);
  try {
    return await downloadOnce(storage, uuid, targetDir, opts, linked.signal);
  } finally {
    linked.dispose();
  }
}

async function downloadOnce(storage: CheckpointStorage, uuid: string, targetDir: string, opts: DownloadOptions, signal: AbortSignal): Promise<Manifest> {
  const manifest = await readManifest(storage, uuid, signal);
  const target = path.resolve(targetDir);
  // Everything the manifest names is checked before the first write.
  const groups = checkPlan(manifest, target);
  const created = await prepareTarget(target);
  const progress: DownloadProgress = { doneBytes: 0, totalBytes: manifest.totalSize, doneFiles: 0, totalFiles: manifest.files.length };
  opts.onProgress?.({ ...progress });
  try {
    const root = await fs.realpath(target);
    await mapBounded(groups, Math.max(1, opts.concurrency ?? DEFAULT_DOWNLOAD_CONCURRENCY), async (files) => {
      const [first, ...copies] = files;
      await withRetries(() => fetchFile(storage, root, first, signal), { signal, maxAttempts: opts.maxAttempts ?? DEFAULT_STORAGE_ATTEMPTS, backoff: opts.backoff ?? STORAGE_RETRY_BACKOFF });
      // The same content under other paths: copied locally, not fetched again.
      for (const f of [first, ...copies]) {
        if (f !== first) await copyLocal(root, first, f);
        progress.doneBytes += f.size;
        progress.doneFiles++;
        opts.onProgress?.({ ...progress });
      }
    });
  } catch (err) {
    await removePartial(target, created);
    if (signal.aborted) throw signal.reason;
    const code = err instanceof DetError ? err.code : 'DET_ERR_INTERNAL';
    throw new DetError(code, `cannot download checkpoint ${uuid} to ${target}: ${errorMessage(err)}`);
  }
  return manifest;
}

// Validates every path and key and groups the files by key (first file of each group is fetched).
function checkPlan(manifest: Manifest, target: string): ManifestFile[][] {
  const groups = new Map<string, ManifestFile[]>();
  const files = new Set<string>();
  for (const f of manifest.files) {
    resolveManifestPath(target, f.path);
    validateKey(f.key);
    files.add(f.path);
    const g = groups.get(f.key);
    if (g) g.push(f);
    else groups.set(f.key, [f]);
  }
  // A path that is also a directory of another path ("a" and "a/b") cannot be written.
  for (const p of files) {
    for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) {
      if (files.has(p.slice(0, i))) {
        throw new DetError('DET_ERR_INVALID_ARGUMENT', `refusing checkpoint ${manifest.uuid}: ${JSON.stringify(p.slice(0, i))} is both a file and a directory of ${JSON.stringify(p)}`);
      }
    }
  }
  return [...groups.values()];
}

// Creates the target, or checks that it is an empty directory; says whether it created it.
async function prepareTarget(target: string): Promise<boolean> {
  let entries: string[];
  try {
    entries = await fs.readdir(target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      try {
        await fs.mkdir(target, { recursive: true });
      } catch (mkErr) {
        throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot create the download directory ${target}: ${errorMessage(mkErr)}`);
      }
      return true;
    }
    if (code === 'ENOTDIR') throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot download into ${target}: it exists and is not a directory`);
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot read the download directory ${target}: ${errorMessage(err)}`);
  }
  if (entries.length > 0) {
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot download into ${target}: the directory is not empty (${entries.length} entries); choose a new or empty directory`);
  }
  return false;
}

// One attempt at fetching `f` from storage into place under `root`.
async function fetchFile(storage: CheckpointStorage, root: string, f: ManifestFile, signal?: AbortSignal): Promise<void> {
  const { dest, tmp } = await placeFor(root, f);
  try {
    const body = await storage.get(f.key, signal);
    await pipeline(body, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }), { signal });
    await verifyFileAgainstManifest(tmp, f);
    await fs.rename(tmp, dest);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    if (isObjectNotFound(err)) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `checkpoint file ${JSON.stringify(f.path)} is missing from storage (${storage.location(f.key)})`);
    }
    throw err;
  }
}

async function copyLocal(root: string, from: ManifestFile, to: ManifestFile): Promise<void> {
  const { dest, tmp } = await placeFor(root, to);
  try {
    await fs.copyFile(resolveManifestPath(root, from.path), tmp, fs.constants.COPYFILE_EXCL);
    await fs.rename(tmp, dest);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

// Where `f` goes and its temp name. Downloads create only plain directories, so a symlink on the
// way (planted in the target meanwhile) is refused, before and after creating the directory.
async function placeFor(root: string, f: ManifestFile): Promise<{ dest: string; tmp: string }> {
  const dest = resolveManifestPath(root, f.path);
  const dir = path.dirname(dest);
  await refuseSymlinks(root, dir, f);
  await fs.mkdir(dir, { recursive: true });
  await refuseSymlinks(root, dir, f);
  return { dest, tmp: path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`) };
}

// The deepest existing directory from `dir` up to `root` must be its own real path.
async function refuseSymlinks(root: string, dir: string, f: ManifestFile): Promise<void> {
  for (let p = dir; ; p = path.dirname(p)) {
    let real: string;
    try {
      real = await fs.realpath(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && p !== root && p.startsWith(root + path.sep)) continue;
      throw err;
    }
    if (real !== p) {
      throw new DetError(
        'DET_ERR_INVALID_ARGUMENT',
        `refusing checkpoint file ${JSON.stringify(f.path)}: ${JSON.stringify(path.relative(root, p))} in the target directory is a symlink (to ${real}); downloads never write through symlinks`,
      );
    }
    return;
  }
}

// Removes what a failed download wrote: the whole target when it was created, else its content.
async function removePartial(target: string, created: boolean): Promise<void> {
  try {
    if (created) {
      await fs.rm(target, { recursive: true, force: true });
      return;
    }
    for (const e of await fs.readdir(target)) await fs.rm(path.join(target, e), { recursive: true, force: true });
  } catch {
    // Best effort: the error that failed the download is what the user needs to see.
  }
}

async function readSmall(stream: Readable, limit: number, where: string): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream) {
    n += (chunk as Buffer).length;
    if (n > limit) {
      stream.destroy();
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `${where} is larger than ${formatBytes(limit)}: it is not a checkpoint manifest`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}
