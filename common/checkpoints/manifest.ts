// The manifest of a checkpoint: every file with its size, sha256 and the storage key that holds
// its content, plus who wrote it and the user's metadata. It is uploaded LAST; a checkpoint
// without a manifest does not exist. Where things are stored: layout.ts.
import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { z } from 'zod';
import { DetError, errorMessage } from '../errors';
import { checkpointNameProblem, isReservedName, MAX_METADATA_BYTES, METADATA_FILE } from './contract';
import { checkpointUuidProblem, fileKey, fileKeyProblem } from './layout';
import { mapBounded } from './transfer';
import { readChunks } from '../storage/file-source';
import { isStrictlyInside } from '../storage/paths';

/** Manifest format version. */
export const MANIFEST_VERSION = 1;
/** Default number of files hashed at once. */
export const DEFAULT_HASH_CONCURRENCY = 4;

/** One file of a checkpoint; `path` is relative and '/'-separated. */
export interface ManifestFile {
  path: string;
  size: number;
  sha256: string;
  /**
   * Storage key holding the content: `<uuid>/<path>` of this checkpoint, or of an earlier
   * checkpoint of the same trial that stored the same content (dedupe, see layout.ts).
   */
  key: string;
}

/** Who wrote a checkpoint and when. */
export interface CheckpointInfo {
  uuid: string;
  trialId: number;
  allocationId: string;
  name: string;
  createdAtMs: number;
}

/** A checkpoint's manifest (format version 1). */
export interface Manifest extends CheckpointInfo {
  version: 1;
  /** Sorted by path (code-unit order), unique. */
  files: ManifestFile[];
  totalSize: number;
  /** The user's metadata object; {} when none was written. */
  metadata: Record<string, unknown>;
}

/** Why `p` is not a safe relative manifest path, or undefined when it is. */
export function manifestPathProblem(p: string): string | undefined {
  if (p.length === 0) return 'the path is empty';
  if (p.includes('\0')) return 'the path contains a NUL character';
  if (p.includes('\\')) return 'the path contains a backslash';
  if (p.startsWith('/') || /^[A-Za-z]:/.test(p)) return 'the path is absolute';
  for (const seg of p.split('/')) {
    if (seg === '') return 'the path has an empty segment';
    if (seg === '.' || seg === '..') return `the path contains a '${seg}' segment`;
  }
  return undefined;
}

/**
 * The local path of manifest path `rel` under `targetDir`, for downloads; throws
 * DET_ERR_INVALID_ARGUMENT when `rel` is unsafe or would land outside `targetDir`.
 */
export function resolveManifestPath(targetDir: string, rel: string): string {
  const problem = manifestPathProblem(rel);
  if (problem) throw invalid(`refusing checkpoint file ${JSON.stringify(rel)}: ${problem}`);
  const root = path.resolve(targetDir);
  const full = path.resolve(root, ...rel.split('/'));
  if (!isStrictlyInside(root, full)) throw invalid(`refusing checkpoint file ${JSON.stringify(rel)}: it resolves outside ${root}`);
  return full;
}

/** Size and sha256 of a file; the port a hash cache plugs into. */
export type HashFn = (file: string) => Promise<{ size: number; sha256: string }>;

/** Options of buildManifest. */
export interface BuildManifestOptions {
  /** Files hashed at once (default 4). */
  concurrency?: number;
  /** How a file is hashed (default hashFile; the agent passes its HashCache). */
  hash?: HashFn;
}

/** One file of a checkpoint directory: its manifest path, the real path to read and its stat when listed. */
export interface CheckpointEntry {
  rel: string;
  /** Inside the checkpoint's real path (a symlink's entry is its target). */
  abs: string;
  stat: BigIntStats;
}

/** A completed checkpoint directory, listed but not yet hashed. */
export interface CheckpointListing {
  /** Real path of the checkpoint directory. */
  root: string;
  metadata: Record<string, unknown>;
  /** Sorted by path (code-unit order). */
  entries: CheckpointEntry[];
}

/**
 * Lists the completed checkpoint in `dir` for a manifest: reserved files at its top are left out;
 * unsafe entries (escaping or directory symlinks, special files), an invalid name or uuid and
 * invalid metadata throw DET_ERR_INVALID_ARGUMENT naming the problem.
 */
export async function listCheckpoint(dir: string, info: CheckpointInfo): Promise<CheckpointListing> {
  const nameProblem = checkpointNameProblem(info.name);
  if (nameProblem) throw invalid(`invalid checkpoint name ${JSON.stringify(info.name)}: ${nameProblem}`);
  const uuidProblem = checkpointUuidProblem(info.uuid);
  if (uuidProblem) throw invalid(`invalid checkpoint uuid ${JSON.stringify(info.uuid)}: ${uuidProblem}`);
  let root: string;
  try {
    root = await fs.realpath(dir);
  } catch (err) {
    throw invalid(`cannot read checkpoint directory ${dir}: ${errorMessage(err)}`);
  }
  const metadata = await readMetadata(dir);
  const entries: CheckpointEntry[] = [];
  await walk(root, root, '', entries);
  entries.sort((a, b) => compare(a.rel, b.rel));
  return { root, metadata, entries };
}

/** The manifest of checkpoint `info` with `files` (sorted by path, keys set) and `metadata`. */
export function assembleManifest(info: CheckpointInfo, files: ManifestFile[], metadata: Record<string, unknown>): Manifest {
  const totalSize = files.reduce((sum, f) => sum + f.size, 0);
  return { version: MANIFEST_VERSION, ...pickInfo(info), files, totalSize, metadata };
}

/**
 * Builds the manifest of the completed checkpoint in `dir` (see listCheckpoint). Every key is
 * this checkpoint's own `<uuid>/<path>`; the uploader repoints the keys of content that is
 * already stored.
 */
export async function buildManifest(dir: string, info: CheckpointInfo, opts: BuildManifestOptions = {}): Promise<Manifest> {
  const hash = opts.hash ?? hashFile;
  const { metadata, entries } = await listCheckpoint(dir, info);
  const files = await mapBounded(entries, Math.max(1, opts.concurrency ?? DEFAULT_HASH_CONCURRENCY), async (e) => {
    const { size, sha256 } = await hash(e.abs);
    return { path: e.rel, size, sha256, key: fileKey(info.uuid, e.rel) };
  });
  return assembleManifest(info, files, metadata);
}

async function walk(root: string, absDir: string, relDir: string, out: CheckpointEntry[]): Promise<void> {
  const dirents = await fs.readdir(absDir, { withFileTypes: true });
  for (const d of dirents) {
    if (relDir === '' && isReservedName(d.name)) continue;
    const rel = relDir === '' ? d.name : `${relDir}/${d.name}`;
    const abs = path.join(absDir, d.name);
    const problem = manifestPathProblem(rel);
    if (problem) throw invalid(`checkpoint file ${JSON.stringify(rel)} cannot be stored: ${problem}`);
    const st = await fs.lstat(abs, { bigint: true });
    if (st.isDirectory()) {
      await walk(root, abs, rel, out);
    } else if (st.isFile()) {
      out.push({ rel, abs, stat: st });
    } else if (st.isSymbolicLink()) {
      let target: string;
      try {
        target = await fs.realpath(abs);
      } catch (err) {
        throw invalid(`checkpoint file ${JSON.stringify(rel)} is a dangling symlink (${errorMessage(err)}): write a regular file instead`);
      }
      if (!isStrictlyInside(root, target)) {
        throw invalid(`checkpoint file ${JSON.stringify(rel)} is a symlink that points outside the checkpoint (to ${target}): copy the file into the checkpoint instead`);
      }
      const tst = await fs.stat(target, { bigint: true });
      if (!tst.isFile()) {
        throw invalid(`checkpoint file ${JSON.stringify(rel)} is a symlink to a ${kind(tst)}: only symlinks to regular files inside the checkpoint are allowed`);
      }
      out.push({ rel, abs: target, stat: tst }); // stored as a copy of the target's content
    } else {
      throw invalid(`checkpoint file ${JSON.stringify(rel)} is a ${kind(st)}: only regular files and directories can be stored`);
    }
  }
}

async function readMetadata(dir: string): Promise<Record<string, unknown>> {
  const file = path.join(dir, METADATA_FILE);
  let st;
  try {
    st = await fs.lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw invalid(`cannot read ${METADATA_FILE}: ${errorMessage(err)}`);
  }
  if (!st.isFile()) throw invalid(`${METADATA_FILE} must be a regular file, not a ${kind(st)}`);
  if (st.size > MAX_METADATA_BYTES) throw invalid(`${METADATA_FILE} is ${st.size} bytes; the limit is ${MAX_METADATA_BYTES} bytes (64 KiB)`);
  const text = await fs.readFile(file, 'utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw invalid(`${METADATA_FILE} is not valid JSON: ${errorMessage(err)}`);
  }
  if (!isPlainObject(value)) throw invalid(`${METADATA_FILE} must hold a JSON object, not ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`);
  return value;
}

/** Size and sha256 (hex) of the file at `file`, streamed. */
export async function hashFile(file: string): Promise<{ size: number; sha256: string }> {
  const fh = await fs.open(file, 'r');
  try {
    const hash = createHash('sha256');
    // Two reused buffers, one read ahead of the hash (file-source.ts).
    const size = await readChunks(fh, (await fh.stat()).size, (chunk, release) => {
      hash.update(chunk);
      release();
    }, { until: 'eof' });
    return { size, sha256: hash.digest('hex') };
  } finally {
    await fh.close();
  }
}

/** Hex sha256 of `data`. */
export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Checks a downloaded file against its manifest entry; throws DET_ERR_INVALID_ARGUMENT on mismatch. */
export async function verifyFileAgainstManifest(file: string, entry: ManifestFile): Promise<void> {
  const got = await hashFile(file);
  if (got.size !== entry.size) {
    throw invalid(`checkpoint file ${JSON.stringify(entry.path)} has ${got.size} bytes, the manifest says ${entry.size}: the download is incomplete or corrupted`);
  }
  if (got.sha256 !== entry.sha256) {
    throw invalid(`checkpoint file ${JSON.stringify(entry.path)} has sha256 ${got.sha256}, the manifest says ${entry.sha256}: the download is corrupted`);
  }
}

const safePath = z.string().superRefine((p, ctx) => {
  const problem = manifestPathProblem(p);
  if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: `unsafe path ${JSON.stringify(p)}: ${problem}` });
});
const safeKey = z.string().superRefine((k, ctx) => {
  const problem = fileKeyProblem(k);
  if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: `unsafe key ${JSON.stringify(k)}: ${problem}` });
});
const nonNegInt = z.number().int().nonnegative();
const manifestSchema = z
  .object({
    version: z.literal(MANIFEST_VERSION),
    uuid: z.string().superRefine((u, ctx) => {
      const problem = checkpointUuidProblem(u);
      if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
    }),
    trialId: nonNegInt,
    allocationId: z.string(),
    name: z.string().superRefine((n, ctx) => {
      const problem = checkpointNameProblem(n);
      if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
    }),
    createdAtMs: nonNegInt,
    files: z.array(
      z.object({ path: safePath, size: nonNegInt, sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits'), key: safeKey }).strict(),
    ),
    totalSize: nonNegInt,
    metadata: z.record(z.unknown()),
  })
  .strict()
  .superRefine((m, ctx) => {
    for (let i = 1; i < m.files.length; i++) {
      if (compare(m.files[i - 1].path, m.files[i].path) >= 0) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['files', i, 'path'], message: 'paths must be unique and sorted' });
        break;
      }
    }
    // Entries that share a key (deduped content) must agree on what that object holds.
    const byKey = new Map<string, { sha256: string; size: number }>();
    m.files.forEach((f, i) => {
      const seen = byKey.get(f.key);
      if (!seen) byKey.set(f.key, f);
      else if (seen.sha256 !== f.sha256 || seen.size !== f.size) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['files', i, 'key'], message: `${JSON.stringify(f.key)} is shared with another entry of a different sha256 or size` });
      }
    });
    const sum = m.files.reduce((s, f) => s + f.size, 0);
    if (sum !== m.totalSize) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['totalSize'], message: `is ${m.totalSize} but the files add up to ${sum}` });
  });

/** Parses and validates a manifest (JSON text or a parsed value); throws DET_ERR_INVALID_ARGUMENT listing every problem. */
export function parseManifest(json: string | unknown): Manifest {
  let value: unknown = json;
  if (typeof json === 'string') {
    try {
      value = JSON.parse(json);
    } catch (err) {
      throw invalid(`checkpoint manifest is not valid JSON: ${errorMessage(err)}`);
    }
  }
  const res = manifestSchema.safeParse(value);
  if (!res.success) {
    const problems = res.error.issues.map((i) => `${i.path.length ? formatPath(i.path) : '(manifest)'}: ${i.message}`);
    throw invalid(`invalid checkpoint manifest: ${problems.join('; ')}`);
  }
  return res.data as Manifest;
}

function formatPath(p: (string | number)[]): string {
  return p.map((s, i) => (typeof s === 'number' ? `[${s}]` : i === 0 ? s : `.${s}`)).join('');
}

function pickInfo(i: CheckpointInfo): CheckpointInfo {
  return { uuid: i.uuid, trialId: i.trialId, allocationId: i.allocationId, name: i.name, createdAtMs: i.createdAtMs };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function kind(st: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isBlockDevice(): boolean; isCharacterDevice(): boolean; isSymbolicLink(): boolean }): string {
  if (st.isDirectory()) return 'directory';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'device';
  if (st.isSymbolicLink()) return 'symlink';
  return 'special file';
}

function invalid(message: string): DetError {
  return new DetError('DET_ERR_INVALID_ARGUMENT', message);
}
