// shared_fs: checkpoints in a directory on the host (the default backend). Writes go to a
// temp file in the target's directory and are renamed into place, so readers never see half a
// file. Every key is checked by safeJoin, including symlinks that would lead out of the root.
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DetError, errorMessage } from '../errors';
import { ObjectNotFoundError } from './errors';
import { safeJoin, validatePrefix } from './paths';
import { withoutFileSource } from './file-source';
import type { CheckpointStorage, ListedObject, ObjectInfo, PutBody, PutOptions, PutResult } from './storage';

/** Temp files of unfinished puts start with this; list() never shows them. */
export const TEMP_PREFIX = '.det-tmp-';

/** Options of the shared_fs backend. */
export interface SharedFsStorageOptions {
  /** Absolute directory that holds the objects; created on the first put. */
  hostPath: string;
}

function etagOf(st: fs.Stats): string {
  return `${Math.trunc(st.mtimeMs)}-${st.size}`;
}

function fsError(op: string, where: string, err: unknown): DetError {
  const code = (err as NodeJS.ErrnoException).code;
  const hint = code === 'EACCES' || code === 'EPERM' ? ': check the permissions of the checkpoint directory' : code === 'ENOSPC' ? ': the disk is full' : '';
  return new DetError('DET_ERR_INTERNAL', `cannot ${op} ${where}: ${code ?? errorMessage(err)}${hint}`, { cause: err });
}

/** Checkpoint storage in a host directory. */
export class SharedFsStorage implements CheckpointStorage {
  readonly kind = 'shared_fs' as const;
  /** The absolute root directory. */
  readonly root: string;

  constructor(opts: SharedFsStorageOptions) {
    if (!path.isAbsolute(opts.hostPath)) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `shared_fs host_path must be an absolute path, got ${JSON.stringify(opts.hostPath)}`);
    }
    this.root = path.resolve(opts.hostPath);
  }

  location(key: string): string {
    return safeJoin(this.root, key, { checkSymlinks: false });
  }

  async put(key: string, source: PutBody, _opts: PutOptions = {}, signal?: AbortSignal): Promise<PutResult> {
    const target = safeJoin(this.root, key);
    const dir = path.dirname(target);
    try {
      await fsp.mkdir(dir, { recursive: true });
    } catch (err) {
      throw fsError('create directory', dir, err);
    }
    // mkdir may have walked through a symlink created meanwhile: check again before writing.
    safeJoin(this.root, key);
    const tmp = path.join(dir, `${TEMP_PREFIX}${path.basename(target)}.${randomBytes(6).toString('hex')}`);
    try {
      const stream = withoutFileSource(source);
      const body = Buffer.isBuffer(stream) ? Readable.from([stream]) : stream;
      await pipeline(body, fs.createWriteStream(tmp, { flags: 'wx', mode: 0o644 }), { signal });
      const fh = await fsp.open(tmp, 'r');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, target);
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      if ((err as Error).name === 'AbortError') throw err;
      throw fsError('write', target, err);
    }
    return { etag: etagOf(await fsp.stat(target)) };
  }

  async get(key: string): Promise<Readable> {
    const file = safeJoin(this.root, key);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new ObjectNotFoundError(key, file);
      throw fsError('read', file, err);
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new ObjectNotFoundError(key, file);
    }
    return fh.createReadStream();
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const file = safeJoin(this.root, key);
    try {
      const st = await fsp.stat(file);
      return st.isFile() ? { size: st.size, etag: etagOf(st) } : undefined;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw fsError('stat', file, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ListedObject> {
    validatePrefix(prefix);
    // Walk only the directory the prefix names up to its last '/'.
    const dirKey = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const start = dirKey === '' ? this.root : safeJoin(this.root, dirKey);
    const found: ListedObject[] = [];
    const walk = async (dir: string, keyBase: string): Promise<void> => {
      let entries: fs.Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') return;
        throw fsError('list', dir, err);
      }
      for (const e of entries) {
        if (e.name.startsWith(TEMP_PREFIX)) continue;
        const key = keyBase === '' ? e.name : `${keyBase}/${e.name}`;
        // Prune subtrees that cannot hold a match.
        if (!key.startsWith(prefix) && !prefix.startsWith(key + '/')) continue;
        const full = path.join(dir, e.name);
        // Symlinks are never followed while listing; only regular files are objects.
        if (e.isDirectory()) await walk(full, key);
        else if (e.isFile() && key.startsWith(prefix)) {
          const st = await fsp.stat(full).catch(() => undefined);
          if (st?.isFile()) found.push({ key, size: st.size, etag: etagOf(st) });
        }
      }
    };
    await walk(start, dirKey);
    // S3 order: by the keys' UTF-8 bytes.
    found.sort((a, b) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)));
    yield* found;
  }

  async delete(keys: readonly string[]): Promise<void> {
    const files = keys.map((k) => safeJoin(this.root, k));
    for (const file of files) {
      try {
        await fsp.rm(file, { force: true });
      } catch (err) {
        throw fsError('delete', file, err);
      }
      // Remove directories left empty, up to (not including) the root.
      for (let dir = path.dirname(file); dir !== this.root && dir.startsWith(this.root + path.sep); dir = path.dirname(dir)) {
        try {
          await fsp.rmdir(dir);
        } catch {
          break;
        }
      }
    }
  }
}
