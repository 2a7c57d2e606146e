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

  async function fileOf(content: Buffer): Promise<fs.FileHandle> {
    const p = path.join(dir, `f-${content.length}-${Math.random()}`);
    await fs.writeFile(p, content);
    return fs.open(p, 'r');
  }

  it('hands every byte over in order, in chunks of at most 1 MiB, from the same two buffers', async () => {
    const content = randomBytes(3 * MiB + 12345);
    const fh = await fileOf(content);
    try {
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
    } finally {
      await fh.close();
    }
  });

  it('reads a buffer again only after its consumer released it', async () => {
    const content = randomBytes(3 * MiB);
    const fh = await fileOf(content);
    try {
      const held: (() => void)[] = [];
      const seen: string[] = [];
      const done = readChunks(
        fh,
        content.length,
        (chunk, release) => {
          seen.push(chunk.subarray(0, 4).toString('hex'));
          held.push(release);
        },
        { until: 'length', buffers: 2 },
      );
      // Two buffers: two chunks, then nothing until one is released.
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(seen.length, 2);
      held.shift()!();
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(seen.length, 3);
      for (const r of held) r();
      assert.equal(await done, content.length);
      assert.deepEqual(seen, [0, 1, 2].map((i) => content.subarray(i * MiB, i * MiB + 4).toString('hex')));
    } finally {
      await fh.close();
    }
  });

  it("'length': a file shorter than expected fails with ShortFileError; bytes past the length are not read", async () => {
    const content = randomBytes(MiB + 10);
    const fh = await fileOf(content);
    try {
      await assert.rejects(
        readChunks(fh, 2 * MiB, (_c, release) => release(), { until: 'length' }),
        (err: unknown) => err instanceof ShortFileError && err.got === MiB + 10 && err.expected === 2 * MiB && /the file ended after 1048586 of the 2097152 bytes expected/.test(err.message),
      );
      const got: Buffer[] = [];
      assert.equal(await readChunks(fh, 100, (c, release) => (got.push(Buffer.from(c)), release()), { until: 'length' }), 100);
      assert.ok(Buffer.concat(got).equals(content.subarray(0, 100)));
    } finally {
      await fh.close();
    }
  });

  it("'eof': reads to the end of the file, also past the size it was expected to have, and an empty file gives nothing", async () => {
    const content = randomBytes(2 * MiB + 7);
    const fh = await fileOf(content);
    try {
      const got: Buffer[] = [];
      assert.equal(await readChunks(fh, 1000, (c, release) => (got.push(Buffer.from(c)), release()), { until: 'eof' }), content.length);
      assert.ok(Buffer.concat(got).equals(content));
    } finally {
      await fh.close();
    }
    const empty = await fileOf(Buffer.alloc(0));
    try {
      let calls = 0;
      assert.equal(await readChunks(empty, 0, () => calls++, { until: 'eof' }), 0);
      assert.equal(await readChunks(empty, 0, () => calls++, { until: 'length' }), 0);
      assert.equal(calls, 0);
    } finally {
      await empty.close();
    }
  });

  it('an abort while it waits for a free buffer rejects with the reason', async () => {
    const fh = await fileOf(randomBytes(3 * MiB));
    try {
      const ac = new AbortController();
      const done = readChunks(fh, 3 * MiB, () => undefined, { until: 'length', buffers: 1, signal: ac.signal });
      await new Promise((resolve) => setTimeout(resolve, 20));
      ac.abort(new Error('request over'));
      await assert.rejects(done, /request over/);
    } finally {
      await fh.close();
    }
  });

  it('a FileSource is told apart from Buffers and streams, and reads as a stream of exactly its size', async () => {
    const content = randomBytes(MiB + 3);
    const fh = await fileOf(content);
    try {
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
    } finally {
      await fh.close();
    }
  });
});
