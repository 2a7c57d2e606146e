import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { DetError } from '../../common/errors';
import { checkpointNameProblem, COMPLETE_MARKER, MAX_METADATA_BYTES, METADATA_FILE } from '../../common/checkpoints/contract';
import {
  buildManifest,
  manifestPathProblem,
  parseManifest,
  resolveManifestPath,
  verifyFileAgainstManifest,
  type CheckpointInfo,
  type Manifest,
} from '../../common/checkpoints/manifest';

const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
const info: CheckpointInfo = { uuid: 'u-1', trialId: 7, allocationId: 'a-1', name: 'step-100', createdAtMs: 1_700_000_000_000 };

async function write(root: string, rel: string, content: string | Buffer): Promise<void> {
  await fs.mkdir(path.dirname(path.join(root, rel)), { recursive: true });
  await fs.writeFile(path.join(root, rel), content);
}

async function rejectsInvalid(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof DetError, `expected a DetError, got ${String(err)}`);
    assert.equal(err.code, 'DET_ERR_INVALID_ARGUMENT');
    assert.match(err.message, pattern);
    return true;
  });
}

describe('checkpoint manifest', () => {
  let tmp: string;
  let ckpt: string;
  beforeEach(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'det-ckpt-manifest-'));
    ckpt = path.join(tmp, 'step-100');
    await fs.mkdir(ckpt);
  });
  afterEach(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  it('lists sizes and sha256 of nested files, sorted by path, without reserved files', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
    await write(ckpt, 'model.bin', big);
    await write(ckpt, 'b/z.txt', 'zzz');
    await write(ckpt, 'a/deep/er/x.txt', 'hello');
    await write(ckpt, 'empty', '');
    await write(ckpt, 'A.txt', 'upper');
    await write(ckpt, COMPLETE_MARKER, '');
    await write(ckpt, '.det-other', 'reserved');
    await write(ckpt, 'sub/.det-nested', 'only the top level is reserved');
    const m = await buildManifest(ckpt, info, { concurrency: 2 });
    assert.deepEqual(m.files, [
      { path: 'A.txt', size: 5, sha256: sha('upper'), key: 'u-1/A.txt' },
      { path: 'a/deep/er/x.txt', size: 5, sha256: sha('hello'), key: 'u-1/a/deep/er/x.txt' },
      { path: 'b/z.txt', size: 3, sha256: sha('zzz'), key: 'u-1/b/z.txt' },
      { path: 'empty', size: 0, sha256: sha(''), key: 'u-1/empty' },
      { path: 'model.bin', size: big.length, sha256: sha(big), key: 'u-1/model.bin' },
      { path: 'sub/.det-nested', size: 30, sha256: sha('only the top level is reserved'), key: 'u-1/sub/.det-nested' },
    ]);
    assert.equal(m.totalSize, 5 + 5 + 3 + 0 + big.length + 30);
    assert.deepEqual({ ...m, files: [], totalSize: 0 }, { version: 1, ...info, files: [], totalSize: 0, metadata: {} });
    // What buildManifest produces, parseManifest accepts unchanged.
    assert.deepEqual(parseManifest(JSON.stringify(m)), m);
  });

  it('reads the user metadata object', async () => {
    await write(ckpt, 'w', 'x');
    await write(ckpt, METADATA_FILE, JSON.stringify({ step: 100, loss: 0.25, tags: ['a'] }));
    const m = await buildManifest(ckpt, info);
    assert.deepEqual(m.metadata, { step: 100, loss: 0.25, tags: ['a'] });
    assert.deepEqual(m.files.map((f) => f.path), ['w']);
  });

  const badMetadata: { name: string; content: string; want: RegExp }[] = [
    { name: 'not JSON', content: '{step: 1', want: /not valid JSON/ },
    { name: 'an array', content: '[1,2]', want: /must hold a JSON object, not an array/ },
    { name: 'null', content: 'null', want: /not null/ },
    { name: 'a number', content: '3', want: /not number/ },
    { name: 'over 64 KiB', content: JSON.stringify({ s: 'x'.repeat(MAX_METADATA_BYTES) }), want: /limit is 65536 bytes/ },
  ];
  for (const tc of badMetadata) {
    it(`rejects metadata that is ${tc.name}`, async () => {
      await write(ckpt, METADATA_FILE, tc.content);
      await rejectsInvalid(buildManifest(ckpt, info), tc.want);
    });
  }

  it('accepts metadata of exactly 64 KiB', async () => {
    const prefix = '{"s":"';
    await write(ckpt, METADATA_FILE, prefix + 'x'.repeat(MAX_METADATA_BYTES - prefix.length - 2) + '"}');
    const m = await buildManifest(ckpt, info);
    assert.equal((m.metadata.s as string).length, MAX_METADATA_BYTES - prefix.length - 2);
  });

  it('rejects a symlink that escapes the checkpoint, naming it', async () => {
    await write(tmp, 'secret', 'outside');
    await write(ckpt, 'ok', 'fine');
    await fs.mkdir(path.join(ckpt, 'sub'));
    await fs.symlink('../../secret', path.join(ckpt, 'sub', 'leak'));
    await rejectsInvalid(buildManifest(ckpt, info), /"sub\/leak" is a symlink that points outside the checkpoint/);
  });

  it('rejects an absolute symlink out of the checkpoint', async () => {
    await fs.symlink('/etc/hostname', path.join(ckpt, 'abs'));
    await rejectsInvalid(buildManifest(ckpt, info), /"abs" is a symlink that points outside/);
  });

  it('rejects a symlink to a directory, even inside the checkpoint', async () => {
    await write(ckpt, 'real/f', 'x');
    await fs.symlink('real', path.join(ckpt, 'alias'));
    await rejectsInvalid(buildManifest(ckpt, info), /"alias" is a symlink to a directory/);
  });

  it('rejects a dangling symlink', async () => {
    await fs.symlink('nowhere', path.join(ckpt, 'dangling'));
    await rejectsInvalid(buildManifest(ckpt, info), /"dangling" is a dangling symlink/);
  });

  it('stores a symlink to a file inside the checkpoint as a copy of its content', async () => {
    await write(ckpt, 'weights/v1.bin', 'weights-v1');
    await fs.symlink('weights/v1.bin', path.join(ckpt, 'latest.bin'));
    const m = await buildManifest(ckpt, info);
    assert.deepEqual(m.files, [
      { path: 'latest.bin', size: 10, sha256: sha('weights-v1'), key: 'u-1/latest.bin' },
      { path: 'weights/v1.bin', size: 10, sha256: sha('weights-v1'), key: 'u-1/weights/v1.bin' },
    ]);
  });

  it('rejects a fifo, naming it', async () => {
    await fs.mkdir(path.join(ckpt, 'd'));
    execFileSync('mkfifo', [path.join(ckpt, 'd', 'pipe')]);
    await rejectsInvalid(buildManifest(ckpt, info), /"d\/pipe" is a fifo/);
  });

  it('rejects an invalid checkpoint name and a missing directory', async () => {
    await rejectsInvalid(buildManifest(ckpt, { ...info, name: 'a/b' }), /invalid checkpoint name/);
    await rejectsInvalid(buildManifest(path.join(tmp, 'missing'), info), /cannot read checkpoint directory/);
  });

  it('rejects a uuid that cannot be a storage key segment', async () => {
    await write(ckpt, 'f', 'x');
    await rejectsInvalid(buildManifest(ckpt, { ...info, uuid: '../escape' }), /invalid checkpoint uuid "\.\.\/escape"/);
  });

  it('hashes through the given hash function (the agent passes its HashCache)', async () => {
    await write(ckpt, 'a', 'aaa');
    await write(ckpt, 'b/c', 'cc');
    const asked: string[] = [];
    const m = await buildManifest(ckpt, info, {
      hash: async (file) => {
        asked.push(path.relative(await fs.realpath(ckpt), file));
        return { size: 1, sha256: 'f'.repeat(64) };
      },
    });
    assert.deepEqual(asked.sort(), ['a', path.join('b', 'c')]);
    assert.deepEqual(m.files.map((f) => [f.path, f.sha256]), [['a', 'f'.repeat(64)], ['b/c', 'f'.repeat(64)]]);
  });

  it('verifies downloaded files against their entry', async () => {
    await write(ckpt, 'f', 'content');
    const m = await buildManifest(ckpt, info);
    await verifyFileAgainstManifest(path.join(ckpt, 'f'), m.files[0]);
    await fs.writeFile(path.join(ckpt, 'f'), 'CONTENT');
    await rejectsInvalid(verifyFileAgainstManifest(path.join(ckpt, 'f'), m.files[0]), /"f" has sha256 .* the download is corrupted/);
    await fs.writeFile(path.join(ckpt, 'f'), 'short');
    await rejectsInvalid(verifyFileAgainstManifest(path.join(ckpt, 'f'), m.files[0]), /has 5 bytes, the manifest says 7/);
  });
});

describe('manifest paths', () => {
  const cases: { p: string; ok: boolean }[] = [
    { p: 'a', ok: true },
    { p: 'a/b/c.txt', ok: true },
    { p: '.hidden/..x', ok: true },
    { p: '', ok: false },
    { p: '/etc/passwd', ok: false },
    { p: '../x', ok: false },
    { p: 'a/../../x', ok: false },
    { p: 'a/./b', ok: false },
    { p: 'a//b', ok: false },
    { p: 'a/', ok: false },
    { p: 'a\\..\\b', ok: false },
    { p: 'C:/x', ok: false },
    { p: 'a\0b', ok: false },
  ];
  for (const tc of cases) {
    it(`${JSON.stringify(tc.p)} is ${tc.ok ? 'safe' : 'rejected'}`, () => {
      assert.equal(manifestPathProblem(tc.p) === undefined, tc.ok, manifestPathProblem(tc.p));
    });
  }

  it('resolveManifestPath joins safe paths and refuses traversal', () => {
    assert.equal(resolveManifestPath('/tmp/t', 'a/b'), path.join('/tmp/t', 'a', 'b'));
    assert.throws(() => resolveManifestPath('/tmp/t', '../evil'), (e: unknown) => e instanceof DetError && e.code === 'DET_ERR_INVALID_ARGUMENT' && /"\.\.\/evil"/.test(e.message));
    assert.throws(() => resolveManifestPath('/tmp/t', '/abs'), /absolute/);
  });

  it('checkpoint names follow the contract', () => {
    assert.equal(checkpointNameProblem('step-100_v1.2'), undefined);
    assert.match(checkpointNameProblem('a b') ?? '', /letters, digits/);
    assert.match(checkpointNameProblem('x'.repeat(129)) ?? '', /longer than 128/);
    assert.equal(checkpointNameProblem('x'.repeat(128)), undefined);
    assert.match(checkpointNameProblem('..') ?? '', /not a directory name/);
    assert.match(checkpointNameProblem('.det-complete') ?? '', /reserved/);
    assert.match(checkpointNameProblem('') ?? '', /empty/);
  });
});

describe('parseManifest', () => {
  const good: Manifest = {
    version: 1,
    ...info,
    files: [
      { path: 'a', size: 1, sha256: 'a'.repeat(64), key: 'u-1/a' },
      { path: 'b/c', size: 2, sha256: 'b'.repeat(64), key: 'u-0/b/c' },
    ],
    totalSize: 3,
    metadata: { step: 1 },
  };

  it('accepts a valid manifest as text or value', () => {
    assert.deepEqual(parseManifest(JSON.stringify(good)), good);
    assert.deepEqual(parseManifest(good), good);
  });

  const bad: { name: string; m: unknown; want: RegExp }[] = [
    { name: 'not JSON', m: '{', want: /not valid JSON/ },
    { name: 'an array', m: [], want: /\(manifest\)/ },
    { name: 'wrong version', m: { ...good, version: 2 }, want: /version/ },
    { name: 'a missing uuid', m: { ...good, uuid: undefined }, want: /uuid/ },
    { name: 'a .. path', m: { ...good, files: [{ path: '../x', size: 3, sha256: 'a'.repeat(64), key: 'u-1/x' }], totalSize: 3 }, want: /files\[0\]\.path: unsafe path "\.\.\/x"/ },
    { name: 'an absolute path', m: { ...good, files: [{ path: '/x', size: 3, sha256: 'a'.repeat(64), key: 'u-1/x' }], totalSize: 3 }, want: /absolute/ },
    { name: 'a bad sha256', m: { ...good, files: [{ path: 'x', size: 3, sha256: 'XYZ', key: 'u-1/x' }], totalSize: 3 }, want: /files\[0\]\.sha256: must be 64 lowercase hex/ },
    { name: 'a negative size', m: { ...good, files: [{ path: 'x', size: -3, sha256: 'a'.repeat(64), key: 'u-1/x' }], totalSize: -3 }, want: /files\[0\]\.size/ },
    { name: 'a missing key', m: { ...good, files: [{ path: 'x', size: 3, sha256: 'a'.repeat(64) }], totalSize: 3 }, want: /files\[0\]\.key: Required/ },
    { name: 'a key with ..', m: { ...good, files: [{ path: 'x', size: 3, sha256: 'a'.repeat(64), key: 'u-1/../../etc/passwd' }], totalSize: 3 }, want: /files\[0\]\.key: unsafe key "u-1\/\.\.\/\.\.\/etc\/passwd": .*'\.\.' segments/ },
    { name: 'an absolute key', m: { ...good, files: [{ path: 'x', size: 3, sha256: 'a'.repeat(64), key: '/etc/passwd' }], totalSize: 3 }, want: /files\[0\]\.key: unsafe key "\/etc\/passwd": .*absolute/ },
    { name: 'a key without a checkpoint uuid', m: { ...good, files: [{ path: 'x', size: 3, sha256: 'a'.repeat(64), key: 'x' }], totalSize: 3 }, want: /files\[0\]\.key: .*<checkpoint uuid>\/<path>/ },
    { name: 'a key naming a manifest', m: { ...good, files: [{ path: 'x', size: 3, sha256: 'a'.repeat(64), key: 'u-0/.det-manifest.json' }], totalSize: 3 }, want: /files\[0\]\.key: .*reserved/ },
    {
      name: 'one key with two different contents',
      m: { ...good, files: [good.files[0], { ...good.files[1], key: 'u-1/a' }] },
      want: /files\[1\]\.key: "u-1\/a" is shared with another entry of a different sha256/,
    },
    { name: 'an unsafe uuid', m: { ...good, uuid: '../x' }, want: /uuid: the uuid may only contain/ },
    { name: 'unsorted paths', m: { ...good, files: [...good.files].reverse() }, want: /sorted/ },
    { name: 'duplicate paths', m: { ...good, files: [good.files[0], good.files[0]], totalSize: 2 }, want: /unique/ },
    { name: 'a wrong totalSize', m: { ...good, totalSize: 4 }, want: /totalSize: is 4 but the files add up to 3/ },
    { name: 'metadata that is not an object', m: { ...good, metadata: [1] }, want: /metadata/ },
    { name: 'an unknown key', m: { ...good, extra: 1 }, want: /extra/ },
    { name: 'an invalid name', m: { ...good, name: '../up' }, want: /name/ },
  ];
  for (const tc of bad) {
    it(`rejects ${tc.name}`, () => {
      assert.throws(
        () => parseManifest(tc.m),
        (e: unknown) => e instanceof DetError && e.code === 'DET_ERR_INVALID_ARGUMENT' && tc.want.test(e.message) ? true : assert.fail(String(e)),
      );
    });
  }

  it('reports every problem at once', () => {
    assert.throws(() => parseManifest({ ...good, uuid: '', totalSize: 9 }), /uuid.*totalSize|totalSize.*uuid/);
  });
});
