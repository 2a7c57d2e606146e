// readChunks (common/storage/file-source.ts): a file read start to end into a few reused
// buffers, one read ahead, each buffer read into again only after its consumer released it.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileSourceStream, isFileSource, READ_CHUNK_BYTES, readChunks, ShortFileError } from '../../common/storage/file-source';

const MiB = 1024 * 1024;

describe('file-source: readChunks', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'det-file-source-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** Runs `fn` with a file holding `content` open for reading, and closes it. */
  async function withFile(content: Buffer, fn: (fh: fs.FileHandle) => Promise<void>): Promise<void> {
    const p = path.join(dir, `f-${content.length}-${Math.random()}`);
    await fs.writeFile(p, content);
    const fh = await fs.open(p, 'r');
    try {
      await fn(fh);
    } finally {
      await fh.close();
    }
  }

  it('hands every byte over in order, in chunks of at most 1 MiB, from the same two buffers', async () => {
    const content = randomBytes(3 * MiB + 12345);
    await withFile(content, async (fh) => {
      const got: Buffer[] = [];
      const memory = new Set<ArrayBufferLike>();
      const n = await readChunks(
        fh,
        content.length,
        (chunk, release) => {
          got.push(Buffer.from(chunk)); // a copy: the buffer is read into again after release
          memory.add(chunk.buffer);
          release();
        },
        { until: 'length' },
      );
      assert.equal(n, content.length);
      assert.deepEqual(
        got.map((c) => c.length),
        [MiB, MiB, MiB, 12345],
      );
      assert.ok(Buffer.concat(got).equals(content));
      assert.equal(memory.size, 2, 'two buffers, reused');
      assert.equal(READ_CHUNK_BYTES, MiB);
    });
  });

  it('reads a buffer again only after its consumer released it', async () => {
    // An in-memory handle: every read resolves within the same turn, so once the event loop has
    // had a turn (setImmediate), everything readChunks could do without a release is done.
    const content = randomBytes(3 * MiB);
    const reads: number[] = [];
    const handle = {
      read: async (buf: Buffer, off: number, len: number, pos: number) => {
        reads.push(pos);
        return { bytesRead: content.copy(buf, off, pos, Math.min(content.length, pos + len)), buffer: buf };
      },
    } as unknown as fs.FileHandle;
    const held: (() => void)[] = [];
    const seen: string[] = [];
    const done = readChunks(
      handle,
      content.length,
      (chunk, release) => {
        seen.push(chunk.subarray(0, 4).toString('hex'));
        held.push(release);
      },
      { until: 'length', buffers: 2 },
    );
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    // Two buffers: two chunks, then no further read until one is released.
    await turn();
    assert.equal(seen.length, 2);
    assert.deepEqual(reads, [0, MiB]);
    held.shift()!();
    await turn();
    assert.equal(seen.length, 3);
    assert.deepEqual(reads, [0, MiB, 2 * MiB]);
    for (const r of held) r();
    assert.equal(await done, content.length);
    assert.deepEqual(seen, [0, 1, 2].map((i) => content.subarray(i * MiB, i * MiB + 4).toString('hex')));
  });

  it("'length': a file shorter than expected fails with ShortFileError; bytes past the length are not read", async () => {
    const content = randomBytes(MiB + 10);
    await withFile(content, async (fh) => {
      await assert.rejects(
        readChunks(fh, 2 * MiB, (_c, release) => release(), { until: 'length' }),
        (err: unknown) => err instanceof ShortFileError && err.got === MiB + 10 && err.expected === 2 * MiB && /the file ended after 1048586 of the 2097152 bytes expected/.test(err.message),
      );
      const got: Buffer[] = [];
      assert.equal(await readChunks(fh, 100, (c, release) => (got.push(Buffer.from(c)), release()), { until: 'length' }), 100);
      assert.ok(Buffer.concat(got).equals(content.subarray(0, 100)));
    });
  });

  it("'eof': reads to the end of the file, also past the size it was expected to have, and an empty file gives nothing", async () => {
    const content = randomBytes(2 * MiB + 7);
    await withFile(content, async (fh) => {
      const got: Buffer[] = [];
      assert.equal(await readChunks(fh, 1000, (c, release) => (got.push(Buffer.from(c)), release()), { until: 'eof' }), content.length);
      assert.ok(Buffer.concat(got).equals(content));
    });
    await withFile(Buffer.alloc(0), async (empty) => {
      let calls = 0;
      assert.equal(await readChunks(empty, 0, () => calls++, { until: 'eof' }), 0);
      assert.equal(await readChunks(empty, 0, () => calls++, { until: 'length' }), 0);
      assert.equal(calls, 0);
    });
  });

  it('an abort while it waits for a free buffer rejects with the reason', async () => {
    await withFile(randomBytes(3 * MiB), async (fh) => {
      const ac = new AbortController();
      let chunks = 0;
      const done = readChunks(
        fh,
        3 * MiB,
        () => {
          // The one buffer is never released: the next read waits for it, until the abort.
          if (++chunks === 1) setImmediate(() => ac.abort(new Error('request over')));
        },
        { until: 'length', buffers: 1, signal: ac.signal },
      );
      await assert.rejects(done, /request over/);
      assert.equal(chunks, 1);
    });
  });

  it('a FileSource is told apart from Buffers and streams, and reads as a stream of exactly its size', async () => {
    const content = randomBytes(MiB + 3);
    await withFile(content, async (fh) => {
      assert.equal(isFileSource({ handle: fh, size: 5 }), true);
      assert.equal(isFileSource(Buffer.from('x')), false);
      assert.equal(isFileSource(Readable.from([])), false);
      const chunks: Buffer[] = [];
      for await (const c of fileSourceStream({ handle: fh, size: 1000 })) chunks.push(c as Buffer);
      assert.ok(Buffer.concat(chunks).equals(content.subarray(0, 1000)));
      const none: Buffer[] = [];
      for await (const c of fileSourceStream({ handle: fh, size: 0 })) none.push(c as Buffer);
      assert.equal(none.length, 0);
      // The handle stays open for the caller.
      assert.equal((await fh.stat()).size, content.length);
    });
  });
});
