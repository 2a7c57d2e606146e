import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { HashCache, type FileIdentity } from '../../agent/checkpoints/hash-cache';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const id = (ino: number, mtimeNs = 1n): FileIdentity => ({ dev: 1n, ino: BigInt(ino), size: 10n, mtimeNs });

describe('HashCache', () => {
  let tmp: string;
  beforeEach(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'det-hash-cache-'));
  });
  afterEach(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  it('hashes a file once while it is unchanged', async () => {
    const file = path.join(tmp, 'f');
    await fs.writeFile(file, 'content');
    const cache = new HashCache();
    assert.deepEqual(await cache.hash(file), { size: 7, sha256: sha('content') });
    assert.deepEqual(await cache.hash(file), { size: 7, sha256: sha('content') });
    assert.deepEqual(cache.stats, { hits: 1, misses: 1 });
    // A hard link is the same file: no new hash.
    await fs.link(file, path.join(tmp, 'link'));
    assert.deepEqual(await cache.hash(path.join(tmp, 'link')), { size: 7, sha256: sha('content') });
    assert.deepEqual(cache.stats, { hits: 2, misses: 1 });
  });

  it('hashes again after the file changed (size or mtime)', async () => {
    const file = path.join(tmp, 'f');
    await fs.writeFile(file, 'one');
    const cache = new HashCache();
    await cache.hash(file);
    await fs.writeFile(file, 'three');
    assert.deepEqual(await cache.hash(file), { size: 5, sha256: sha('three') });
    // Same size, other content, mtime moved on.
    await fs.writeFile(file, 'THREE');
    const later = new Date(Date.now() + 5_000);
    await fs.utimes(file, later, later);
    assert.deepEqual(await cache.hash(file), { size: 5, sha256: sha('THREE') });
    assert.deepEqual(cache.stats, { hits: 0, misses: 3 });
  });

  it('keeps at most maxEntries, dropping the least recently used', () => {
    const cache = new HashCache(2);
    cache.set(id(1), 'a');
    cache.set(id(2), 'b');
    assert.equal(cache.get(id(1)), 'a'); // 1 is now the most recent
    cache.set(id(3), 'c');
    assert.equal(cache.size, 2);
    assert.equal(cache.get(id(2)), undefined);
    assert.equal(cache.get(id(1)), 'a');
    assert.equal(cache.get(id(3)), 'c');
  });

  it('tells identities apart by every field', () => {
    const cache = new HashCache();
    cache.set(id(1, 5n), 'x');
    assert.equal(cache.get(id(1, 6n)), undefined);
    assert.equal(cache.get({ ...id(1, 5n), size: 11n }), undefined);
    assert.equal(cache.get({ ...id(1, 5n), dev: 2n }), undefined);
    assert.equal(cache.get(id(1, 5n)), 'x');
  });
});
