// Reading files in big chunks into a few reused buffers. Hashing a checkpoint file and sending
// it both read it start to end; with a fresh 1 MiB buffer per chunk (what a ReadStream does) the
// allocations and their garbage collection cost about as much CPU as the sha256 itself. Here a
// chunk's buffer goes back to the reader once its consumer is done with it (at once for a hash,
// when the socket has written it for an upload), and the next read is in flight while the
// current chunk is consumed.
//
// A FileSource is an upload body that is an open file: sent with positional reads, so a failed
// request can send it again from the start (a stream can be sent only once).
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';

/** Read size for checkpoint files (1 MiB: a third less CPU than Node's 64 KiB default). */
export const READ_CHUNK_BYTES = 1024 * 1024;

/** An upload body read from an open file: bytes [0, size). The caller owns (and closes) the handle. */
export interface FileSource {
  readonly handle: FileHandle;
  readonly size: number;
}

/** Whether `x` is a FileSource (not a Buffer or a stream). */
export function isFileSource(x: unknown): x is FileSource {
  return typeof x === 'object' && x !== null && !Buffer.isBuffer(x) && !(x instanceof Readable) && 'handle' in x && 'size' in x;
}

/** `src` as a stream (for code that takes streams): bytes [0, size), the handle left open. */
export function fileSourceStream(src: FileSource): Readable {
  if (src.size === 0) return Readable.from([]);
  return src.handle.createReadStream({ start: 0, end: src.size - 1, autoClose: false, highWaterMark: READ_CHUNK_BYTES });
}

/** `body` as code that takes Buffers and streams wants it: a FileSource becomes fileSourceStream(). */
export function withoutFileSource<B extends Buffer | Readable>(body: B | FileSource): B | Readable {
  return isFileSource(body) ? fileSourceStream(body) : body;
}

/** Thrown when a file ends before the bytes it was expected to have. */
export class ShortFileError extends Error {
  constructor(
    readonly got: number,
    readonly expected: number,
  ) {
    super(`the file ended after ${got} of the ${expected} bytes expected`);
    this.name = 'ShortFileError';
  }
}

/** Options of readChunks. */
export interface ReadChunksOptions {
  /**
   * 'length': exactly `length` bytes (ShortFileError if the file ends before; more is not read).
   * 'eof': until the end of the file, `length` being the size expected (the buffers' size).
   */
  until: 'length' | 'eof';
  /** Reused buffers (default 2: one consumed, one being read). */
  buffers?: number;
  /** Stops the reading (the next wait or read throws the signal's reason). */
  signal?: AbortSignal;
}

/**
 * Reads `handle` from offset 0 in chunks of up to READ_CHUNK_BYTES and hands each chunk, in
 * order, to `take(chunk, release)`. The chunk's buffer is read into again only after `release()`
 * (the consumer must not touch it afterwards). Returns the number of bytes read.
 */
export async function readChunks(handle: FileHandle, length: number, take: (chunk: Buffer, release: () => void) => void, opts: ReadChunksOptions): Promise<number> {
  const { signal, until } = opts;
  // No bigger than the file (small files do not each allocate a whole chunk).
  const chunkBytes = Math.min(READ_CHUNK_BYTES, Math.max(until === 'eof' ? 64 * 1024 : 1, length));
  const free: Buffer[] = Array.from({ length: Math.max(1, opts.buffers ?? 2) }, () => Buffer.allocUnsafe(chunkBytes));
  let wake: (() => void) | undefined;
  const onAbort = () => wake?.();
  signal?.addEventListener('abort', onAbort);
  const bufferFree = async (): Promise<Buffer> => {
    while (free.length === 0) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
    }
    signal?.throwIfAborted();
    return free.pop() as Buffer;
  };
  // Fills `b` from `offset` with up to `want` bytes (less only at the end of the file).
  const fill = async (b: Buffer, offset: number, want: number): Promise<number> => {
    let got = 0;
    while (got < want) {
      const { bytesRead } = await handle.read(b, got, want - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got;
  };
  try {
    let offset = 0;
    // Reads past `length` only when reading to the end (the file may have grown).
    const wantAt = (at: number) => (until === 'length' ? Math.min(chunkBytes, length - at) : chunkBytes);
    let next: Promise<{ b: Buffer; got: number; want: number }> | undefined;
    const start = async (at: number) => {
      const b = await bufferFree();
      const want = wantAt(at);
      return { b, want, got: want === 0 ? 0 : await fill(b, at, want) };
    };
    if (wantAt(0) > 0) next = start(0);
    while (next) {
      const { b, got, want } = await next;
      next = undefined;
      const release = () => {
        free.push(b);
        wake?.();
      };
      if (got === 0) {
        release();
        break;
      }
      offset += got;
      // The next read goes out before this chunk is consumed (when a buffer is free).
      if (got === want && wantAt(offset) > 0) next = start(offset);
      // A rejected read-ahead is awaited (and thrown) on the next turn; never left unhandled.
      next?.catch(() => undefined);
      take(got === b.length ? b : b.subarray(0, got), release);
    }
    if (until === 'length' && offset < length) throw new ShortFileError(offset, length);
    return offset;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}
