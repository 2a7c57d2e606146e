// One contract suite for checkpoint storage, run on both backends: shared_fs in a temp dir and
// s3 against the real s3rver of the test environment (a fresh bucket per test). Backend-only
// behaviour (symlinks escaping the root, keys planted by a standard S3 client, S3 error
// messages, awscli interoperability) follows the shared suite.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { DetError } from '../../common/errors';
import {
  isObjectNotFound,
  openCheckpointStorage,
  S3Storage,
  type CheckpointStorage,
  type CheckpointStorageKind,
} from '../../common/storage';
import { DEFAULT_MULTIPART_THRESHOLD_BYTES, PART_SIZE } from '../../common/storage/s3';
import { awsCli } from '../support/awscli';
import { testEnv } from '../support/env';
import { createTestBucket, deleteTestBucket, S3_TEST_REGION, S3RVER_CREDENTIALS, testS3Client } from '../support/s3';
import { recordWire } from '../support/s3-wire';
import { TcpProxy } from '../support/tcp-proxy';

const PREFIX = 'team-a/exp-1';
const LIST_PAGE = 7;

/** A storage under test plus what the backend-specific checks need. */
interface Opened {
  storage: CheckpointStorage;
  /** shared_fs: the root directory; s3: the bucket. */
  where: string;
  cleanup(): Promise<void>;
}

interface Backend {
  kind: CheckpointStorageKind;
  open(): Promise<Opened>;
}

let s3: S3Client | undefined;
function rawS3(): S3Client {
  s3 ??= testS3Client();
  return s3;
}

const sharedFsBackend: Backend = {
  kind: 'shared_fs',
  async open() {
    const dir = mkdtempSync(path.join(tmpdir(), 'det-storage-'));
    const root = path.join(dir, 'ckpts');
    return {
      storage: openCheckpointStorage({ type: 'shared_fs', host_path: root }),
      where: root,
      cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

const s3Backend: Backend = {
  kind: 's3',
  async open() {
    const bucket = await createTestBucket(rawS3(), 'storage');
    const storage = openCheckpointStorage(
      { type: 's3', bucket, prefix: PREFIX, region: S3_TEST_REGION, endpoint_url: testEnv().s3Endpoint, force_path_style: true },
      { credentials: S3RVER_CREDENTIALS, listPageSize: LIST_PAGE },
    );
    return {
      storage,
      where: bucket,
      cleanup: async () => {
        (storage as S3Storage).destroy();
        await deleteTestBucket(rawS3(), bucket);
      },
    };
  },
};

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

async function listAll(storage: CheckpointStorage, prefix: string) {
  const out = [];
  for await (const o of storage.list(prefix)) out.push(o);
  return out;
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A stream of `total` pseudo-random bytes in 1 MiB chunks, and their sha256. */
function bigStream(total: number): { stream: Readable; digest: string } {
  const block = randomBytes(1024 * 1024);
  const hash = createHash('sha256');
  const chunks: Buffer[] = [];
  for (let off = 0, i = 0; off < total; off += block.length, i++) {
    const chunk = Buffer.from(block.subarray(0, Math.min(block.length, total - off)));
    chunk.writeUInt32BE(i, 0); // every chunk differs
    hash.update(chunk);
    chunks.push(chunk);
  }
  return { stream: Readable.from(chunks), digest: hash.digest('hex') };
}

/** `body` as a stream of 1 MiB chunks. */
function streamOf(body: Buffer): Readable {
  const chunks: Buffer[] = [];
  for (let off = 0; off < body.length; off += 1024 * 1024) chunks.push(body.subarray(off, off + 1024 * 1024));
  return Readable.from(chunks);
}

/** The SDK commands `client` runs from now on, by name (the lean PUT path runs none). */
function recordCommands(client: S3Client): string[] {
  const commands: string[] = [];
  client.middlewareStack.add(
    (next, context) => (args) => {
      commands.push(String(context.commandName));
      return next(args);
    },
    { step: 'initialize', name: 'countCommands' },
  );
  return commands;
}

/** A temp file holding `content`, opened for reading; `done()` closes it and removes it. */
async function openTempFile(content: Buffer): Promise<{ handle: fsp.FileHandle; done(): Promise<void> }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'det-storage-file-'));
  writeFileSync(path.join(dir, 'f.bin'), content);
  const handle = await fsp.open(path.join(dir, 'f.bin'), 'r');
  return {
    handle,
    done: async () => {
      await handle.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An S3Storage of `bucket` at a local HTTP server that answers like S3 (for answers s3rver never gives); close() stops both. */
async function storageServedBy(server: http.Server, bucket: string, maxAttempts: number): Promise<S3Storage & { close(): Promise<void> }> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  const storage = new S3Storage({ bucket, endpointUrl: url, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS, maxAttempts });
  return Object.assign(storage, {
    close: async () => {
      storage.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  });
}

/** s3rver keeps what arrived of a PUT cut short (S3 keeps nothing): at most that, never the declared size. */
async function assertNotComplete(storage: S3Storage, key: string, declared: number): Promise<void> {
  const info = await storage.head(key);
  assert.ok(info === undefined || info.size < declared, `${key}: ${JSON.stringify(info)}`);
}

async function assertInvalidKey(p: Promise<unknown> | (() => unknown), key: string): Promise<void> {
  await assert.rejects(
    async () => (typeof p === 'function' ? p() : p),
    (err: unknown) => {
      assert.ok(err instanceof DetError, `expected a DetError for ${JSON.stringify(key)}, got ${String(err)}`);
      assert.equal(err.code, 'DET_ERR_INVALID_ARGUMENT');
      assert.ok(err.message.includes(JSON.stringify(key)), `message should name the key ${JSON.stringify(key)}: ${err.message}`);
      return true;
    },
  );
}

const BAD_KEYS = ['../x', 'a/../../x', 'a/..', '..', '/etc/passwd', 'a\\b', '..\\x', 'a//b', 'a/', '/', '', './a', 'x\0y', 'C:/x'];

function storageSuite(backend: Backend): void {
  describe(`checkpoint storage contract: ${backend.kind}`, function () {
    let o: Opened;
    beforeEach(async () => {
      o = await backend.open();
    });
    afterEach(async () => {
      await o?.cleanup();
    });

    it('has the right kind', () => {
      assert.equal(o.storage.kind, backend.kind);
    });

    it('round-trips a small object, with head before and after', async () => {
      const body = Buffer.from('{"step": 100}\n');
      assert.equal(await o.storage.head('c1/metadata.json'), undefined);
      const put = await o.storage.put('c1/metadata.json', body, { size: body.length, contentType: 'application/json' });
      assert.equal(typeof put.etag, 'string');
      assert.deepEqual(await readAll(await o.storage.get('c1/metadata.json')), body);
      const head = await o.storage.head('c1/metadata.json');
      assert.equal(head?.size, body.length);
      assert.equal(head?.etag, put.etag);
      // Overwriting replaces the content and changes the ETag.
      const body2 = Buffer.from('{"step": 200, "more": true}\n');
      const put2 = await o.storage.put('c1/metadata.json', Readable.from([body2]));
      assert.deepEqual(await readAll(await o.storage.get('c1/metadata.json')), body2);
      assert.notEqual(put2.etag, put.etag);
      assert.equal((await o.storage.head('c1/metadata.json'))?.size, body2.length);
    });

    it('round-trips a ~20 MiB stream of unknown size (multipart on S3)', async () => {
      const total = 20 * 1024 * 1024 + 12345;
      const { stream, digest } = bigStream(total);
      const commands = o.storage instanceof S3Storage ? recordCommands(o.storage.client) : [];
      await o.storage.put('c2/model.bin', stream);
      if (backend.kind === 's3') {
        // s3rver's ETag for a multipart object has no "-<parts>" suffix: count the requests instead.
        assert.equal(commands.filter((c) => c === 'UploadPartCommand').length, Math.ceil(total / PART_SIZE), commands.join(','));
        assert.equal(commands.filter((c) => c === 'CompleteMultipartUploadCommand').length, 1, commands.join(','));
      }
      assert.equal((await o.storage.head('c2/model.bin'))?.size, total);
      const back = await readAll(await o.storage.get('c2/model.bin'));
      assert.equal(back.length, total);
      assert.equal(sha256(back), digest);
    });

    it('round-trips an open file (FileSource): exactly its size, the handle left open', async () => {
      const content = randomBytes(3 * 1024 * 1024 + 77);
      const { handle, done } = await openTempFile(content);
      try {
        const size = content.length - 7; // bytes past the size are not sent
        await o.storage.put('c3/shard.bin', { handle, size }, { sha256: sha256(content.subarray(0, size)) });
        assert.ok((await readAll(await o.storage.get('c3/shard.bin'))).equals(content.subarray(0, size)));
        // Sent again (a retry does this) from the start, from the same handle.
        await o.storage.put('c3/again.bin', { handle, size }, { sha256: sha256(content.subarray(0, size)) });
        assert.ok((await readAll(await o.storage.get('c3/again.bin'))).equals(content.subarray(0, size)));
        assert.equal((await handle.stat()).size, content.length, 'the handle is still open');
      } finally {
        await done();
      }
    });

    it('get of a missing object throws ObjectNotFoundError naming its location', async () => {
      await assert.rejects(o.storage.get('nope/x.bin'), (err: unknown) => {
        assert.ok(isObjectNotFound(err), String(err));
        assert.ok((err as Error).message.includes(o.storage.location('nope/x.bin')), (err as Error).message);
        return true;
      });
    });

    it('lists by prefix, across pages, in key order', async () => {
      const keys: string[] = [];
      for (let i = 0; i < 30; i++) keys.push(`ckpt/a/f${String(i).padStart(2, '0')}`);
      const others = ['ckpt/b/x', 'ckpt/ab', 'ckptx', 'zzz/ckpt/a/f00'];
      await Promise.all([...keys, ...others].map((k) => o.storage.put(k, Buffer.from(k))));

      const underA = await listAll(o.storage, 'ckpt/a/');
      assert.deepEqual(underA.map((x) => x.key), keys);
      for (const x of underA) {
        assert.equal(x.size, Buffer.byteLength(x.key));
        assert.equal(x.etag, (await o.storage.head(x.key))?.etag);
      }
      // A plain string prefix, not a directory: "ckpt/a" also matches "ckpt/ab".
      assert.deepEqual((await listAll(o.storage, 'ckpt/a')).map((x) => x.key), [...keys, 'ckpt/ab']);
      assert.deepEqual((await listAll(o.storage, 'ckpt')).map((x) => x.key), [...keys, 'ckpt/ab', 'ckpt/b/x', 'ckptx']);
      assert.equal((await listAll(o.storage, '')).length, keys.length + others.length);
      assert.deepEqual(await listAll(o.storage, 'missing/'), []);
    });

    it('deletes idempotently, tolerating missing keys', async () => {
      for (const k of ['d/1', 'd/2', 'd/sub/3', 'keep/1']) await o.storage.put(k, Buffer.from(k));
      await o.storage.delete(['d/1', 'd/sub/3', 'd/never-there']);
      assert.deepEqual((await listAll(o.storage, '')).map((x) => x.key), ['d/2', 'keep/1']);
      await o.storage.delete(['d/1', 'd/sub/3', 'd/never-there']);
      await o.storage.delete([]);
      // More keys than one S3 DeleteObjects request takes (1000), nearly all missing.
      const many = Array.from({ length: 1500 }, (_, i) => `d/m${i}`);
      await o.storage.put('d/m1499', Buffer.from('last'));
      await o.storage.delete([...many, 'd/2']);
      assert.deepEqual((await listAll(o.storage, '')).map((x) => x.key), ['keep/1']);
      assert.equal(await o.storage.head('d/2'), undefined);
    });

    it('rejects keys with "..", absolute paths, backslashes, empty segments and NUL, naming the key', async () => {
      for (const key of BAD_KEYS) {
        await assertInvalidKey(o.storage.put(key, Buffer.from('x')), key);
        await assertInvalidKey(o.storage.get(key), key);
        await assertInvalidKey(o.storage.head(key), key);
        await assertInvalidKey(o.storage.delete(['ok', key]), key);
        await assertInvalidKey(() => o.storage.location(key), key);
      }
      await assertInvalidKey(listAll(o.storage, '../'), '..');
      // Nothing was written anywhere.
      assert.deepEqual(await listAll(o.storage, ''), []);
    });

    it('location() names where a key is', () => {
      const loc = o.storage.location('c1/model.bin');
      if (backend.kind === 's3') assert.equal(loc, `s3://${o.where}/${PREFIX}/c1/model.bin`);
      else assert.equal(loc, path.join(o.where, 'c1', 'model.bin'));
    });
  });
}

describe('checkpoint storage', function () {
  this.timeout(120_000);

  after(() => {
    s3?.destroy();
  });

  storageSuite(sharedFsBackend);
  storageSuite(s3Backend);

  describe('shared_fs only', () => {
    let o: Opened;
    let outside: string;
    beforeEach(async () => {
      o = await sharedFsBackend.open();
      outside = mkdtempSync(path.join(tmpdir(), 'det-outside-'));
      writeFileSync(path.join(outside, 'secret'), 'do not read');
      mkdirSync(o.where, { recursive: true });
    });
    afterEach(async () => {
      await o.cleanup();
      rmSync(outside, { recursive: true, force: true });
    });

    it('refuses a directory symlink that leads outside the root, for every operation', async () => {
      symlinkSync(outside, path.join(o.where, 'evil'));
      for (const key of ['evil/secret', 'evil/new', 'evil/deeper/new']) {
        await assertInvalidKey(o.storage.get(key), key);
        await assertInvalidKey(o.storage.head(key), key);
        await assertInvalidKey(o.storage.put(key, Buffer.from('x')), key);
        await assertInvalidKey(o.storage.delete([key]), key);
      }
      assert.deepEqual(readdirSync(outside), ['secret']);
      // Listing does not follow the symlink either.
      assert.deepEqual(await listAll(o.storage, ''), []);
    });

    it('refuses a file symlink (also a dangling one) that leads outside the root', async () => {
      symlinkSync(path.join(outside, 'secret'), path.join(o.where, 'link'));
      symlinkSync(path.join(outside, 'not-yet'), path.join(o.where, 'dangling'));
      await assertInvalidKey(o.storage.get('link'), 'link');
      await assertInvalidKey(o.storage.put('dangling', Buffer.from('x')), 'dangling');
      assert.deepEqual(readdirSync(outside), ['secret']);
    });

    it('allows symlinks that stay inside the root, and a root that is itself behind a symlink', async () => {
      await o.storage.put('real/a', Buffer.from('A'));
      symlinkSync('real', path.join(o.where, 'alias'));
      assert.deepEqual(await readAll(await o.storage.get('alias/a')), Buffer.from('A'));
      const via = path.join(path.dirname(o.where), 'via-link');
      symlinkSync(o.where, via);
      const storage = openCheckpointStorage({ type: 'shared_fs', host_path: via });
      assert.deepEqual(await readAll(await storage.get('real/a')), Buffer.from('A'));
      assert.equal(realpathSync(storage.location('real/a')), realpathSync(path.join(o.where, 'real', 'a')));
    });

    it('writes atomically: no temp files are left and readers see old or new content only', async () => {
      await o.storage.put('c/f', Buffer.from('old'));
      const failing = new Readable({
        read() {
          this.push(Buffer.from('partial'));
          this.destroy(new Error('source failed'));
        },
      });
      await assert.rejects(o.storage.put('c/f', failing));
      assert.deepEqual(await readAll(await o.storage.get('c/f')), Buffer.from('old'));
      assert.deepEqual(readdirSync(path.join(o.where, 'c')), ['f']);
    });
  });

  describe('s3 only', () => {
    let bucket: string;
    let storage: S3Storage;
    beforeEach(async () => {
      bucket = await createTestBucket(rawS3(), 's3only');
      storage = new S3Storage({
        bucket,
        prefix: PREFIX,
        endpointUrl: testEnv().s3Endpoint,
        forcePathStyle: true,
        region: S3_TEST_REGION,
        credentials: S3RVER_CREDENTIALS,
      });
    });
    afterEach(async () => {
      storage.destroy();
      await deleteTestBucket(rawS3(), bucket);
    });

    it('refuses a key with "../" planted by a standard S3 client', async () => {
      // Stays inside the bucket even on s3rver, whose filesystem store resolves the "..".
      const planted = `${PREFIX}/sub/../x`;
      await rawS3().send(new PutObjectCommand({ Bucket: bucket, Key: planted, Body: 'planted' }));
      // A standard client reads it back under that key; the storage refuses to.
      const raw = await rawS3().send(new GetObjectCommand({ Bucket: bucket, Key: planted }));
      assert.equal(await raw.Body?.transformToString(), 'planted');
      await assertInvalidKey(storage.get('sub/../x'), 'sub/../x');
      await assertInvalidKey(storage.head('sub/../x'), 'sub/../x');
    });

    it('refuses to list a planted key that would escape a download directory', async () => {
      // s3rver cannot list a key with a ".." segment (it resolves them on its filesystem), so this
      // plants the Windows-style traversal; both fail the same key validation in list().
      const planted = `${PREFIX}/ok/..\\..\\escape`;
      await rawS3().send(new PutObjectCommand({ Bucket: bucket, Key: planted, Body: 'planted' }));
      await storage.put('ok/fine', Buffer.from('fine'));
      await assert.rejects(listAll(storage, ''), (err: unknown) => {
        assert.ok(err instanceof DetError && err.code === 'DET_ERR_INVALID_ARGUMENT', String(err));
        assert.ok(err.message.includes(planted), err.message);
        return true;
      });
    });

    it('keeps objects under its prefix, visible to a standard client under the full key', async () => {
      await storage.put('c1/a.txt', Buffer.from('hello'));
      const raw = await rawS3().send(new GetObjectCommand({ Bucket: bucket, Key: `${PREFIX}/c1/a.txt` }));
      assert.equal(await raw.Body?.transformToString(), 'hello');
      await rawS3().send(new PutObjectCommand({ Bucket: bucket, Key: 'elsewhere/b.txt', Body: 'x' }));
      assert.deepEqual((await listAll(storage, '')).map((x) => x.key), ['c1/a.txt']);
    });

    it('says clearly when the bucket does not exist', async () => {
      const missing = new S3Storage({ bucket: `${bucket}-missing`, endpointUrl: testEnv().s3Endpoint, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS });
      try {
        await assert.rejects(missing.put('a', Buffer.from('x')), /bucket det-test-.*-missing does not exist/);
        await assert.rejects(listAll(missing, ''), /does not exist/);
      } finally {
        missing.destroy();
      }
    });

    it('never puts credentials into error messages', async () => {
      const secretAccessKey = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
      const accessKeyId = 'AKIAIOSFODNN7EXAMPLE';
      const wrong = new S3Storage({ bucket, endpointUrl: testEnv().s3Endpoint, forcePathStyle: true, region: S3_TEST_REGION, maxAttempts: 1, credentials: { accessKeyId, secretAccessKey } });
      try {
        for (const op of [() => wrong.put('a', Buffer.from('x')), () => wrong.get('a'), () => listAll(wrong, ''), () => wrong.delete(['a'])]) {
          await assert.rejects(op(), (err: unknown) => {
            const text = `${(err as Error).message} ${JSON.stringify(err)} ${String((err as Error).stack)}`;
            assert.ok(err instanceof DetError, String(err));
            assert.ok(!text.includes(secretAccessKey) && !text.includes(accessKeyId), `credentials leaked: ${text}`);
            assert.match(err.message, /rejected the credentials|access denied/);
            return true;
          });
        }
      } finally {
        wrong.destroy();
      }
    });

    it('says clearly when the endpoint cannot be reached', async () => {
      const port = await new Promise<number>((resolve) => {
        const srv = net.createServer().listen(0, '127.0.0.1', () => {
          const p = (srv.address() as net.AddressInfo).port;
          srv.close(() => resolve(p));
        });
      });
      const dead = new S3Storage({ bucket, endpointUrl: `http://127.0.0.1:${port}`, forcePathStyle: true, region: S3_TEST_REGION, maxAttempts: 2, credentials: S3RVER_CREDENTIALS });
      try {
        await assert.rejects(dead.head('a'), new RegExp(`cannot reach S3 at http://127\\.0\\.0\\.1:${port}`));
      } finally {
        dead.destroy();
      }
    });

    describe('single PUT below the multipart threshold', () => {
      // Just over one part, so that the first size above it takes two parts.
      const THRESHOLD = PART_SIZE + 1024 * 1024;
      let small: S3Storage;
      beforeEach(() => {
        small = new S3Storage({ bucket, prefix: PREFIX, endpointUrl: testEnv().s3Endpoint, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS, multipartThresholdBytes: THRESHOLD });
      });
      afterEach(() => small.destroy());

      it('defaults to 256 MiB and refuses thresholds over 5 GiB', () => {
        assert.equal(storage.multipartThresholdBytes, DEFAULT_MULTIPART_THRESHOLD_BYTES);
        assert.equal(DEFAULT_MULTIPART_THRESHOLD_BYTES, 256 * 1024 * 1024);
        assert.throws(() => new S3Storage({ bucket, multipartThresholdBytes: 5 * 1024 ** 3 + 1 }), /multipartThresholdBytes must be an integer from 0 to 5368709120/);
      });

      it('a stream up to the threshold goes as ONE PutObject signed with the given sha256; one byte more goes multipart', async () => {
        const wire = recordWire(small.client);
        const atBody = randomBytes(THRESHOLD);
        const at = { stream: streamOf(atBody), digest: sha256(atBody) };
        await small.put('c/at.bin', at.stream, { size: THRESHOLD, sha256: at.digest });
        assert.deepEqual(wire, [{ command: 'PutObjectCommand', key: `${PREFIX}/c/at.bin`, contentSha256: at.digest, sha256Signed: true }]);
        assert.equal(sha256(await readAll(await small.get('c/at.bin'))), at.digest);

        wire.length = 0;
        const overBody = randomBytes(THRESHOLD + 1);
        const over = { stream: streamOf(overBody), digest: sha256(overBody) };
        await small.put('c/over.bin', over.stream, { size: THRESHOLD + 1, sha256: over.digest });
        assert.deepEqual(wire.map((w) => w.command), ['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand']);
        // Each part is signed with its own hash, never the whole object's.
        for (const part of wire.filter((w) => w.command === 'UploadPartCommand')) {
          assert.match(part.contentSha256 ?? '', /^[0-9a-f]{64}$/);
          assert.notEqual(part.contentSha256, over.digest);
        }
        assert.equal(sha256(await readAll(await small.get('c/over.bin'))), over.digest);
      });

      it('sends the given sha256 as is, without hashing the body (s3rver does not check it; S3 would refuse the object)', async () => {
        const wire = recordWire(small.client);
        const body = randomBytes(100_000);
        const claimed = sha256(Buffer.from('something else'));
        await small.put('c/claimed.bin', body, { sha256: claimed });
        assert.deepEqual(wire.map((w) => [w.command, w.contentSha256]), [['PutObjectCommand', claimed]]);
        // Without one, the Buffer is hashed before sending; a stream of unknown hash goes through lib-storage.
        wire.length = 0;
        await small.put('c/plain.bin', body);
        assert.deepEqual(wire.map((w) => [w.command, w.contentSha256]), [['PutObjectCommand', sha256(body)]]);
        assert.deepEqual(await readAll(await small.get('c/plain.bin')), body);
      });

      it('a Buffer goes on the lean path, past the SDK middleware stack, and s3rver accepts its signature', async () => {
        const commands = recordCommands(small.client);
        const wire = recordWire(small.client);
        const body = randomBytes(100 * 1024);
        const key = "c/odd name (1)+*!'~.bin";
        const put = await small.put(key, body, { sha256: sha256(body), contentType: 'application/x-det' });
        assert.deepEqual(commands, [], 'no SDK command for a Buffer PUT');
        assert.deepEqual(wire, [{ command: 'PutObjectCommand', key: `${PREFIX}/${key}`, contentSha256: sha256(body), sha256Signed: true }]);
        const raw = await rawS3().send(new GetObjectCommand({ Bucket: bucket, Key: `${PREFIX}/${key}` }));
        assert.equal(raw.ContentType, 'application/x-det');
        assert.equal(raw.ETag?.replace(/"/g, ''), put.etag);
        assert.deepEqual(Buffer.from(await raw.Body!.transformToByteArray()), body);
      });

      it('refuses a malformed sha256 or a size that contradicts the buffer, sending nothing', async () => {
        const wire = recordWire(small.client);
        await assert.rejects(small.put('c/x', Buffer.from('x'), { sha256: 'ABC' }), (err: unknown) => err instanceof DetError && err.code === 'DET_ERR_INVALID_ARGUMENT' && /sha256 must be 64 lowercase hex digits, got "ABC"/.test(err.message));
        await assert.rejects(small.put('c/x', Buffer.from('x'), { size: 2 }), /size 2 given for a 1-byte buffer/);
        assert.deepEqual(wire, []);
      });

      it('a stream that ends short of its declared size, or fails, fails the PUT at once (no wait for the missing bytes), never completing it', async () => {
        const short = bigStream(2 * 1024 * 1024);
        await assert.rejects(
          small.put('c/short.bin', short.stream, { size: 3 * 1024 * 1024, sha256: short.digest }),
          (err: unknown) => err instanceof DetError && /cannot upload s3:\/\/.*\/c\/short\.bin: .*the source ended after 2097152 of the 3145728 bytes declared/.test(err.message),
        );
        const long = bigStream(2 * 1024 * 1024);
        await assert.rejects(small.put('c/long.bin', long.stream, { size: 1024 * 1024, sha256: long.digest }), /the source delivered more than the 1048576 bytes declared/);
        let sentChunks = 0;
        const failing = new Readable({
          read() {
            if (sentChunks++ === 0) this.push(randomBytes(64 * 1024));
            else this.destroy(new Error('EIO: the disk failed'));
          },
        });
        await assert.rejects(small.put('c/failing.bin', failing, { size: 1024 * 1024, sha256: sha256(Buffer.alloc(1)) }), /cannot upload s3:\/\/.*\/c\/failing\.bin: .*EIO: the disk failed/);
        await assertNotComplete(small, 'c/short.bin', 3 * 1024 * 1024);
        await assertNotComplete(small, 'c/long.bin', 1024 * 1024 + 1);
        const closing = new Readable({
          read() {
            this.push(randomBytes(64 * 1024));
            this.destroy(); // closed without an error, before its end
          },
        });
        await assert.rejects(small.put('c/closing.bin', closing, { size: 1024 * 1024, sha256: sha256(Buffer.alloc(1)) }), /cannot upload s3:\/\/.*\/c\/closing\.bin: .*Premature close/);
        await assertNotComplete(small, 'c/failing.bin', 1024 * 1024);
        await assertNotComplete(small, 'c/closing.bin', 1024 * 1024);
      });

      it('a streamed PUT whose connection is reset is not retried by the SDK (the stream is spent); a Buffer is, and the object is complete', async () => {
        const proxy = await TcpProxy.start(Number(new URL(testEnv().s3Endpoint).port));
        const via = new S3Storage({ bucket, prefix: PREFIX, endpointUrl: proxy.url, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS, maxAttempts: 3 });
        try {
          const wire = recordWire(via.client);
          const { stream, digest } = bigStream(4 * 1024 * 1024);
          await proxy.inject({ kind: 'reset', afterBytes: 512 * 1024 }, 1);
          await assert.rejects(via.put('c/streamed.bin', stream, { size: 4 * 1024 * 1024, sha256: digest }), /cannot reach S3 at .* \((ECONNRESET|EPIPE)\)/);
          assert.equal(proxy.stats.resets, 1);
          assert.deepEqual(wire.map((w) => w.command), ['PutObjectCommand'], 'one attempt only');
          await assertNotComplete(storage, 'c/streamed.bin', 4 * 1024 * 1024);

          wire.length = 0;
          const body = randomBytes(4 * 1024 * 1024);
          await proxy.inject({ kind: 'reset', afterBytes: 512 * 1024 }, 1);
          await via.put('c/buffer.bin', body, { sha256: sha256(body) });
          assert.equal(proxy.stats.resets, 2);
          assert.deepEqual(wire.map((w) => w.command), ['PutObjectCommand', 'PutObjectCommand'], 'retried by the lean path');
          assert.equal(sha256(await readAll(await storage.get('c/buffer.bin'))), sha256(body));
        } finally {
          via.destroy();
          await proxy.close();
        }
      });

      it('an open file goes on the lean path as ONE PutObject signed with its sha256; a file shorter than its size fails at once and is not retried', async () => {
        const commands = recordCommands(small.client);
        const wire = recordWire(small.client);
        const content = randomBytes(5 * 1024 * 1024 + 3);
        const { handle, done } = await openTempFile(content);
        try {
          await small.put('c/file.bin', { handle, size: content.length }, { sha256: sha256(content) });
          assert.deepEqual(commands, [], 'no SDK command for a file PUT');
          assert.deepEqual(wire, [{ command: 'PutObjectCommand', key: `${PREFIX}/c/file.bin`, contentSha256: sha256(content), sha256Signed: true }]);
          assert.ok((await readAll(await small.get('c/file.bin'))).equals(content));

          wire.length = 0;
          const claimed = content.length + 1024 * 1024;
          await assert.rejects(
            small.put('c/short-file.bin', { handle, size: claimed }, { sha256: sha256(content) }),
            (err: unknown) => err instanceof DetError && /cannot upload s3:\/\/.*\/c\/short-file\.bin: .*the file ended after 5242883 of the 6291459 bytes expected/.test(err.message),
          );
          assert.equal(wire.length, 1, 'not retried');
          await assertNotComplete(small, 'c/short-file.bin', claimed);

          // Above the threshold a file goes multipart through the SDK, read from the same handle.
          wire.length = 0;
          const big = randomBytes(THRESHOLD + 1);
          const bigFile = await openTempFile(big);
          try {
            await small.put('c/big.bin', { handle: bigFile.handle, size: big.length }, { sha256: sha256(big) });
          } finally {
            await bigFile.done();
          }
          assert.deepEqual(wire.map((w) => w.command), ['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand']);
          assert.equal(sha256(await readAll(await small.get('c/big.bin'))), sha256(big));
        } finally {
          await done();
        }
      });

      it('a file PUT whose connection is reset is sent again from the start, and the object is complete', async () => {
        const proxy = await TcpProxy.start(Number(new URL(testEnv().s3Endpoint).port));
        const via = new S3Storage({ bucket, prefix: PREFIX, endpointUrl: proxy.url, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS, maxAttempts: 3 });
        const content = randomBytes(4 * 1024 * 1024);
        const { handle, done } = await openTempFile(content);
        try {
          const wire = recordWire(via.client);
          await proxy.inject({ kind: 'reset', afterBytes: 512 * 1024 }, 1);
          await via.put('c/reset-file.bin', { handle, size: content.length }, { sha256: sha256(content) });
          assert.equal(proxy.stats.resets, 1);
          assert.deepEqual(wire.map((w) => w.command), ['PutObjectCommand', 'PutObjectCommand'], 'retried by the lean path');
          assert.ok((await readAll(await storage.get('c/reset-file.bin'))).equals(content));
        } finally {
          await done();
          via.destroy();
          await proxy.close();
        }
      });
    });

    it('maps S3 error responses on the lean path like the SDK\'s: 5xx and SlowDown retried, a content mismatch named', async () => {
      // s3rver answers neither 5xx nor XAmzContentSHA256Mismatch: a local server answers like S3 does.
      const replies: [number, string][] = [];
      const seen: string[] = [];
      const server = http.createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          seen.push(`${req.method} ${req.url}`);
          const [status, code] = replies.shift() ?? [200, ''];
          res.writeHead(status, status === 200 ? { ETag: '"abc"' } : { 'Content-Type': 'application/xml', 'x-amz-request-id': 'REQ1' });
          res.end(status === 200 ? '' : `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>We &amp; you</Message></Error>`);
        });
      });
      const fake = await storageServedBy(server, bucket, 3);
      try {
        replies.push([503, 'SlowDown'], [500, 'InternalError']);
        assert.deepEqual(await fake.put('a/b', Buffer.from('x')), { etag: 'abc' });
        assert.deepEqual(seen, [`PUT /${bucket}/a/b`, `PUT /${bucket}/a/b`, `PUT /${bucket}/a/b`]);
        replies.push([400, 'XAmzContentSHA256Mismatch']);
        await assert.rejects(fake.put('a/c', Buffer.from('x')), /cannot upload s3:\/\/.*\/a\/c: S3 received content that does not match its sha256 \(XAmzContentSHA256Mismatch \(HTTP 400\), request id REQ1\)/);
        replies.push([503, 'SlowDown'], [503, 'SlowDown'], [503, 'SlowDown']);
        await assert.rejects(fake.put('a/d', Buffer.from('x')), /cannot upload s3:\/\/.*\/a\/d: SlowDown \(HTTP 503\), request id REQ1: We & you/);
        replies.push([403, 'AccessDenied']);
        await assert.rejects(fake.put('a/e', Buffer.from('x')), /a\/e: access denied \(AccessDenied \(HTTP 403\)/);
        assert.equal(seen.length, 3 + 1 + 3 + 1, 'not retried: the mismatch and the denial');
      } finally {
        await fake.close();
      }
    });

    it('an error answer that comes while a file is still being sent stops the sending; the retry sends the whole file on a new connection', async () => {
      // S3 answers some errors (503 SlowDown, 403) as soon as it has the headers.
      let connections = 0;
      let requests = 0;
      const received: string[] = [];
      const server = http.createServer((req, res) => {
        if (requests++ === 0) {
          res.writeHead(503, { 'Content-Type': 'application/xml', Connection: 'close' });
          res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>');
          return;
        }
        const hash = createHash('sha256');
        req.on('data', (c: Buffer) => hash.update(c));
        req.on('end', () => {
          received.push(hash.digest('hex'));
          res.writeHead(200, { ETag: '"ok"' });
          res.end();
        });
      });
      server.on('connection', () => connections++);
      const fake = await storageServedBy(server, bucket, 2);
      const content = randomBytes(32 * 1024 * 1024);
      const { handle, done } = await openTempFile(content);
      try {
        assert.deepEqual(await fake.put('a/file', { handle, size: content.length }, { sha256: sha256(content) }), { etag: 'ok' });
        assert.equal(requests, 2);
        assert.deepEqual(received, [sha256(content)]);
        assert.equal(connections, 2, 'the connection with half a request on it is not used again');
      } finally {
        await done();
        await fake.close();
      }
    });

    it('a body of 2 MiB or more waits for 100 Continue: an error S3 answers instead is reported as such, and no byte of the body is sent', async () => {
      // S3 answers a denial or SlowDown to "Expect: 100-continue" before the body; a server that
      // closed the connection while the client was still sending would leave only a reset.
      const answers: [number, string][] = [[403, 'AccessDenied'], [503, 'SlowDown']];
      const seen: { expect?: string; bodyBytes: number }[] = [];
      const server = http.createServer();
      const accept = (req: http.IncomingMessage, res: http.ServerResponse) => {
        const entry = { expect: req.headers.expect, bodyBytes: 0 };
        seen.push(entry);
        req.on('data', (c: Buffer) => (entry.bodyBytes += c.length));
        req.on('end', () => {
          res.writeHead(200, { ETag: '"ok"' });
          res.end();
        });
      };
      server.on('request', accept);
      server.on('checkContinue', (req, res) => {
        const answer = answers.shift();
        if (!answer) {
          res.writeContinue();
          accept(req, res);
          return;
        }
        seen.push({ expect: req.headers.expect, bodyBytes: 0 });
        req.on('data', (c: Buffer) => (seen[seen.length - 1].bodyBytes += c.length));
        res.writeHead(answer[0], { 'Content-Type': 'application/xml', 'x-amz-request-id': 'REQ2' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${answer[1]}</Code><Message>no</Message></Error>`);
      });
      const fake = await storageServedBy(server, bucket, 3);
      const content = randomBytes(8 * 1024 * 1024);
      const { handle, done } = await openTempFile(content);
      try {
        await assert.rejects(fake.put('a/denied', { handle, size: content.length }, { sha256: sha256(content) }), /a\/denied: access denied \(AccessDenied \(HTTP 403\), request id REQ2\)/);
        assert.deepEqual(seen, [{ expect: '100-continue', bodyBytes: 0 }], 'one attempt, no body');
        seen.length = 0;
        assert.deepEqual(await fake.put('a/slow', { handle, size: content.length }, { sha256: sha256(content) }), { etag: 'ok' });
        assert.deepEqual(seen, [
          { expect: '100-continue', bodyBytes: 0 },
          { expect: '100-continue', bodyBytes: content.length },
        ]);
        // Smaller bodies (the small files) go at once, without the extra round trip.
        seen.length = 0;
        await fake.put('a/small', content.subarray(0, 100 * 1024));
        assert.deepEqual(seen, [{ expect: undefined, bodyBytes: 100 * 1024 }]);
      } finally {
        await done();
        await fake.close();
      }
    });

    describe('interoperability with awscli', () => {
      const aws = awsCli;

      it('what the storage writes, aws s3 reads; what aws s3 writes, the storage reads', async () => {
        const dir = mkdtempSync(path.join(tmpdir(), 'det-awscli-'));
        try {
          const { stream, digest } = bigStream(9 * 1024 * 1024);
          await storage.put('c1/model.bin', stream);
          await storage.put('c1/meta.json', Buffer.from('{"a":1}'));
          await aws('s3', 'cp', '--recursive', '--only-show-errors', `s3://${bucket}/${PREFIX}/c1/`, path.join(dir, 'down'));
          assert.deepEqual(readdirSync(path.join(dir, 'down')).sort(), ['meta.json', 'model.bin']);
          assert.equal(sha256(readFileSync(path.join(dir, 'down', 'model.bin'))), digest);
          const ls = (await aws('s3', 'ls', `s3://${bucket}/${PREFIX}/c1/`)).stdout.toString();
          assert.match(ls, /\s9437184 model\.bin/);

          const up = randomBytes(12 * 1024 * 1024 + 7); // over awscli's 8 MiB multipart threshold
          writeFileSync(path.join(dir, 'up.bin'), up);
          await aws('s3', 'cp', '--only-show-errors', path.join(dir, 'up.bin'), `s3://${bucket}/${PREFIX}/c2/up.bin`);
          assert.equal(sha256(await readAll(await storage.get('c2/up.bin'))), sha256(up));
          assert.deepEqual((await listAll(storage, 'c2/')).map((x) => [x.key, x.size]), [['c2/up.bin', up.length]]);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      });
    });
  });

  describe('openCheckpointStorage config', () => {
    it('reports every problem at once, each naming its key', () => {
      assert.throws(
        () => openCheckpointStorage({ type: 's3', bucket: 'Bad_Bucket', prefix: '../x', endpoint_url: 'not a url', force_path_style: 'yes', extra: 1 }),
        (err: unknown) => {
          assert.ok(err instanceof DetError, String(err));
          for (const key of ['checkpoint_storage.bucket', 'checkpoint_storage.prefix', 'checkpoint_storage.endpoint_url', 'checkpoint_storage.force_path_style', 'checkpoint_storage.extra']) {
            assert.ok(err.message.includes(key), `${key} missing from: ${err.message}`);
          }
          assert.match(err.message, /\(5 problems\)/);
          return true;
        },
      );
      assert.throws(() => openCheckpointStorage({ type: 'shared_fs', host_path: 'relative/dir' }), /checkpoint_storage\.host_path: must be an absolute path/);
      assert.throws(() => openCheckpointStorage({ type: 'gcs' }), /checkpoint_storage\.type/);
    });

    it('opens each backend from its config', () => {
      assert.equal(openCheckpointStorage({ type: 'shared_fs', host_path: '/var/lib/det/ckpt' }).kind, 'shared_fs');
      const s = openCheckpointStorage({ type: 's3', bucket: 'my-ckpts', prefix: 'team-a' });
      assert.equal(s.kind, 's3');
      assert.equal(s.location('x/y'), 's3://my-ckpts/team-a/x/y');
      (s as S3Storage).destroy();
    });
  });
});
