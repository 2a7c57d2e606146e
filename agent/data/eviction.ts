// Which cache objects to evict when the cache is over its size bound. Pure: least recently used
// first, never an object that a live view links to (nlink > 1) or a running sync still needs.

/** One cached object as the store sees it. */
export interface CachedObject {
  id: string;
  size: number;
  /** Last use (the store touches mtime on every use). */
  lastUsedMs: number;
  /** Hard links to the inode: 1 means no view uses it. */
  nlink: number;
}

/** What an eviction pass decided. */
export interface EvictionPlan {
  evict: CachedObject[];
  /** Cache size before eviction. */
  totalBytes: number;
  /** Cache size once `evict` is deleted (may stay above the bound when the rest is in use). */
  remainingBytes: number;
}

/** The objects to delete so the cache fits `maxBytes`, least recently used first. */
export function planEviction(objects: readonly CachedObject[], maxBytes: number, pinned: ReadonlySet<string>): EvictionPlan {
  const totalBytes = objects.reduce((sum, o) => sum + o.size, 0);
  let remainingBytes = totalBytes;
  const evict: CachedObject[] = [];
  if (totalBytes <= maxBytes) return { evict, totalBytes, remainingBytes };
  const candidates = objects
    .filter((o) => o.nlink <= 1 && !pinned.has(o.id))
    .sort((a, b) => a.lastUsedMs - b.lastUsedMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const o of candidates) {
    if (remainingBytes <= maxBytes) break;
    evict.push(o);
    remainingBytes -= o.size;
  }
  return { evict, totalBytes, remainingBytes };
}
