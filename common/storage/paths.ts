// Key and path safety for checkpoint storage. A key names an object below the storage root; it
// must never reach outside it, whether it comes from the user, a manifest or an S3 listing
// (anyone with write access to the bucket can plant "../x"). Violations are
// DET_ERR_INVALID_ARGUMENT errors that name the key.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DetError } from '../errors';

/** Longest key accepted (S3's limit is 1024 bytes including the prefix). */
export const MAX_KEY_BYTES = 1024;

function invalid(key: string, why: string): DetError {
  return new DetError('DET_ERR_INVALID_ARGUMENT', `invalid storage key ${JSON.stringify(key)}: ${why}`);
}

/**
 * Checks that `key` is a relative, '/'-separated key: no '..' or '.' segments, no empty
 * segments (leading, trailing or doubled '/'), no backslashes, no NUL or other control
 * characters. Returns the key; throws a DetError naming it otherwise.
 */
export function validateKey(key: string): string {
  if (typeof key !== 'string' || key === '') throw invalid(String(key), 'keys must be non-empty');
  if (key.includes('\0')) throw invalid(key, 'keys must not contain NUL');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(key)) throw invalid(key, 'keys must not contain control characters');
  if (key.includes('\\')) throw invalid(key, "keys use '/' as separator; backslashes are not allowed");
  if (key.startsWith('/') || /^[A-Za-z]:/.test(key)) throw invalid(key, 'keys must be relative, not absolute paths');
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) throw invalid(key, `keys must be at most ${MAX_KEY_BYTES} bytes`);
  for (const segment of key.split('/')) {
    if (segment === '') throw invalid(key, "keys must not have empty segments (leading, trailing or doubled '/')");
    if (segment === '..') throw invalid(key, "'..' segments are not allowed (they would escape the storage root)");
    if (segment === '.') throw invalid(key, "'.' segments are not allowed");
  }
  return key;
}

/**
 * Checks a list prefix: '' (everything) or a string that could begin a valid key. A prefix may
 * end with '/' but must not contain '..', '.', or empty segments before its last segment.
 */
export function validatePrefix(prefix: string): string {
  if (prefix === '') return prefix;
  validateKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
  return prefix;
}

/**
 * The file path of `key` below `root`, after validateKey. Unless `checkSymlinks` is false, also
 * resolves the real path of the target (or of its deepest existing ancestor): a symlink anywhere
 * on the way, the last component included, that leads outside `root` is rejected.
 */
export function safeJoin(root: string, key: string, opts: { checkSymlinks?: boolean } = {}): string {
  validateKey(key);
  const absRoot = path.resolve(root);
  const target = path.resolve(absRoot, ...key.split('/'));
  if (target === absRoot || !inside(absRoot, target)) throw invalid(key, `resolves outside the storage root ${absRoot}`);
  if (opts.checkSymlinks !== false) checkNoEscape(absRoot, target, key);
  return target;
}

function escapes(key: string, absRoot: string): DetError {
  return invalid(key, `a symlink on its path leads outside the storage root ${absRoot}`);
}

// The real path of the deepest existing path from `target` up to the root must stay inside the
// root's real path; a dangling symlink on the way must not point outside either.
function checkNoEscape(absRoot: string, target: string, key: string): void {
  let realRoot: string;
  try {
    realRoot = fs.realpathSync(absRoot);
  } catch {
    return; // no root yet: nothing below it exists, so nothing can be a symlink
  }
  for (let probe = target; ; probe = path.dirname(probe)) {
    let real: string;
    try {
      real = fs.realpathSync(probe);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR' && code !== 'ELOOP') throw err;
      if (code === 'ELOOP') throw invalid(key, 'a symlink loop is on its path');
      const link = danglingLinkTarget(probe);
      if (link !== undefined && !inside(realRoot, link) && !inside(absRoot, link)) throw escapes(key, absRoot);
      if (probe === absRoot || !inside(absRoot, path.dirname(probe))) return;
      continue;
    }
    if (!inside(realRoot, real)) throw escapes(key, absRoot);
    return;
  }
}

// Where a symlink that does not resolve points (absolute), or undefined if `p` is no symlink.
function danglingLinkTarget(p: string): string | undefined {
  try {
    if (!fs.lstatSync(p).isSymbolicLink()) return undefined;
    return path.resolve(path.dirname(p), fs.readlinkSync(p));
  } catch {
    return undefined;
  }
}

function inside(root: string, p: string): boolean {
  return path.relative(root, p) === '' || isStrictlyInside(root, p);
}

/** Whether the absolute path `p` is below the absolute path `root` (not `root` itself). */
export function isStrictlyInside(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel !== '' && !rel.startsWith('..' + path.sep) && rel !== '..' && !path.isAbsolute(rel);
}
