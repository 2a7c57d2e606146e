// Which directories and files a data view holds, from the listed keys (relative to the source
// prefix). Pure: every key is checked with validateKey, and a key that is both an object and a
// "folder" of another key ("a" and "a/b", legal in S3) is refused, since a directory tree cannot
// hold both.
import { DetError, errorMessage } from '../../common/errors';
import { validateKey } from '../../common/storage/paths';

/** The shape of one view: relative '/'-separated paths. */
export interface ViewPlan {
  /** Every directory below the view root, parents before children. */
  dirs: string[];
  /** Every file, in the order given. */
  files: string[];
}

/** Plans the tree for `keys` listed under `source` (named in errors). Throws a DetError naming the key. */
export function planView(keys: readonly string[], source: string): ViewPlan {
  const dirs = new Set<string>();
  for (const key of keys) {
    try {
      validateKey(key);
    } catch (err) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `refusing object ${source}${key}: ${errorMessage(err)}`);
    }
    for (let i = key.indexOf('/'); i >= 0; i = key.indexOf('/', i + 1)) dirs.add(key.slice(0, i));
  }
  for (const key of keys) {
    if (dirs.has(key)) {
      const child = keys.find((k) => k.startsWith(`${key}/`));
      throw new DetError(
        'DET_ERR_INVALID_ARGUMENT',
        `cannot lay out ${source} as a directory tree: ${source}${key} is an object and also a folder of ${source}${child}; rename or delete one of them`,
      );
    }
  }
  // Fewer segments first: a parent always precedes its children.
  const sorted = [...dirs].sort((a, b) => depth(a) - depth(b) || (a < b ? -1 : a > b ? 1 : 0));
  return { dirs: sorted, files: [...keys] };
}

function depth(p: string): number {
  let n = 0;
  for (const c of p) if (c === '/') n++;
  return n;
}
