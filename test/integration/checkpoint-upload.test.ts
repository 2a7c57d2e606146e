// Checkpoint upload, download and delete against real storage: one suite run on shared_fs (a
// temp dir) and on S3 (the test environment's s3rver, a fresh bucket with a prefix). Objects and
// manifests that an attacker could plant are written with a standard S3 client (or plain fs),
// never through our storage class. awscli interoperability follows the shared suite.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { HashCache } from '../../agent/checkpoints/hash-cache';
import { CheckpointUploader, type UploaderOptions } from '../../agent/checkpoints/uploader';
import { deleteCheckpointObjects } from '../../common/checkpoints/delete';
import { downloadCheckpoint, readManifest, type DownloadProgress } from '../../common/checkpoints/download';
import { checkpointPrefix, manifestKey } from '../../common/checkpoints/layout';
import type { Manifest } from '../../common/checkpoints/manifest';
import { DetError } from '../../common/errors';
import {
  S3Storage,
  SharedFsStorage,
  type CheckpointStorage,
  type CheckpointStorageKind,
  type ListedObject,
  type ObjectInfo,
  type PutOptions,
  type PutResult,
} from '../../common/storage';
import { PART_SIZE } from '../../common/storage/s3';
import { awsCli } from '../support/awscli';
import { checkpointInfo, collectingLogger, fsKeys, rawS3Keys, randomFiles, treeDigests, writeCheckpoint } from '../support/checkpoint-fixtures';
import { testEnv } from '../support/env';
import { createTestBucket, deleteTestBucket, S3_TEST_REGION, S3RVER_CREDENTIALS, testS3Client } from '../support/s3';
import { recordWire } from '../support/s3-wire';

const PREFIX = 'exp-7/checkpoints';
const FAST_RETRY = { baseMs: 1, maxMs: 5, jitter: 0 };
const MiB = 1024 * 1024;

/** A storage under test, plus access that bypasses it. */
interface Opened {
  storage: CheckpointStorage;
  /** Writes an object behind the storage's back (standard S3 client / plain fs). */
  plant(key: string, body: Buffer): Promise<void>;
  /** Every key under `prefix` (relative to the storage root), listed behind the storage's back. */
  rawKeys(prefix?: string): Promise<string[]>;
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
    const dir = await fs.mkdtemp(path.join(tmpdir(), 'det-ckpt-fs-'));
    const root = path.join(dir, 'storage');
    return {
      storage: new SharedFsStorage({ hostPath: root }),
      async plant(key, body) {
        const file = path.join(root, ...key.split('/'));
        await fs.mkdir(path.dirname(file), { recursive: true });
        await fs.writeFile(file, body);
      },
      rawKeys: (prefix = '') => fsKeys(root, prefix),
      cleanup: () => fs.rm(dir, { recursive: true, force: true }),
    };
  },
};

const s3Backend: Backend = {
  kind: 's3',
  async open() {
    const bucket = await createTestBucket(rawS3(), 'ckpt-upload');
    const storage = new S3Storage({ bucket, prefix: PREFIX, endpointUrl: testEnv().s3Endpoint, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS });
    return {
      storage,
      async plant(key, body) {
        await rawS3().send(new PutObjectCommand({ Bucket: bucket, Key: `${PREFIX}/${key}`, Body: body }));
      },
      rawKeys: async (prefix = '') => (await rawS3Keys(rawS3(), bucket, `${PREFIX}/${prefix}`)).map((k) => k.slice(PREFIX.length + 1)),
      async cleanup() {
        storage.destroy();
        await deleteTestBucket(rawS3(), bucket);
      },
    };
  },
};

/** Delegates to a real storage and records (and can interfere with) every call. */
class HookedStorage implements CheckpointStorage {
  readonly events: string[] = [];
  beforePut?: (key: string) => Promise<void> | void;
  beforeGet?: (key: string) => Promise<void> | void;
  constructor(readonly inner: CheckpointStorage) {}
  get kind() {
    return this.inner.kind;
  }
  async put(key: string, source: Readable | Buffer, opts?: PutOptions, signal?: AbortSignal): Promise<PutResult> {
    this.events.push(`put-start ${key}`);
    try {
      await this.beforePut?.(key);
      const out = await this.inner.put(key, source, opts, signal);
      this.events.push(`put-end ${key}`);
      return out;
    } catch (err) {
      if (!Buffer.isBuffer(source)) source.destroy();
      this.events.push(`put-fail ${key}`);
      throw err;
    }
  }
  async get(key: string, signal?: AbortSignal): Promise<Readable> {
    this.events.push(`get ${key}`);
    await this.beforeGet?.(key);
    return this.inner.get(key, signal);
  }
  head(key: string, signal?: AbortSignal): Promise<ObjectInfo | undefined> {
    return this.inner.head(key, signal);
  }
  list(prefix: string, signal?: AbortSignal): AsyncIterable<ListedObject> {
    this.events.push(`list ${prefix}`);
    return this.inner.list(prefix, signal);
  }
  async delete(keys: readonly string[], signal?: AbortSignal): Promise<void> {
    this.events.push(`delete ${keys.join(',')}`);
    return this.inner.delete(keys, signal);
  }
  location(key: string): string {
    return this.inner.location(key);
  }
}

function sha256(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Bytes this process has passed to read() so far (Linux /proc/self/io rchar; page-cache hits count too). */
async function readCharsOfThisProcess(): Promise<number> {
  const io = await fs.readFile('/proc/self/io', 'utf8');
  const m = /^rchar: (\d+)$/m.exec(io);
  if (!m) throw new Error(`no rchar in /proc/self/io: ${io}`);
  return Number(m[1]);
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

async function rejectsWith(p: Promise<unknown>, code: string, pattern: RegExp): Promise<DetError> {
  let caught: unknown;
  await assert.rejects(p, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof DetError, `expected a DetError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.match(caught.message, pattern);
  return caught;
}

function uploadSuite(backend: Backend): void {
  describe(`checkpoint upload and download: ${backend.kind}`, function () {
    let o: Opened;
    let work: string;
    let ckpts: string;
    const uploader = (extra: Partial<UploaderOptions> = {}) => {
      const logged = collectingLogger('uploader');
      const lines: string[] = [];
      const up = new CheckpointUploader({ storage: o.storage, log: logged.log, backoff: FAST_RETRY, onProgress: (l) => lines.push(l), ...extra });
      return { up, lines, logLines: logged.lines };
    };

    beforeEach(async () => {
      o = await backend.open();
      work = await fs.mkdtemp(path.join(tmpdir(), 'det-ckpt-work-'));
      ckpts = path.join(work, 'checkpoints');
      await fs.mkdir(ckpts);
    });
    afterEach(async () => {
      await o?.cleanup();
      await fs.rm(work, { recursive: true, force: true });
    });

    it('round-trips a checkpoint byte for byte, a 20 MiB file (multipart on S3) included', async () => {
      const files = {
        'model/weights.bin': randomBytes(20 * MiB + 4321),
        'model/config.json': '{"layers": 12}\n',
        'optimizer.pt': randomBytes(3 * MiB),
        'empty.txt': '',
        'deep/a/b/c/d.txt': 'deep',
      };
      const dir = await writeCheckpoint(ckpts, 'step-100', files);
      await fs.writeFile(path.join(dir, '.det-metadata.json'), JSON.stringify({ step: 100, loss: 0.5 }));
      const info = checkpointInfo('step-100');
      const { up, lines } = uploader();
      const res = await up.upload(dir, info);

      assert.equal(res.manifestKey, manifestKey(info.uuid));
      assert.equal(res.location, o.storage.location(manifestKey(info.uuid)));
      assert.equal(res.uploadedFiles, 5);
      assert.equal(res.skippedFiles, 0);
      assert.equal(res.uploadedBytes, 20 * MiB + 4321 + 3 * MiB + 15 + 4);
      assert.deepEqual(res.manifest.metadata, { step: 100, loss: 0.5 });
      assert.deepEqual(res.manifest.files.map((f) => f.key), res.manifest.files.map((f) => `${info.uuid}/${f.path}`));
      // Exactly the files and the manifest are stored, nothing else (no marker, no metadata file).
      assert.deepEqual(await o.rawKeys(checkpointPrefix(info.uuid)), [...Object.keys(files), '.det-manifest.json'].map((p) => `${info.uuid}/${p}`).sort());
      assert.deepEqual(await readManifest(o.storage, info.uuid), res.manifest);
      assert.match(lines[0], new RegExp(`checkpoint step-100 \\(${info.uuid}\\): uploading 5 file\\(s\\), 23\\.0 MiB`));
      assert.match(lines[lines.length - 1], /stored at .* in [\d.]+ s/);

      const target = path.join(work, 'download', 'step-100');
      const progress: DownloadProgress[] = [];
      const got = await downloadCheckpoint(o.storage, info.uuid, target, { onProgress: (p) => progress.push(p) });
      assert.deepEqual(got, res.manifest);
      assert.deepEqual(await treeDigests(target), await treeDigests(dir, { checkpoint: true }));
      assert.deepEqual(progress[0], { doneBytes: 0, totalBytes: res.manifest.totalSize, doneFiles: 0, totalFiles: 5 });
      assert.deepEqual(progress[progress.length - 1], { doneBytes: res.manifest.totalSize, totalBytes: res.manifest.totalSize, doneFiles: 5, totalFiles: 5 });
    });

    it('round-trips many small files, and stores same-content files once', async () => {
      const files: Record<string, Buffer | string> = randomFiles(400, 1, 8 * 1024);
      files['copy/a.bin'] = files['small/00/f0001.bin'];
      files['copy/b.bin'] = files['small/00/f0001.bin'];
      const dir = await writeCheckpoint(ckpts, 'many', files);
      const info = checkpointInfo('many');
      const { up } = uploader();
      const res = await up.upload(dir, info);
      assert.equal(res.manifest.files.length, 402);
      assert.equal(res.uploadedFiles, 400);
      assert.equal(res.skippedFiles, 2);
      // The first path in manifest order holds the content; the others point at it.
      for (const p of ['copy/a.bin', 'copy/b.bin', 'small/00/f0001.bin']) assert.equal(res.manifest.files.find((f) => f.path === p)?.key, `${info.uuid}/copy/a.bin`);
      assert.equal((await o.rawKeys(checkpointPrefix(info.uuid))).length, 401);

      const target = path.join(work, 'many-down');
      await downloadCheckpoint(o.storage, info.uuid, target, { concurrency: 4 });
      assert.deepEqual(await treeDigests(target), await treeDigests(dir, { checkpoint: true }));
    });

    it('writes the manifest last: it does not exist while any file is uploading', async () => {
      const dir = await writeCheckpoint(ckpts, 'ordered', { ...randomFiles(30, 100, 2000), 'big.bin': randomBytes(9 * MiB) });
      const info = checkpointInfo('ordered');
      const hooked = new HookedStorage(o.storage);
      const manifestSeen: string[] = [];
      hooked.beforePut = async (key) => {
        if (key !== manifestKey(info.uuid) && (await o.storage.head(manifestKey(info.uuid)))) manifestSeen.push(key);
      };
      const { up } = uploader({ storage: hooked, fileConcurrency: 8 });
      await up.upload(dir, info);
      assert.deepEqual(manifestSeen, [], 'a manifest existed while these files were being uploaded');
      const puts = hooked.events.filter((e) => e.startsWith('put-'));
      assert.equal(puts.length, 2 * 32);
      assert.deepEqual(puts.slice(-2), [`put-start ${manifestKey(info.uuid)}`, `put-end ${manifestKey(info.uuid)}`]);
      assert.equal(puts.filter((e) => e.startsWith('put-end')).length, 32);
      // Files overlapped (fileConcurrency 8): the second file started before the first ended.
      assert.ok(puts[1].startsWith('put-start'), puts.slice(0, 4).join(' | '));
    });

    it('a failure mid-way leaves no manifest and removes what the attempt uploaded', async () => {
      const files = randomFiles(12, 500, 5000);
      const dir = await writeCheckpoint(ckpts, 'fails', files);
      const info = checkpointInfo('fails');
      const hooked = new HookedStorage(o.storage);
      const failing = `${info.uuid}/${Object.keys(files).sort()[8]}`;
      hooked.beforePut = (key) => {
        if (key === failing) throw new DetError('DET_ERR_INTERNAL', `cannot upload ${key}: InternalError (HTTP 500): injected`);
      };
      const { up, lines, logLines } = uploader({ storage: hooked, fileConcurrency: 1, maxAttempts: 3 });
      const err = await rejectsWith(up.upload(dir, info), 'DET_ERR_INTERNAL', /cannot upload checkpoint fails \(.*\) to .*: cannot upload .*: InternalError \(HTTP 500\): injected/);
      assert.ok(err.message.includes(info.uuid));
      // Eight files were stored before the failure (3 attempts), then removed again.
      assert.equal(hooked.events.filter((e) => e.startsWith('put-end')).length, 8);
      assert.equal(hooked.events.filter((e) => e === `put-fail ${failing}`).length, 3);
      assert.ok(!hooked.events.includes(`put-start ${manifestKey(info.uuid)}`), 'the manifest was never written');
      assert.deepEqual(await o.rawKeys(checkpointPrefix(info.uuid)), []);
      assert.equal(logLines.filter((l) => l.includes('retrying')).length, 2);
      assert.match(lines[lines.length - 1], /cannot upload checkpoint fails/);
      await rejectsWith(readManifest(o.storage, info.uuid), 'DET_ERR_CHECKPOINT_NOT_FOUND', /has no manifest .* does not exist or was not completed/);
    });

    it('a file swapped for a symlink out of the checkpoint after hashing is not uploaded', async () => {
      const secret = path.join(work, 'host-secret');
      await fs.writeFile(secret, 'host data the container must not exfiltrate');
      const dir = await writeCheckpoint(ckpts, 'swap', { 'a.txt': 'first', 'c.txt': 'x'.repeat(43) });
      const info = checkpointInfo('swap');
      const hooked = new HookedStorage(o.storage);
      hooked.beforePut = async (key) => {
        // A malicious trial replaces c.txt by a symlink to a host file while a.txt uploads.
        if (key === `${info.uuid}/a.txt`) {
          await fs.rm(path.join(dir, 'c.txt'));
          await fs.symlink(secret, path.join(dir, 'c.txt'));
        }
      };
      await rejectsWith(
        uploader({ storage: hooked, fileConcurrency: 1 }).up.upload(dir, info),
        'DET_ERR_INVALID_ARGUMENT',
        /checkpoint file "c.txt" changed during the upload \(it now resolves outside the checkpoint .*\): a trial must not modify a checkpoint after writing its .det-complete marker/,
      );
      assert.ok(!hooked.events.includes(`put-start ${info.uuid}/c.txt`), 'the host file was never sent');
      assert.deepEqual(await o.rawKeys(checkpointPrefix(info.uuid)), []);
    });

    it('a large file changed after hashing fails the upload, before or while it streams, and nothing stays stored', async () => {
      const cases = [
        // Rewritten when its first put starts, which then fails (transiently): the retry finds it changed before sending.
        { name: 'large', size: 3 * MiB, fail: true, want: /"b.bin" changed during the upload \(it was modified after it was hashed\)/, puts: 1 },
        { name: 'large-during', size: 3 * MiB, fail: false, want: /"b.bin" changed during the upload \(it was modified while it was uploaded\)/, puts: 1 },
      ];
      for (const tc of cases) {
        const dir = await writeCheckpoint(ckpts, `change-${tc.name}`, { 'a.txt': 'first', 'b.bin': randomBytes(tc.size) });
        const info = checkpointInfo(`change-${tc.name}`);
        const hooked = new HookedStorage(o.storage);
        let changed = false;
        hooked.beforePut = async (key) => {
          if (key !== `${info.uuid}/b.bin` || changed) return;
          changed = true;
          // Same size, other bytes: only the content and the file's times change.
          await fs.writeFile(path.join(dir, 'b.bin'), randomBytes(tc.size));
          if (tc.fail) throw new DetError('DET_ERR_INTERNAL', `cannot upload ${key}: InternalError (HTTP 500): injected`);
        };
        await rejectsWith(uploader({ storage: hooked, fileConcurrency: 1 }).up.upload(dir, info), 'DET_ERR_INVALID_ARGUMENT', tc.want);
        assert.equal(hooked.events.filter((e) => e === `put-start ${info.uuid}/b.bin`).length, tc.puts, tc.name);
        assert.deepEqual(await o.rawKeys(checkpointPrefix(info.uuid)), [], tc.name);
      }
    });

    it('a small file changed after it was read is stored as read: the manifest names exactly the stored bytes', async () => {
      const original = randomBytes(1000);
      const dir = await writeCheckpoint(ckpts, 'change-small', { 'a.txt': 'first', 'b.bin': original });
      const info = checkpointInfo('change-small');
      const hooked = new HookedStorage(o.storage);
      hooked.beforePut = async (key) => {
        // b.bin was read and hashed once; its put starts; the trial rewrites it (same size, other bytes).
        if (key === `${info.uuid}/b.bin`) await fs.writeFile(path.join(dir, 'b.bin'), randomBytes(original.length));
      };
      const res = await uploader({ storage: hooked, fileConcurrency: 1 }).up.upload(dir, info);
      const entry = res.manifest.files.find((f) => f.path === 'b.bin');
      const stored = await readAll(await o.storage.get(`${info.uuid}/b.bin`));
      assert.equal(entry?.sha256, sha256(stored), 'the manifest names other bytes than the stored ones');
      assert.ok(stored.equals(original), 'what was stored is what was read before the change');
      // And a download verifies against the manifest.
      await downloadCheckpoint(o.storage, info.uuid, path.join(work, 'change-small-down'));
    });

    it('reads each small file once: hashing and sending use one read, with and without a hash cache', async () => {
      const total = 120 * 64 * 1024;
      for (const hashCache of [undefined, new HashCache()]) {
        const dir = await writeCheckpoint(ckpts, `once-${hashCache ? 'cache' : 'plain'}`, randomFiles(120, 64 * 1024, 64 * 1024));
        const before = readCharsOfThisProcess();
        const res = await uploader({ hashCache, fileConcurrency: 16 }).up.upload(dir, checkpointInfo('once'));
        const read = (await readCharsOfThisProcess()) - (await before);
        assert.equal(res.uploadedBytes, total);
        // Reading every file twice (hash, then send) would be >= 2x; HTTP responses and the rest add little.
        assert.ok(read >= total && read < 1.5 * total, `read ${read} bytes for ${total} bytes of files (${hashCache ? 'with' : 'without'} a hash cache)`);
      }
    });

    it('same content in one checkpoint is uploaded once, to the first path in manifest order, while files upload in parallel', async () => {
      const contents = [randomBytes(3000), randomBytes(3000), randomBytes(5000), Buffer.alloc(0)];
      const files: Record<string, Buffer> = {};
      for (let i = 0; i < 200; i++) files[`d${String(i % 7)}/f${String(i).padStart(3, '0')}.bin`] = i % 5 === 4 ? randomBytes(3000) : contents[i % 4];
      const dir = await writeCheckpoint(ckpts, 'dupes', files);
      const info = checkpointInfo('dupes');
      const hooked = new HookedStorage(o.storage);
      const res = await uploader({ storage: hooked, fileConcurrency: 16 }).up.upload(dir, info);
      const paths = Object.keys(files).sort();
      const firstOf = new Map<string, string>();
      for (const p of paths) if (!firstOf.has(sha256(files[p]))) firstOf.set(sha256(files[p]), p);
      assert.deepEqual(
        res.manifest.files.map((f) => [f.path, f.key]),
        paths.map((p) => [p, `${info.uuid}/${firstOf.get(sha256(files[p]))}`]),
      );
      const puts = hooked.events.filter((e) => e.startsWith('put-start ')).map((e) => e.slice('put-start '.length));
      assert.deepEqual([...puts].sort(), [...[...firstOf.values()].map((p) => `${info.uuid}/${p}`), manifestKey(info.uuid)].sort(), 'each content was put once');
      assert.deepEqual([res.uploadedFiles, res.skippedFiles], [firstOf.size, 200 - firstOf.size]);
      assert.equal((await o.rawKeys(checkpointPrefix(info.uuid))).length, firstOf.size + 1);
      const target = path.join(work, 'dupes-down');
      await downloadCheckpoint(o.storage, info.uuid, target);
      assert.deepEqual(await treeDigests(target), await treeDigests(dir, { checkpoint: true }));
    });

    it('a second checkpoint with one changed file uploads only that file; its download is complete', async () => {
      const base = { 'model/embeddings.bin': randomBytes(2 * MiB), 'model/head.bin': randomBytes(100_000), 'vocab.txt': 'a\nb\nc\n' };
      const dir1 = await writeCheckpoint(ckpts, 'step-1', base);
      const dir2 = await writeCheckpoint(ckpts, 'step-2', { ...base, 'model/head.bin': randomBytes(100_000) });
      const info1 = checkpointInfo('step-1');
      const info2 = checkpointInfo('step-2');
      const hooked = new HookedStorage(o.storage);
      const { up } = uploader({ storage: hooked });
      await up.upload(dir1, info1);
      hooked.events.length = 0; // watch the second upload's puts only
      const res2 = await up.upload(dir2, info2);
      assert.equal(res2.uploadedFiles, 1);
      assert.equal(res2.uploadedBytes, 100_000);
      assert.equal(res2.skippedFiles, 2);
      assert.deepEqual(hooked.events.filter((e) => e.startsWith('put-start')), [`put-start ${info2.uuid}/model/head.bin`, `put-start ${manifestKey(info2.uuid)}`]);
      assert.deepEqual(
        res2.manifest.files.map((f) => [f.path, f.key]),
        [
          ['model/embeddings.bin', `${info1.uuid}/model/embeddings.bin`],
          ['model/head.bin', `${info2.uuid}/model/head.bin`],
          ['vocab.txt', `${info1.uuid}/vocab.txt`],
        ],
      );
      assert.deepEqual(await o.rawKeys(checkpointPrefix(info2.uuid)), [`${info2.uuid}/.det-manifest.json`, `${info2.uuid}/model/head.bin`]);
      const target = path.join(work, 'down-2');
      await downloadCheckpoint(o.storage, info2.uuid, target);
      assert.deepEqual(await treeDigests(target), await treeDigests(dir2, { checkpoint: true }));
    });

    it('an unchanged directory uploaded again stores only a manifest and hashes nothing again', async () => {
      const dir = await writeCheckpoint(ckpts, 'same', { ...randomFiles(20, 10, 3000), 'w.bin': randomBytes(MiB) });
      const hashCache = new HashCache();
      const { up } = uploader({ hashCache });
      const first = await up.upload(dir, checkpointInfo('same'));
      assert.deepEqual(hashCache.stats, { hits: 0, misses: 21 });
      const againInfo = checkpointInfo('same');
      const again = await up.upload(dir, againInfo);
      assert.deepEqual(hashCache.stats, { hits: 21, misses: 21 });
      assert.equal(again.uploadedFiles, 0);
      assert.equal(again.skippedBytes, first.uploadedBytes);
      assert.deepEqual(await o.rawKeys(checkpointPrefix(againInfo.uuid)), [manifestKey(againInfo.uuid)]);
      const target = path.join(work, 'again');
      await downloadCheckpoint(o.storage, againInfo.uuid, target);
      assert.deepEqual(await treeDigests(target), await treeDigests(dir, { checkpoint: true }));
    });

    it('remember() counts a restored checkpoint as stored (a restarted trial)', async () => {
      const base = { 'a.bin': randomBytes(50_000), 'b.bin': randomBytes(50_000) };
      const info1 = checkpointInfo('before-restart');
      await uploader().up.upload(await writeCheckpoint(ckpts, 'before-restart', base), info1);
      const fresh = uploader().up;
      fresh.remember(await readManifest(o.storage, info1.uuid));
      const dir2 = await writeCheckpoint(ckpts, 'after-restart', { ...base, 'c.bin': 'new' });
      const res = await fresh.upload(dir2, checkpointInfo('after-restart'));
      assert.deepEqual([res.uploadedFiles, res.skippedFiles], [1, 2]);
    });

    it('deletes the manifest first, then everything under the uuid; a second delete deletes nothing', async () => {
      const dir = await writeCheckpoint(ckpts, 'doomed', randomFiles(15, 10, 100));
      const info = checkpointInfo('doomed');
      const keep = checkpointInfo('kept');
      const { up } = uploader();
      await up.upload(dir, info);
      await uploader().up.upload(await writeCheckpoint(ckpts, 'kept', { 'k.txt': 'keep me' }), keep);
      await o.plant(`${info.uuid}/stray-from-a-crashed-upload`, Buffer.from('x'));
      const hooked = new HookedStorage(o.storage);
      assert.equal(await deleteCheckpointObjects(hooked, info.uuid), 15 + 1 + 1);
      const deletes = hooked.events.filter((e) => e.startsWith('delete ') || e.startsWith('list '));
      assert.equal(deletes[0], `delete ${manifestKey(info.uuid)}`, 'the manifest goes first, alone');
      assert.equal(deletes[1], `list ${info.uuid}/`);
      assert.deepEqual(await o.rawKeys(checkpointPrefix(info.uuid)), []);
      assert.equal(await deleteCheckpointObjects(o.storage, info.uuid), 0);
      // The other checkpoint is untouched.
      assert.deepEqual(await o.rawKeys(checkpointPrefix(keep.uuid)), [`${keep.uuid}/.det-manifest.json`, `${keep.uuid}/k.txt`]);
      await rejectsWith(deleteCheckpointObjects(o.storage, '../x'), 'DET_ERR_INVALID_ARGUMENT', /invalid checkpoint uuid/);
    });

    it('refuses to download a checkpoint without a manifest, or into a non-empty directory', async () => {
      const missing = checkpointInfo('never');
      await o.plant(`${missing.uuid}/model.bin`, Buffer.from('orphan file of an unfinished upload'));
      const target = path.join(work, 'nothing');
      await rejectsWith(
        downloadCheckpoint(o.storage, missing.uuid, target),
        'DET_ERR_CHECKPOINT_NOT_FOUND',
        new RegExp(`checkpoint ${missing.uuid} has no manifest at .*${missing.uuid}/\\.det-manifest\\.json: it does not exist or was not completed`),
      );
      await assert.rejects(fs.stat(target), /ENOENT/);

      const info = checkpointInfo('ok');
      await uploader().up.upload(await writeCheckpoint(ckpts, 'ok', { 'f.txt': 'f' }), info);
      const busy = path.join(work, 'busy');
      await fs.mkdir(busy);
      await fs.writeFile(path.join(busy, 'mine.txt'), 'user data');
      await rejectsWith(downloadCheckpoint(o.storage, info.uuid, busy), 'DET_ERR_INVALID_ARGUMENT', /cannot download into .*busy: the directory is not empty/);
      assert.deepEqual(await treeDigests(busy), { 'mine.txt': sha256('user data') });
      // An existing empty directory is fine.
      const empty = path.join(work, 'empty');
      await fs.mkdir(empty);
      await downloadCheckpoint(o.storage, info.uuid, empty);
      assert.deepEqual(await treeDigests(empty), { 'f.txt': sha256('f') });
    });

    it('rejects corrupted content with a clear error and leaves no partial download', async () => {
      const b = randomBytes(300_000);
      const dir = await writeCheckpoint(ckpts, 'corrupt', { 'a.txt': 'aaaa', 'b.bin': b, 'c.txt': 'cccc' });
      const info = checkpointInfo('corrupt');
      await uploader().up.upload(dir, info);
      await o.plant(`${info.uuid}/b.bin`, randomBytes(300_000)); // same size, other content
      const target = path.join(work, 'corrupt-down');
      await rejectsWith(
        downloadCheckpoint(o.storage, info.uuid, target, { concurrency: 1 }),
        'DET_ERR_INVALID_ARGUMENT',
        new RegExp(`cannot download checkpoint ${info.uuid} to .*: checkpoint file "b.bin" has sha256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}: the download is corrupted`),
      );
      await assert.rejects(fs.stat(target), /ENOENT/, 'the target it created is removed again');

      // A truncated object, into an existing empty directory: emptied again, not removed.
      await o.plant(`${info.uuid}/b.bin`, Buffer.from('short'));
      const existing = path.join(work, 'existing');
      await fs.mkdir(existing);
      await rejectsWith(downloadCheckpoint(o.storage, info.uuid, existing, { concurrency: 1 }), 'DET_ERR_INVALID_ARGUMENT', /"b.bin" has 5 bytes, the manifest says 300000/);
      assert.deepEqual(await fs.readdir(existing), []);

      // An object the manifest names that is gone (b.bin intact again, so only c.txt can fail).
      await o.plant(`${info.uuid}/b.bin`, b);
      await o.storage.delete([`${info.uuid}/c.txt`]);
      await rejectsWith(downloadCheckpoint(o.storage, info.uuid, path.join(work, 'gone')), 'DET_ERR_INVALID_ARGUMENT', /checkpoint file "c.txt" is missing from storage/);
    });

    describe('planted manifests', () => {
      const good = async (): Promise<Manifest> => {
        const info = checkpointInfo('victim');
        const res = await uploader().up.upload(await writeCheckpoint(ckpts, 'victim', { 'x.txt': 'x', 'sub/y.txt': 'y' }), info);
        return res.manifest;
      };
      const cases: { name: string; edit: (m: Manifest) => unknown; want: RegExp }[] = [
        { name: 'a path with ..', edit: (m) => ({ ...m, files: [{ ...m.files[0], path: '../../evil.txt' }, m.files[1]] }), want: /files\[0\]\.path: unsafe path "\.\.\/\.\.\/evil\.txt"/ },
        { name: 'a path with .. in the middle', edit: (m) => ({ ...m, files: [{ ...m.files[0], path: 'sub/../../evil.txt' }, m.files[1]] }), want: /unsafe path "sub\/\.\.\/\.\.\/evil\.txt": the path contains a '\.\.' segment/ },
        { name: 'an absolute path', edit: (m) => ({ ...m, files: [{ ...m.files[0], path: '/tmp/evil.txt' }, m.files[1]] }), want: /unsafe path "\/tmp\/evil\.txt": the path is absolute/ },
        { name: 'a key with ..', edit: (m) => ({ ...m, files: [{ ...m.files[0], key: `${m.uuid}/../../../etc/passwd` }, m.files[1]] }), want: /unsafe key ".*\/\.\.\/\.\.\/\.\.\/etc\/passwd"/ },
        { name: 'an absolute key', edit: (m) => ({ ...m, files: [{ ...m.files[0], key: '/etc/passwd' }, m.files[1]] }), want: /unsafe key "\/etc\/passwd".*absolute/ },
        { name: 'another uuid', edit: (m) => ({ ...m, uuid: 'someone-else' }), want: /belongs to checkpoint someone-else/ },
      ];
      for (const tc of cases) {
        it(`refuses ${tc.name}, writing nothing`, async () => {
          const m = await good();
          await o.plant(manifestKey(m.uuid), Buffer.from(JSON.stringify(tc.edit(m))));
          const parent = path.join(work, 'dl');
          await fs.mkdir(parent);
          await fs.writeFile(path.join(parent, 'sentinel'), 's');
          const target = path.join(parent, 'a', 'b', 'target');
          await rejectsWith(downloadCheckpoint(o.storage, m.uuid, target), 'DET_ERR_INVALID_ARGUMENT', tc.want);
          const written = Object.keys(await treeDigests(work)).filter((k) => !k.startsWith('checkpoints/'));
          assert.deepEqual(written, ['dl/sentinel'], 'nothing was written, inside or outside the target');
        });
      }
    });

    it('an aborted download stops with the reason and removes what it wrote', async () => {
      const dir = await writeCheckpoint(ckpts, 'abort', randomFiles(10, 1000, 2000));
      const info = checkpointInfo('abort');
      await uploader().up.upload(dir, info);
      const hooked = new HookedStorage(o.storage);
      const ac = new AbortController();
      const reason = new Error('user pressed ^C');
      let gets = 0;
      hooked.beforeGet = () => {
        if (++gets === 4) ac.abort(reason);
      };
      const target = path.join(work, 'aborted');
      await assert.rejects(downloadCheckpoint(hooked, info.uuid, target, { concurrency: 1, signal: ac.signal }), (err: unknown) => err === reason);
      assert.ok(gets >= 4 && gets < 11, `gets: ${gets}`);
      await assert.rejects(fs.stat(target), /ENOENT/);
    });

    it('refuses to write through a symlink planted in the target directory', async () => {
      const dir = await writeCheckpoint(ckpts, 'links', { 'a.txt': 'first', 'sub/x.txt': 'would escape', 'sub/deeper/y.txt': 'y' });
      const info = checkpointInfo('links');
      await uploader().up.upload(dir, info);
      const outside = path.join(work, 'outside');
      await fs.mkdir(outside);
      const target = path.join(work, 'target');
      const hooked = new HookedStorage(o.storage);
      hooked.beforeGet = async (key) => {
        // While the first file downloads, something plants target/sub -> outside.
        if (key === `${info.uuid}/a.txt`) await fs.symlink(outside, path.join(target, 'sub'));
      };
      await rejectsWith(
        downloadCheckpoint(hooked, info.uuid, target, { concurrency: 1 }),
        'DET_ERR_INVALID_ARGUMENT',
        /refusing checkpoint file "sub\/(deeper\/y|x)\.txt": "sub" in the target directory is a symlink \(to .*outside\); downloads never write through symlinks/,
      );
      assert.deepEqual(await fs.readdir(outside), [], 'nothing was written outside the target');
      await assert.rejects(fs.lstat(target), /ENOENT/);
    });
  });
}

describe('checkpoint upload, download and delete', function () {
  this.timeout(120_000);
  after(() => s3?.destroy());

  uploadSuite(sharedFsBackend);
  uploadSuite(s3Backend);

  describe('on the wire (s3)', () => {
    let bucket: string;
    let work: string;
    beforeEach(async () => {
      bucket = await createTestBucket(rawS3(), 'ckpt-wire');
      work = await fs.mkdtemp(path.join(tmpdir(), 'det-ckpt-wire-'));
    });
    afterEach(async () => {
      await deleteTestBucket(rawS3(), bucket);
      await fs.rm(work, { recursive: true, force: true });
    });

    it("sends each file up to the multipart threshold as ONE PutObject signed with the manifest's sha256, larger ones multipart", async () => {
      const threshold = PART_SIZE + MiB;
      const storage = new S3Storage({ bucket, prefix: PREFIX, endpointUrl: testEnv().s3Endpoint, forcePathStyle: true, region: S3_TEST_REGION, credentials: S3RVER_CREDENTIALS, multipartThresholdBytes: threshold });
      try {
        const wire = recordWire(storage.client);
        // Read into memory (<= 1 MiB), streamed, exactly at the threshold, and one byte over it.
        const files = { 'small.txt': randomBytes(1000), 'mid.bin': randomBytes(3 * MiB), 'at.bin': randomBytes(threshold), 'big.bin': randomBytes(threshold + 1) };
        const dir = await writeCheckpoint(path.join(work, 'ckpts'), 'step-1', files);
        const info = checkpointInfo('step-1');
        const { log } = collectingLogger();
        const res = await new CheckpointUploader({ storage, log }).upload(dir, info);
        const byPath = new Map(res.manifest.files.map((f) => [f.path, f]));
        const sent = (p: string) => wire.filter((w) => w.key === `${PREFIX}/${byPath.get(p)!.key}`);
        for (const p of ['small.txt', 'mid.bin', 'at.bin']) {
          const f = byPath.get(p)!;
          assert.equal(f.sha256, sha256(files[p as keyof typeof files]), p);
          assert.deepEqual(sent(p), [{ command: 'PutObjectCommand', key: `${PREFIX}/${f.key}`, contentSha256: f.sha256, sha256Signed: true }], p);
        }
        assert.deepEqual(sent('big.bin').map((w) => w.command), ['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand']);
        const down = path.join(work, 'down');
        await downloadCheckpoint(storage, info.uuid, down);
        assert.deepEqual(await treeDigests(down), await treeDigests(dir, { checkpoint: true }));
      } finally {
        storage.destroy();
      }
    });
  });

  describe('interoperability with awscli', () => {
    let o: Opened;
    let work: string;
    let bucket: string;
    beforeEach(async () => {
      o = await s3Backend.open();
      bucket = (o.storage as S3Storage).bucket;
      work = await fs.mkdtemp(path.join(tmpdir(), 'det-ckpt-aws-'));
    });
    afterEach(async () => {
      await o.cleanup();
      await fs.rm(work, { recursive: true, force: true });
    });

    const aws = async (...args: string[]): Promise<Buffer> => (await awsCli(...args)).stdout;

    it('aws s3 ls/cp read an uploaded checkpoint: files and manifest', async () => {
      const ckpts = path.join(work, 'ckpts');
      const dir = await writeCheckpoint(ckpts, 'step-9', { 'model.bin': randomBytes(12 * MiB + 3), 'cfg/a.json': '{"a":1}' });
      const info = checkpointInfo('step-9');
      const { log } = collectingLogger();
      const res = await new CheckpointUploader({ storage: o.storage, log }).upload(dir, info);

      const ls = (await aws('s3', 'ls', '--recursive', `s3://${bucket}/${PREFIX}/${info.uuid}/`)).toString();
      assert.match(ls, new RegExp(`\\s${12 * MiB + 3} ${PREFIX}/${info.uuid}/model\\.bin`));
      assert.match(ls, new RegExp(`\\s7 ${PREFIX}/${info.uuid}/cfg/a\\.json`));
      assert.match(ls, new RegExp(`${PREFIX}/${info.uuid}/\\.det-manifest\\.json`));

      const manifestText = (await aws('s3', 'cp', `s3://${bucket}/${PREFIX}/${info.uuid}/.det-manifest.json`, '-')).toString();
      assert.deepEqual(JSON.parse(manifestText), res.manifest);

      const down = path.join(work, 'aws-down');
      await aws('s3', 'cp', '--recursive', '--only-show-errors', `s3://${bucket}/${PREFIX}/${info.uuid}/`, down);
      const digests = await treeDigests(down);
      for (const f of res.manifest.files) assert.equal(digests[f.path], f.sha256, f.path);
      assert.equal(sha256(await readAll(await o.storage.get(manifestKey(info.uuid)))), digests['.det-manifest.json']);
    });
  });
});
