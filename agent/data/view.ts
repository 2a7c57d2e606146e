// A read-only view of one synced input: a fresh directory tree whose files are hard links to
// cache objects (a copy where linking fails, e.g. across filesystems). Files are 0444 (the cache
// inode's mode), directories 0555 once built. The container gets the view through a read-only
// bind mount, so it cannot write through to the shared cache objects.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { safeJoin } from '../../common/storage/paths';
import { runBounded } from './pool';
import { OBJECT_MODE } from './store';
import type { ViewPlan } from './view-plan';

/** Mode of view directories once built. */
export const VIEW_DIR_MODE = 0o555;
/** Links made at once while building a view. */
const LINK_CONCURRENCY = 32;
// Link failures where a copy still works.
const COPY_INSTEAD = new Set(['EXDEV', 'EPERM', 'EMLINK', 'ENOTSUP', 'EOPNOTSUPP']);

/** What building a view did. */
export interface BuiltView {
  /** Files copied because hard-linking failed. */
  copied: number;
}

/**
 * Builds `viewDir` (which must not exist) from `plan`; `sourceOf(rel)` is the cache file of a
 * view file. Every path goes through safeJoin, so nothing lands outside `viewDir`.
 */
export async function buildView(viewDir: string, plan: ViewPlan, sourceOf: (rel: string) => string, signal?: AbortSignal): Promise<BuiltView> {
  await fs.mkdir(viewDir, { mode: 0o755 });
  // The view is a fresh directory that only this function writes, so no symlink can be on the
  // way: the lexical checks of safeJoin suffice (and skip two realpath calls per file).
  const join = (rel: string) => safeJoin(viewDir, rel, { checkSymlinks: false });
  for (const dir of plan.dirs) await fs.mkdir(join(dir), { mode: 0o755 });
  let copied = 0;
  await runBounded(
    plan.files,
    LINK_CONCURRENCY,
    async (rel) => {
      const target = join(rel);
      const source = sourceOf(rel);
      try {
        await fs.link(source, target);
      } catch (err) {
        if (!COPY_INSTEAD.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
        await fs.copyFile(source, target);
        await fs.chmod(target, OBJECT_MODE);
        copied++;
      }
    },
    signal,
  );
  // Children before parents: a parent must stay writable while its children change.
  for (const dir of [...plan.dirs].reverse()) await fs.chmod(join(dir), VIEW_DIR_MODE);
  await fs.chmod(viewDir, VIEW_DIR_MODE);
  return { copied };
}

/** Removes a view directory built by buildView (read-only dirs included); missing is fine. */
export async function removeView(viewDir: string): Promise<void> {
  await makeWritable(viewDir);
  await fs.rm(viewDir, { recursive: true, force: true });
}

// chmod u+w every directory of the tree (never following symlinks), so rm can unlink inside.
async function makeWritable(dir: string): Promise<void> {
  let st;
  try {
    st = await fs.lstat(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isDirectory()) return;
  if ((st.mode & 0o700) !== 0o700) await fs.chmod(dir, 0o755);
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) await makeWritable(path.join(dir, entry.name));
  }
}
