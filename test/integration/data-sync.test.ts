// DataCache against the real s3rver of the test environment: fixtures are uploaded with a plain
// S3 client (and awscli), synced into a cache in a temp dir, and the views are read back from disk.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { DataCache, type DataCacheOptions, type PreparedInput } from '../../agent/data';
import { DetError } from '../../common/errors';
import { createLogger } from '../../common/log';
import type { DataInput } from '../../common/types';
import { awsCli } from '../support/awscli';
import { testEnv } from '../support/env';
import { createTestBucket, deleteTestBucket, S3_TEST_REGION, S3RVER_CREDENTIALS, testS3Client } from '../support/s3';


/** Every regular file under `dir` as relative path -> content. */
async function readTree(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) await walk(path.join(d, e.name), r);
      else if (e.isFile()) out.set(r, await fs.readFile(path.join(d, e.name)));
      else throw new Error(`unexpected entry ${r} in a view`);
    }
  };
  await walk(dir, '');
  return out;
}

/** Every path (files and dirs) under `dir`, relative, sorted. */
async function allPaths(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

function assertSameTree(actual: Map<string, Buffer>, expected: Record<string, Buffer>): void {
  assert.deepEqual([...actual.keys()].sort(), Object.keys(expected).sort());
  for (const [rel, body] of Object.entries(expected)) assert.ok(actual.get(rel)!.equals(body), `content of ${rel}`);
}

async function assertDetError(p: Promise<unknown>, ...patterns: (string | RegExp)[]): Promise<DetError> {
  let caught: unknown;
  await assert.rejects(p, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof DetError, `expected a DetError, got ${String(caught)}`);
  for (const p of patterns) {
    if (typeof p === 'string') assert.ok(caught.message.includes(p), `message should include ${JSON.stringify(p)}: ${caught.message}`);
    else assert.match(caught.message, p);
  }
  return caught;
}

describe('data inputs: DataCache against s3rver', function () {
  this.timeout(120_000);
  let raw: S3Client;
  let bucket: string;
  let dir: string;
  let logLines: string[];
  let caches: DataCache[];
  let viewRoots: string[];

  const put = (key: string, body: Buffer | string, b = bucket) => raw.send(new PutObjectCommand({ Bucket: b, Key: key, Body: body }));
  const del = (key: string) => raw.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  const input = (prefix: string, target = '/data/in', b = bucket): DataInput => ({
    source: `s3://${b}/${prefix}`,
    target,
    endpointUrl: testEnv().s3Endpoint,
    forcePathStyle: true,
    region: S3_TEST_REGION,
  });
  const newCache = (o: Partial<DataCacheOptions> = {}): DataCache => {
    const c = new DataCache({
      root: path.join(dir, 'cache'),
      log: createLogger('data-test', { level: 'debug', sink: (l) => logLines.push(l) }),
      s3: { credentials: S3RVER_CREDENTIALS, maxAttempts: 2 },
      ...o,
    });
    caches.push(c);
    return c;
  };
  const viewRoot = (name: string): string => {
    const p = path.join(dir, 'views', name);
    viewRoots.push(p);
    return p;
  };
  const cacheObjects = async (): Promise<string[]> => (await allPaths(path.join(dir, 'cache', 'objects'))).filter((p) => p.includes('/'));

  before(async () => {
    raw = testS3Client();
    bucket = await createTestBucket(raw, 'data-sync');
  });
  after(async () => {
    await deleteTestBucket(raw, bucket);
    raw.destroy();
  });
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(tmpdir(), 'det-data-'));
    logLines = [];
    caches = [];
    viewRoots = [];
  });
  afterEach(async () => {
    for (const r of viewRoots) await caches[0]?.release(r);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('downloads everything once, byte-identical, then reuses the cache for another view', async () => {
    const p = `first-${randomBytes(3).toString('hex')}`;
    const files: Record<string, Buffer> = {
      'train.csv': Buffer.from('x,y\n1,2\n'),
      'images/0001.png': randomBytes(3 * 1024 * 1024 + 17),
      'images/deep/er/0002.png': randomBytes(4096),
      'empty.txt': Buffer.alloc(0),
      'with space & symbols=+.txt': Buffer.from('odd name'),
    };
    for (const [k, body] of Object.entries(files)) await put(`${p}/${k}`, body);
    // Console-made folder markers (zero bytes, key ending in '/') are no files.
    await put(`${p}/`, '');
    await put(`${p}/images/`, '');
    await put(`${p}/markers-only/`, '');
    // Neighbours that only share a string prefix stay out.
    await put(`${p}-other/x`, 'not mine');
    await put(`${p}x`, 'not mine');

    const cache = newCache();
    const lines: string[] = [];
    const r1 = viewRoot('trial-1');
    const [a] = await cache.prepare([input(`${p}/`, '/data/mnist')], r1, (l) => lines.push(l));
    const bytes = Object.values(files).reduce((s, b) => s + b.length, 0);
    assert.deepEqual(a, {
      target: '/data/mnist',
      hostDir: path.join(r1, '0'),
      objects: 5,
      bytes,
      downloadedObjects: 5,
      downloadedBytes: bytes,
      reusedObjects: 0,
    } satisfies PreparedInput);
    assertSameTree(await readTree(a.hostDir), files);
    assert.equal((await fs.stat(path.join(a.hostDir, 'images/0001.png'))).mode & 0o777, 0o444);
    assert.equal((await fs.stat(path.join(a.hostDir, 'images'))).mode & 0o777, 0o555);
    assert.equal(lines[0], `syncing s3://${bucket}/${p}/ -> /data/mnist: 5 objects, 3.0 MiB (0 cached)`);
    assert.match(lines[lines.length - 1], new RegExp(`^synced s3://${bucket}/${p}/ -> /data/mnist: 5 objects, 3\\.0 MiB in [0-9.]+ s \\(5 downloaded, 3\\.0 MiB at [0-9.]+ MB/s; 0 reused\\)$`));
    assert.equal((await cacheObjects()).length, 5);
    assert.deepEqual(await fs.readdir(path.join(dir, 'cache', 'tmp')), [], 'no temp files left');

    // Another trial on the same agent: nothing downloaded, same files, same inodes.
    const lines2: string[] = [];
    const r2 = viewRoot('trial-2');
    const [b] = await newCache().prepare([input(p, '/data/mnist')], r2, (l) => lines2.push(l));
    assert.equal(b.downloadedObjects, 0);
    assert.equal(b.downloadedBytes, 0);
    assert.equal(b.reusedObjects, 5);
    assertSameTree(await readTree(b.hostDir), files);
    assert.equal(lines2[0], `syncing s3://${bucket}/${p}/ -> /data/mnist: 5 objects, 3.0 MiB (5 cached)`);
    const ino = async (root: string) => (await fs.stat(path.join(root, 'images/deep/er/0002.png'))).ino;
    assert.equal(await ino(a.hostDir), await ino(b.hostDir), 'both views link the one cache object');
    assert.equal((await fs.stat(path.join(b.hostDir, 'train.csv'))).nlink, 3, 'cache + two views');
  });

  it('downloads only a changed object again, drops deleted ones, and leaves older views as they were', async () => {
    const p = `change-${randomBytes(3).toString('hex')}`;
    for (const k of ['a.txt', 'b.txt', 'sub/c.txt']) await put(`${p}/${k}`, `v1 of ${k}`);
    const cache = newCache();
    const r1 = viewRoot('t1');
    const [first] = await cache.prepare([input(p)], r1, () => undefined);
    assert.equal(first.downloadedObjects, 3);

    await put(`${p}/b.txt`, 'v2 of b.txt, longer');
    await del(`${p}/sub/c.txt`);
    const r2 = viewRoot('t2');
    const [second] = await cache.prepare([input(p)], r2, () => undefined);
    assert.deepEqual([second.objects, second.downloadedObjects, second.reusedObjects], [2, 1, 1]);
    assert.equal(second.downloadedBytes, Buffer.byteLength('v2 of b.txt, longer'));
    assertSameTree(await readTree(second.hostDir), { 'a.txt': Buffer.from('v1 of a.txt'), 'b.txt': Buffer.from('v2 of b.txt, longer') });
    // A running trial keeps the data it started with.
    assertSameTree(await readTree(first.hostDir), {
      'a.txt': Buffer.from('v1 of a.txt'),
      'b.txt': Buffer.from('v1 of b.txt'),
      'sub/c.txt': Buffer.from('v1 of sub/c.txt'),
    });
  });

  it('syncs several inputs into numbered views, and concurrent prepares download each object once', async () => {
    const p = `multi-${randomBytes(3).toString('hex')}`;
    const objects = Array.from({ length: 40 }, (_, i) => `${p}/shard-${String(i).padStart(3, '0')}.bin`);
    await Promise.all(objects.map((k) => put(k, randomBytes(2048))));
    await put(`${p}-labels/labels.json`, '{"0":"cat"}');
    const cache = newCache({ concurrency: 4 });
    const roots = [viewRoot('c1'), viewRoot('c2'), viewRoot('c3')];
    const results = await Promise.all(roots.map((r) => cache.prepare([input(p, '/data/shards'), input(`${p}-labels/`, '/data/labels')], r, () => undefined)));
    for (const [i, [shards, labels]] of results.entries()) {
      assert.equal(shards.hostDir, path.join(roots[i], '0'));
      assert.equal(labels.hostDir, path.join(roots[i], '1'));
      assert.equal(shards.objects, 40);
      assert.deepEqual(await fs.readdir(labels.hostDir), ['labels.json']);
    }
    const downloaded = results.reduce((s, [shards, labels]) => s + shards.downloadedObjects + labels.downloadedObjects, 0);
    assert.equal(downloaded, 41, 'every object downloaded exactly once across the three prepares');
    assert.equal((await cacheObjects()).length, 41);
  });

  it('an empty prefix is an empty view, not an error; a whole bucket works too', async () => {
    const lines: string[] = [];
    const [empty] = await newCache().prepare([input('nothing-here/', '/data/none')], viewRoot('e'), (l) => lines.push(l));
    assert.equal(empty.objects, 0);
    assert.deepEqual(await fs.readdir(empty.hostDir), []);
    assert.ok(lines.includes(`no objects under s3://${bucket}/nothing-here/: /data/none will be an empty directory`), lines.join('\n'));

    const whole = await createTestBucket(raw, 'data-whole');
    try {
      await put('top.txt', 'top', whole);
      await put('dir/', '', whole);
      await put('dir/inner.txt', 'inner', whole);
      const [w] = await newCache().prepare([input('', '/data/all', whole)], viewRoot('w'), () => undefined);
      assertSameTree(await readTree(w.hostDir), { 'top.txt': Buffer.from('top'), 'dir/inner.txt': Buffer.from('inner') });
    } finally {
      await deleteTestBucket(raw, whole);
    }
  });

  it('refuses a planted traversal key clearly and writes nothing outside the view root', async () => {
    const p = `planted-${randomBytes(3).toString('hex')}`;
    await put(`${p}/fine.txt`, 'fine');
    // s3rver resolves "a/../b" on its filesystem, so the traversal is planted in its Windows form;
    // list() refuses both with the same key validation.
    const planted = `${p}/ok/..\\..\\..\\escape`;
    await put(planted, 'planted');
    const r = viewRoot('t');
    await assertDetError(
      newCache().prepare([input(p, '/data/x')], r, () => undefined),
      `cannot sync data input s3://${bucket}/${p}/ -> /data/x`,
      `refusing object s3://${bucket}/${planted}`,
    );
    assert.deepEqual(await fs.readdir(r), [], 'no view was left behind');
    assert.deepEqual(await allPaths(dir), ['cache', 'cache/objects', 'cache/tmp', 'views', 'views/t'], 'nothing was downloaded or written anywhere');
  });

  it('refuses a non-empty object whose key ends in "/" and a marker with a traversal', async () => {
    for (const [name, key, body] of [
      ['nonempty', 'weird/', 'not a marker'],
      ['marker', 'ok/..\\..\\/', ''],
    ] as const) {
      const p = `slash-${name}-${randomBytes(3).toString('hex')}`;
      await put(`${p}/fine.txt`, 'fine');
      await put(`${p}/${key}`, body);
      const r = viewRoot(name);
      await assertDetError(newCache().prepare([input(p)], r, () => undefined), `refusing object s3://${bucket}/${p}/${key}`);
      assert.deepEqual(await fs.readdir(r), []);
    }
    assert.deepEqual(await cacheObjects(), []);
  });

  it('says clearly when the bucket does not exist', async () => {
    const missing = `${bucket}-missing`;
    const err = await assertDetError(
      newCache().prepare([input('mnist/', '/data/mnist', missing)], viewRoot('m'), () => undefined),
      `cannot sync data input s3://${missing}/mnist/ -> /data/mnist`,
      `bucket ${missing} does not exist`,
    );
    assert.ok(!err.message.includes(S3RVER_CREDENTIALS.secretAccessKey + '/'), 'no credentials');
  });

  it('refuses a malformed source before touching anything', async () => {
    const r = viewRoot('bad');
    await assertDetError(
      newCache().prepare([input('ok/'), { ...input('ok/'), source: 's3://Bad_Bucket/x/' }], r, () => undefined),
      'invalid S3 URL "s3://Bad_Bucket/x/"',
    );
    await assert.rejects(fs.stat(path.join(dir, 'cache')), /ENOENT/);
  });

  it('evicts least recently used objects that no view uses, keeping the ones in use', async () => {
    const p = `evict-${randomBytes(3).toString('hex')}`;
    for (const k of ['a/1', 'a/2', 'b/1', 'b/2']) await put(`${p}/${k}`, randomBytes(1000));
    const cache = newCache({ maxBytes: 1 });
    const ra = viewRoot('a');
    const [a] = await cache.prepare([input(`${p}/a/`)], ra, () => undefined);
    // Over the bound, but trial a's view uses both objects.
    assert.equal((await cacheObjects()).length, 2);
    assert.equal((await readTree(a.hostDir)).size, 2);
    assert.ok(logLines.some((l) => l.includes('data cache is above its size bound')), logLines.join('\n'));

    const rb = viewRoot('b');
    const [b] = await cache.prepare([input(`${p}/b/`)], rb, () => undefined);
    assert.equal((await cacheObjects()).length, 4, "a's objects are still linked into its view");
    await cache.release(ra);
    const rb2 = viewRoot('b2');
    const [b2] = await cache.prepare([input(`${p}/b/`)], rb2, () => undefined);
    assert.equal(b2.downloadedObjects, 0);
    assert.equal((await cacheObjects()).length, 2, 'only the in-use objects stay');
    assert.equal((await readTree(b.hostDir)).size, 2);
    const [again] = await cache.prepare([input(`${p}/a/`)], viewRoot('a2'), () => undefined);
    assert.equal(again.downloadedObjects, 2, "a's objects were evicted");
  });

  it('release() removes the views and keeps the cache objects', async () => {
    const p = `release-${randomBytes(3).toString('hex')}`;
    await put(`${p}/deep/x/y.bin`, 'y');
    const cache = newCache();
    const r = viewRoot('t');
    const [v] = await cache.prepare([input(p), input(p, '/data/again')], r, () => undefined);
    assert.equal((await fs.stat(v.hostDir)).mode & 0o777, 0o555);
    await cache.release(r);
    await assert.rejects(fs.stat(r), /ENOENT/);
    await cache.release(r); // harmless when missing
    assert.equal((await cacheObjects()).length, 1);
    const [again] = await cache.prepare([input(p)], viewRoot('t2'), () => undefined);
    assert.equal(again.downloadedObjects, 0);
  });

  it('a cancelled sync rejects with a DetError and leaves no view and no temp file', async () => {
    const p = `cancel-${randomBytes(3).toString('hex')}`;
    for (let i = 0; i < 8; i++) await put(`${p}/f${i}`, randomBytes(64 * 1024));
    const ac = new AbortController();
    const r = viewRoot('t');
    await assertDetError(
      newCache().prepare([input(p)], r, (line) => {
        if (line.startsWith('syncing ')) ac.abort(new Error('trial killed'));
      }, ac.signal),
      /was cancelled: trial killed/,
    );
    assert.deepEqual(await fs.readdir(r), []);
    assert.deepEqual(await fs.readdir(path.join(dir, 'cache', 'tmp')), []);
  });

  describe('a connection that breaks mid-body', () => {
    let proxy: http.Server;
    let port: number;
    /** GETs per key path seen by the proxy. */
    let gets: Map<string, number>;
    /** Cut the body of these keys' first N GETs in half. */
    let cut: Map<string, number>;

    before(async () => {
      const upstream = new URL(testEnv().s3Endpoint);
      proxy = http.createServer((req, res) => {
        const key = decodeURIComponent((req.url ?? '').split('?')[0]);
        const n = (gets.get(key) ?? 0) + 1;
        if (req.method === 'GET') gets.set(key, n);
        const up = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          if (req.method === 'GET' && n <= (cut.get(key) ?? 0)) {
            const total = Number(ur.headers['content-length']);
            let sent = 0;
            ur.on('data', (chunk: Buffer) => {
              const room = Math.floor(total / 2) - sent;
              if (room > 0) res.write(chunk.subarray(0, room));
              sent += Math.max(0, Math.min(room, chunk.length));
              if (sent >= Math.floor(total / 2)) {
                ur.destroy();
                res.socket?.destroy();
              }
            });
          } else {
            ur.pipe(res);
          }
        });
        up.on('error', () => res.destroy());
        req.pipe(up);
      });
      await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
      port = (proxy.address() as AddressInfo).port;
    });
    after(async () => {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    });
    beforeEach(() => {
      gets = new Map();
      cut = new Map();
    });
    const viaProxy = (prefix: string): DataInput => ({ ...input(prefix), endpointUrl: `http://127.0.0.1:${port}` });

    it('retries the whole object and ends up with the right bytes', async () => {
      const p = `flaky-${randomBytes(3).toString('hex')}`;
      const body = randomBytes(512 * 1024);
      await put(`${p}/model.bin`, body);
      await put(`${p}/ok.txt`, 'ok');
      const key = `/${bucket}/${p}/model.bin`;
      cut.set(key, 2);
      const [v] = await newCache().prepare([viaProxy(p)], viewRoot('t'), () => undefined);
      assert.equal(gets.get(key), 3, 'two broken attempts, then a whole one');
      assert.equal(v.downloadedObjects, 2);
      assert.ok((await fs.readFile(path.join(v.hostDir, 'model.bin'))).equals(body));
      assert.equal(logLines.filter((l) => l.includes('data object download failed; retrying')).length, 2, logLines.join('\n'));
      assert.deepEqual(await fs.readdir(path.join(dir, 'cache', 'tmp')), []);
    });

    it('gives up after its attempts with an error naming the object', async () => {
      const p = `broken-${randomBytes(3).toString('hex')}`;
      await put(`${p}/model.bin`, randomBytes(256 * 1024));
      const key = `/${bucket}/${p}/model.bin`;
      cut.set(key, 100);
      const r = viewRoot('t');
      await assertDetError(
        newCache().prepare([viaProxy(p)], r, () => undefined),
        `cannot download s3://${bucket}/${p}/model.bin (262144 bytes) after 4 attempts: the download broke off`,
      );
      assert.equal(gets.get(key), 4);
      assert.deepEqual(await fs.readdir(r), []);
      assert.deepEqual(await cacheObjects(), []);
      assert.deepEqual(await fs.readdir(path.join(dir, 'cache', 'tmp')), []);
    });
  });

  describe('interoperability with awscli', () => {
    const aws = awsCli;

    it('what `aws s3 cp --recursive` uploads is what shows up in the view', async () => {
      const p = `awscli-${randomBytes(3).toString('hex')}`;
      const src = path.join(dir, 'upload');
      const files: Record<string, Buffer> = {
        'big.bin': randomBytes(9 * 1024 * 1024 + 5), // above awscli's 8 MiB multipart threshold
        'meta/labels.txt': Buffer.from('cat\ndog\n'),
        'meta/deeper/readme.md': Buffer.from('# data\n'),
      };
      for (const [rel, body] of Object.entries(files)) {
        await fs.mkdir(path.dirname(path.join(src, rel)), { recursive: true });
        await fs.writeFile(path.join(src, rel), body);
      }
      await aws('s3', 'cp', '--recursive', '--only-show-errors', src, `s3://${bucket}/${p}/`);
      const [v] = await newCache().prepare([input(`${p}/`, '/data/aws')], viewRoot('t'), () => undefined);
      assert.equal(v.objects, 3);
      assertSameTree(await readTree(v.hostDir), files);
    });
  });
});
