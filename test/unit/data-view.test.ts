// The pure view plan, then building and removing a real view on the filesystem.
import { strict as assert } from 'node:assert';
import { chownSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { planView } from '../../agent/data/view-plan';
import { buildView, removeView } from '../../agent/data/view';
import { DetError } from '../../common/errors';

const SRC = 's3://datasets/mnist/';

describe('data view plan', () => {
  it('lists every directory once, parents first, and keeps the files', () => {
    const plan = planView(['b/c/d.bin', 'a.txt', 'b/x', 'b/c/e', 'z/y/x/w'], SRC);
    assert.deepEqual(plan.files, ['b/c/d.bin', 'a.txt', 'b/x', 'b/c/e', 'z/y/x/w']);
    assert.deepEqual(plan.dirs, ['b', 'z', 'b/c', 'z/y', 'z/y/x']);
    for (const [i, d] of plan.dirs.entries()) {
      const parent = path.posix.dirname(d);
      if (parent !== '.') assert.ok(plan.dirs.indexOf(parent) < i, `${parent} before ${d}`);
    }
  });

  it('an empty listing is an empty view', () => {
    assert.deepEqual(planView([], SRC), { dirs: [], files: [] });
  });

  for (const key of ['../x', 'a/../../x', 'a/..', '/etc/passwd', 'a\\..\\b', 'a//b', 'a/', './a', 'x\0y', '']) {
    it(`refuses the key ${JSON.stringify(key)}, naming source and key`, () => {
      assert.throws(
        () => planView(['ok', key], SRC),
        (err: unknown) => {
          assert.ok(err instanceof DetError && err.code === 'DET_ERR_INVALID_ARGUMENT', String(err));
          assert.ok(err.message.includes(`refusing object ${SRC}${key}`), err.message);
          return true;
        },
      );
    });
  }

  it('refuses a key that is also a folder of another key', () => {
    assert.throws(() => planView(['a/b', 'c', 'a'], SRC), /s3:\/\/datasets\/mnist\/a is an object and also a folder of s3:\/\/datasets\/mnist\/a\/b/);
    // "a.b" and "a/b" are fine together.
    assert.deepEqual(planView(['a.b', 'a/b'], SRC).dirs, ['a']);
  });
});

describe('data view on disk', () => {
  let dir: string;
  let cache: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'det-view-'));
    cache = path.join(dir, 'cache');
    mkdirSync(cache);
  });
  afterEach(async () => {
    await removeView(path.join(dir, 'view'));
    rmSync(dir, { recursive: true, force: true });
  });

  it('hard-links cache files into a read-only tree, and removeView deletes it', async () => {
    const files: Record<string, string> = { 'a.txt': 'A', 'b/c/d.bin': 'DDD', 'b/e': 'E' };
    for (const [rel, body] of Object.entries(files)) writeFileSync(path.join(cache, rel.replace(/\//g, '_')), body, { mode: 0o444 });
    const view = path.join(dir, 'view');
    const plan = planView(Object.keys(files), SRC);
    const built = await buildView(view, plan, (rel) => path.join(cache, rel.replace(/\//g, '_')));
    assert.equal(built.copied, 0);
    for (const [rel, body] of Object.entries(files)) {
      const p = path.join(view, ...rel.split('/'));
      assert.equal(readFileSync(p, 'utf8'), body);
      const st = statSync(p);
      assert.equal(st.mode & 0o777, 0o444);
      assert.equal(st.nlink, 2, 'a hard link to the cache file');
      assert.equal(st.ino, statSync(path.join(cache, rel.replace(/\//g, '_'))).ino);
    }
    for (const d of ['', 'b', 'b/c']) assert.equal(statSync(path.join(view, d)).mode & 0o777, 0o555, `mode of ${d || 'the view root'}`);
    assert.deepEqual(readdirSync(view).sort(), ['a.txt', 'b']);

    await removeView(view);
    assert.deepEqual(readdirSync(dir), ['cache']);
    for (const f of readdirSync(cache)) assert.equal(statSync(path.join(cache, f)).nlink, 1, 'cache files stay');
    await removeView(view); // missing is fine
  });

  it('refuses to build into an existing directory', async () => {
    const view = path.join(dir, 'view');
    mkdirSync(view);
    await assert.rejects(buildView(view, planView([], SRC), () => ''), /EEXIST/);
  });

  it('removes a tree that is read-only at every level', async () => {
    const view = path.join(dir, 'view');
    writeFileSync(path.join(cache, 'x'), 'x', { mode: 0o444 });
    await buildView(view, planView(['p/q/r/x'], SRC), () => path.join(cache, 'x'));
    linkSync(path.join(cache, 'x'), path.join(dir, 'other-link')); // unrelated links are untouched
    await removeView(view);
    assert.deepEqual(readdirSync(dir).sort(), ['cache', 'other-link']);
  });

  it('removes a read-only view without root privileges (a plain rm -r would fail)', function () {
    // Root ignores directory modes, so as root this runs the check as an unprivileged user.
    const script = `
      const { buildView, removeView } = require(${JSON.stringify(path.join(__dirname, '../../agent/data/view.js'))});
      const { planView } = require(${JSON.stringify(path.join(__dirname, '../../agent/data/view-plan.js'))});
      const fs = require('node:fs'), path = require('node:path');
      const d = process.argv[1], v = path.join(d, 'view');
      (async () => {
        fs.writeFileSync(path.join(d, 'obj'), 'x', { mode: 0o444 });
        await buildView(v, planView(['a/b/c', 'a/d', 'e'], 's3://b/'), () => path.join(d, 'obj'));
        let plain = 'removed';
        try { fs.rmSync(v, { recursive: true }); } catch (e) { plain = e.code; }
        await removeView(v);
        console.log(JSON.stringify({ plain, left: fs.readdirSync(d) }));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const work = mkdtempSync(path.join(tmpdir(), 'det-view-user-'));
    try {
      const asRoot = process.getuid?.() === 0;
      if (asRoot) chownSync(work, 65534, 65534);
      const out = execFileSync(process.execPath, ['-e', script, work], { encoding: 'utf8', ...(asRoot ? { uid: 65534, gid: 65534 } : {}) });
      assert.deepEqual(JSON.parse(out), { plain: 'EACCES', left: ['obj'] });
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
