// Remembers the sha256 of files by identity, (dev, ino, size, mtime in ns), so that uploading a
// checkpoint whose files did not change (the same directory again, or files hard-linked from an
// earlier checkpoint) does not hash them again. Bounded: the least recently used entry goes first.
// ctime is left out on purpose: hard-linking a file changes it. So a file rewritten in place with
// its mtime forged back (utimes) hits the stale entry, and its manifest names the old sha256 (a
// download then fails its check, or restores the old content if that is stored). Only a trial
// that breaks the checkpoint contract can do that, and only to its own checkpoints.
import * as fs from 'node:fs/promises';
import { hashFile, type HashFn } from '../../common/checkpoints/manifest';

/** Default number of remembered files. */
export const DEFAULT_HASH_CACHE_ENTRIES = 100_000;

/** What identifies a file's content for the cache. */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
}

/** sha256 by file identity, LRU-bounded. */
export class HashCache {
  private readonly entries = new Map<string, string>();
  private readonly maxEntries: number;
  private hitCount = 0;
  private missCount = 0;

  constructor(maxEntries: number = DEFAULT_HASH_CACHE_ENTRIES) {
    this.maxEntries = Math.max(1, Math.floor(maxEntries));
  }

  /** Number of remembered files. */
  get size(): number {
    return this.entries.size;
  }

  /** Lookups answered from the cache / by hashing, since construction. */
  get stats(): { hits: number; misses: number } {
    return { hits: this.hitCount, misses: this.missCount };
  }

  /** The remembered sha256 of a file with this identity (marks it recently used). */
  get(id: FileIdentity): string | undefined {
    const k = keyOf(id);
    const sha = this.entries.get(k);
    if (sha !== undefined) {
      this.entries.delete(k);
      this.entries.set(k, sha);
    }
    return sha;
  }

  /** Like get, counted in stats as a hit or a miss (for callers that hash a miss themselves). */
  lookup(id: FileIdentity): string | undefined {
    const sha = this.get(id);
    if (sha === undefined) this.missCount++;
    else this.hitCount++;
    return sha;
  }

  /** Remembers the sha256 of a file with this identity, evicting the least recently used beyond the bound. */
  set(id: FileIdentity, sha256: string): void {
    const k = keyOf(id);
    this.entries.delete(k);
    this.entries.set(k, sha256);
    while (this.entries.size > this.maxEntries) {
      this.entries.delete(this.entries.keys().next().value as string);
    }
  }

  /**
   * Size and sha256 of `file`: from the cache when its identity is known, hashed (and remembered)
   * otherwise. A file that changes while it is hashed is not remembered. Usable as a HashFn.
   */
  readonly hash: HashFn = async (file) => {
    const before = await identify(file);
    const known = this.get(before);
    if (known !== undefined) {
      this.hitCount++;
      return { size: Number(before.size), sha256: known };
    }
    this.missCount++;
    const got = await hashFile(file);
    const after = await identify(file);
    if (keyOf(after) === keyOf(before) && BigInt(got.size) === after.size) this.set(after, got.sha256);
    return got;
  };
}

async function identify(file: string): Promise<FileIdentity> {
  const st = await fs.stat(file, { bigint: true });
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs };
}

function keyOf(id: FileIdentity): string {
  return `${id.dev}:${id.ino}:${id.size}:${id.mtimeNs}`;
}
