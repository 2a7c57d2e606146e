// The per-file half of a checkpoint upload that learns what to send: a small file is read ONCE
// into a buffer that is both hashed for the manifest and sent (so what is stored is by
// construction what the manifest says), and SizeOrder lets files be hashed in parallel while
// dedupe decides them in an order that gives planUpload's layout (dedupe.ts UploadPlanner).
import { constants as fsConstants, type BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { sha256Hex, type CheckpointEntry } from '../../common/checkpoints/manifest';
import { DetError } from '../../common/errors';
import { isStrictlyInside } from '../../common/storage/paths';

/** Files up to this size are read into memory in one go, hashed and sent as that one buffer. */
export const SMALL_FILE_BYTES = 1024 * 1024;

/** A small checkpoint file as read once. */
export interface SmallFile {
  /** Exactly the bytes hashed: send these. */
  body: Buffer;
  sha256: string;
  /** The open file's stat, taken before it was read (for the hash cache). */
  stat: BigIntStats;
}

/**
 * Reads the small file of `entry` once, safely: its real path must still be inside the checkpoint
 * `root`, it is opened without following a final symlink, and it must still be a regular file of
 * the size it was listed with. Throws fileChanged errors otherwise.
 */
export async function readSmallFile(root: string, entry: CheckpointEntry): Promise<SmallFile> {
  const { fh, stat } = await openInCheckpoint(root, entry.rel, entry.stat.size, 'listed');
  try {
    const size = Number(stat.size);
    const body = Buffer.allocUnsafe(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await fh.read(body, done, size - done, done);
      if (bytesRead === 0) throw fileChanged(entry.rel, 'it became shorter while it was read');
      done += bytesRead;
    }
    // A write during the read yields bytes the trial never wrote as a whole; they are still what
    // the manifest names and what is stored, and the file's new mtime keeps the hash cache from
    // ever matching the entry made from them.
    return { body, sha256: sha256Hex(body), stat };
  } finally {
    await fh.close();
  }
}

/**
 * Opens the checkpoint file `rel` safely for reading: its real path must still be inside the
 * checkpoint `root`, it is opened without following a final symlink, and it must still be a
 * regular file of `size` bytes (the size it had when it was `when`). The caller closes the handle.
 */
export async function openInCheckpoint(root: string, rel: string, size: bigint, when: 'listed' | 'hashed'): Promise<{ fh: fs.FileHandle; stat: BigIntStats }> {
  const real = await fs.realpath(path.join(root, ...rel.split('/')));
  if (!isStrictlyInside(root, real)) throw fileChanged(rel, `it now resolves outside the checkpoint (to ${real})`);
  const fh = await fs.open(real, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    const stat = await fh.stat({ bigint: true });
    if (!stat.isFile()) throw fileChanged(rel, 'it is no longer a regular file');
    if (stat.size !== size) throw fileChanged(rel, `it has ${stat.size} bytes now, ${size} when it was ${when}`);
    return { fh, stat };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * Turns of files in manifest order among files of the same size: file i may decide its dedupe
 * only once the previous file of its size has (finished, or failed). Files of other sizes cannot
 * share its content and do not wait for each other.
 */
export class SizeOrder {
  private readonly previous: (number | undefined)[];
  private readonly finished: boolean[];
  private readonly waiting = new Map<number, () => void>();

  constructor(sizes: readonly bigint[]) {
    const last = new Map<bigint, number>();
    this.previous = sizes.map((s, i) => {
      const p = last.get(s);
      last.set(s, i);
      return p;
    });
    this.finished = sizes.map(() => false);
  }

  /** Resolves when file `i` may decide. */
  turn(i: number): Promise<void> {
    const p = this.previous[i];
    if (p === undefined || this.finished[p]) return Promise.resolve();
    return new Promise((resolve) => this.waiting.set(p, resolve));
  }

  /** File `i` has decided (or failed); idempotent. */
  done(i: number): void {
    if (this.finished[i]) return;
    this.finished[i] = true;
    const wake = this.waiting.get(i);
    if (wake) {
      this.waiting.delete(i);
      wake();
    }
  }
}

/** The error of a checkpoint file that changed after its .det-complete marker was written. */
export function fileChanged(rel: string, why: string): DetError {
  return new DetError(
    'DET_ERR_INVALID_ARGUMENT',
    `checkpoint file ${JSON.stringify(rel)} changed during the upload (${why}): a trial must not modify a checkpoint after writing its .det-complete marker`,
  );
}
