// Fixtures for checkpoint upload/download tests: completed checkpoint directories as a trial
// writes them (marker last), digests of directory trees to compare a download with its source,
// raw listings of an S3 bucket that bypass our storage class, and a logger that collects lines.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { COMPLETE_MARKER, isReservedName } from '../../common/checkpoints/contract';
import type { CheckpointInfo } from '../../common/checkpoints/manifest';
import { createLogger, type Logger } from '../../common/log';

/** Writes a completed checkpoint `<root>/<name>/` holding `files` (relative path -> content), marker last. */
export async function writeCheckpoint(root: string, name: string, files: Record<string, Buffer | string>): Promise<string> {
  const dir = path.join(root, name);
  await fs.mkdir(dir, { recursive: true });
  for (const [rel, content] of Object.entries(files)) {
    const file = path.join(dir, ...rel.split('/'));
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, content);
  }
  await fs.writeFile(path.join(dir, COMPLETE_MARKER), '');
  return dir;
}

/** `count` files of random content, sizes spread between minBytes and maxBytes, under `dir/`. */
export function randomFiles(count: number, minBytes: number, maxBytes: number, dir = 'small'): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (let i = 0; i < count; i++) {
    const size = minBytes + Math.floor(((maxBytes - minBytes) * i) / Math.max(1, count - 1));
    out[`${dir}/${String(Math.floor(i / 100)).padStart(2, '0')}/f${String(i).padStart(4, '0')}.bin`] = randomBytes(size);
  }
  return out;
}

/** Who wrote a checkpoint, with a fresh uuid. */
export function checkpointInfo(name: string, trialId = 1): CheckpointInfo {
  return { uuid: randomUUID(), trialId, allocationId: `alloc-${trialId}`, name, createdAtMs: Date.now() };
}

/**
 * sha256 of every regular file under `dir`, by '/'-separated relative path. With `checkpoint`,
 * reserved names at the top (marker, metadata) are left out, as in a manifest.
 */
export async function treeDigests(dir: string, opts: { checkpoint?: boolean } = {}): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const d of await fs.readdir(abs, { withFileTypes: true })) {
      if (opts.checkpoint && rel === '' && isReservedName(d.name)) continue;
      const r = rel === '' ? d.name : `${rel}/${d.name}`;
      const a = path.join(abs, d.name);
      if (d.isDirectory()) await walk(a, r);
      else out[r] = createHash('sha256').update(await fs.readFile(a)).digest('hex');
    }
  };
  await walk(dir, '');
  return out;
}

/** Every key in `bucket` under `prefix`, listed with a standard S3 client. */
export async function rawS3Keys(client: S3Client, bucket: string, prefix = ''): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) keys.push(o.Key!);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys.sort();
}

/** Every file under `root` as a '/'-separated key (what a shared_fs storage holds), sorted. */
export async function fsKeys(root: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  const walk = async (abs: string, rel: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(abs, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const d of entries) {
      const r = rel === '' ? d.name : `${rel}/${d.name}`;
      if (d.isDirectory()) await walk(path.join(abs, d.name), r);
      else out.push(r);
    }
  };
  await walk(root, '');
  return out.filter((k) => k.startsWith(prefix)).sort();
}

/** A logger whose lines are collected (and not printed). */
export function collectingLogger(component = 'test'): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger(component, { level: 'debug', sink: (l) => lines.push(l) }), lines };
}
