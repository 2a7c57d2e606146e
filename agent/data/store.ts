// The on-disk object cache: <root>/objects/<id[0..2]>/<id>, one file per S3 object version, where
// id = sha256(bucket \0 key \0 etag). Downloads land in <root>/tmp/ and are renamed into place, so
// no half file ever has a final name. Objects are read-only (0444): views hard-link them, and the
// inode's mode is what a container sees. mtime is the last use (LRU); nlink counts the views.
// One DataCache (one process) per root: init() clears <root>/tmp/ of earlier runs' leftovers.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { CachedObject } from './eviction';

/** Mode of cached objects (and so of the files in views). */
export const OBJECT_MODE = 0o444;

/** The cache id of one object version. */
export function cacheId(bucket: string, key: string, etag: string): string {
  return createHash('sha256').update(`${bucket}\0${key}\0${etag}`).digest('hex');
}

/** Files of the object cache. */
export class ObjectStore {
  /** <root>/objects */
  readonly objectsDir: string;
  /** <root>/tmp */
  readonly tmpDir: string;

  constructor(readonly root: string) {
    this.objectsDir = path.join(root, 'objects');
    this.tmpDir = path.join(root, 'tmp');
  }

  /** Creates the directories and removes temp files left by an earlier process. */
  async init(): Promise<void> {
    await fs.mkdir(this.objectsDir, { recursive: true, mode: 0o700 });
    await fs.rm(this.tmpDir, { recursive: true, force: true });
    await fs.mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
  }

  /** Where object `id` is stored. */
  pathOf(id: string): string {
    return path.join(this.objectsDir, id.slice(0, 2), id);
  }

  /** Whether object `id` is cached with the expected size. */
  async has(id: string, size: number): Promise<boolean> {
    try {
      const st = await fs.stat(this.pathOf(id));
      return st.isFile() && st.size === size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Marks object `id` as used now (LRU). */
  async touch(id: string): Promise<void> {
    const now = new Date();
    await fs.utimes(this.pathOf(id), now, now);
  }

  /** A fresh temp file path for a download of `id`. */
  tempPath(id: string): string {
    return path.join(this.tmpDir, `${id}.${randomBytes(4).toString('hex')}.part`);
  }

  /** Moves a complete download into place (replacing any older copy atomically). */
  async commit(tmp: string, id: string): Promise<void> {
    const final = this.pathOf(id);
    await fs.mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    await fs.rename(tmp, final);
  }

  /** Every cached object with size, last use and link count. */
  async scan(): Promise<CachedObject[]> {
    const out: CachedObject[] = [];
    for (const shard of await readdirOrEmpty(this.objectsDir)) {
      const dir = path.join(this.objectsDir, shard);
      for (const id of await readdirOrEmpty(dir)) {
        try {
          const st = await fs.lstat(path.join(dir, id));
          if (st.isFile()) out.push({ id, size: st.size, lastUsedMs: st.mtimeMs, nlink: st.nlink });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    }
    return out;
  }

  /** Deletes object `id` (missing is fine). */
  async remove(id: string): Promise<void> {
    await fs.rm(this.pathOf(id), { force: true });
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw err;
  }
}
