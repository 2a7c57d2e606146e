import { strict as assert } from 'node:assert';
import { planUpload, UploadPlanner } from '../../agent/checkpoints/dedupe';
import { SizeOrder } from '../../agent/checkpoints/upload-pipeline';
import type { ManifestFile } from '../../common/checkpoints/manifest';

const f = (p: string, c: string, size = 10): ManifestFile => ({ path: p, size, sha256: c.repeat(64), key: `u-2/${p}` });
const stored = (...pairs: [string, string][]) => new Map(pairs.map(([c, key]) => [c.repeat(64), key]));

describe('planUpload (content-addressed dedupe)', () => {
  const cases: {
    name: string;
    files: ManifestFile[];
    stored: Map<string, string>;
    upload: string[];
    skip: string[];
    keys: string[];
    uploadBytes: number;
    skippedBytes: number;
  }[] = [
    { name: 'nothing stored: everything uploads', files: [f('a', '1'), f('b', '2')], stored: stored(), upload: ['a', 'b'], skip: [], keys: ['u-2/a', 'u-2/b'], uploadBytes: 20, skippedBytes: 0 },
    {
      name: 'stored content is skipped and points at the stored object',
      files: [f('a', '1', 5), f('b', '2', 7)],
      stored: stored(['1', 'u-0/old/a']),
      upload: ['b'],
      skip: ['a'],
      keys: ['u-0/old/a', 'u-2/b'],
      uploadBytes: 7,
      skippedBytes: 5,
    },
    {
      name: 'everything stored: nothing uploads',
      files: [f('a', '1'), f('b', '2')],
      stored: stored(['1', 'u-0/a'], ['2', 'u-1/b']),
      upload: [],
      skip: ['a', 'b'],
      keys: ['u-0/a', 'u-1/b'],
      uploadBytes: 0,
      skippedBytes: 20,
    },
    {
      name: 'same content twice in one checkpoint uploads once; the copy points at the first path',
      files: [f('a', '3'), f('b', '3'), f('c', '4')],
      stored: stored(),
      upload: ['a', 'c'],
      skip: ['b'],
      keys: ['u-2/a', 'u-2/a', 'u-2/c'],
      uploadBytes: 20,
      skippedBytes: 10,
    },
    { name: 'an empty checkpoint', files: [], stored: stored(['1', 'u-0/a']), upload: [], skip: [], keys: [], uploadBytes: 0, skippedBytes: 0 },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      const plan = planUpload({ files: tc.files }, tc.stored);
      assert.deepEqual(plan.upload.map((x) => x.path), tc.upload);
      assert.deepEqual(plan.skip.map((x) => x.path), tc.skip);
      assert.deepEqual(plan.files.map((x) => x.path), tc.files.map((x) => x.path), 'every file stays, in order');
      assert.deepEqual(plan.files.map((x) => x.key), tc.keys);
      assert.equal(plan.uploadBytes, tc.uploadBytes);
      assert.equal(plan.skippedBytes, tc.skippedBytes);
    });
  }

  it('uploads go to their own key, and the input is not modified', () => {
    const files = [f('a', '1'), f('b', '1')];
    const plan = planUpload({ files }, stored());
    assert.deepEqual(plan.upload, [files[0]]);
    assert.equal(files[1].key, 'u-2/b');
    assert.equal(plan.skip[0].key, 'u-2/a');
  });

  it('a later checkpoint with one changed file uploads only that file', () => {
    const first = [f('model', 'a'), f('opt', 'b'), f('vocab', 'c')].map((x) => ({ ...x, key: `u-1/${x.path}` }));
    const known = new Map(planUpload({ files: first }, new Map()).files.map((x) => [x.sha256, x.key]));
    const second = [f('model', 'd'), f('opt', 'b'), f('vocab', 'c')];
    const plan = planUpload({ files: second }, known);
    assert.deepEqual(plan.upload.map((x) => x.path), ['model']);
    assert.deepEqual(plan.files.map((x) => x.key), ['u-2/model', 'u-1/opt', 'u-1/vocab']);
  });
});

describe('UploadPlanner (dedupe as hashes arrive)', () => {
  // Decides `files` in `order` (indices) and returns the keys and upload flags in manifest order.
  const decideIn = (files: ManifestFile[], order: number[], known: Map<string, string>) => {
    const planner = new UploadPlanner(known);
    const out: { key: string; upload: boolean }[] = new Array(files.length);
    for (const i of order) {
      const d = planner.decide(files[i]);
      out[i] = { key: d.file.key, upload: d.upload };
    }
    return out;
  };

  it('equals planUpload for every arrival order that keeps manifest order among files of the same size', () => {
    // Contents '1'..'4'; same content implies same size. Some already stored.
    const files = [f('a', '1', 5), f('b', '2', 7), f('c', '1', 5), f('d', '3', 5), f('e', '2', 7), f('g', '4', 9), f('h', '3', 5), f('i', '4', 9)];
    const known = stored(['4', 'u-0/old']);
    const want = planUpload({ files }, known);
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 200; round++) {
      // A random interleaving of the per-size queues.
      const queues = new Map<number, number[]>();
      files.forEach((x, i) => queues.set(x.size, [...(queues.get(x.size) ?? []), i]));
      const order: number[] = [];
      while (order.length < files.length) {
        const open = [...queues.values()].filter((q) => q.length > 0);
        order.push(open[Math.floor(random() * open.length)].shift() as number);
      }
      const got = decideIn(files, order, known);
      assert.deepEqual(got.map((x) => x.key), want.files.map((x) => x.key), `order ${order.join(',')}`);
      assert.deepEqual(files.filter((_, i) => got[i].upload).map((x) => x.path), want.upload.map((x) => x.path));
    }
  });

  it('a later duplicate decided first would claim the content: why SizeOrder exists', () => {
    const files = [f('a', '1'), f('b', '1')];
    const got = decideIn(files, [1, 0], new Map());
    assert.deepEqual(got.map((x) => x.key), ['u-2/b', 'u-2/b']);
    assert.notDeepEqual(got.map((x) => x.key), planUpload({ files }, new Map()).files.map((x) => x.key));
  });

  it('holder() tells whether content is stored or planned, without planning it', () => {
    const planner = new UploadPlanner(stored(['1', 'u-0/a']));
    assert.equal(planner.holder('1'.repeat(64)), 'u-0/a');
    assert.equal(planner.holder('2'.repeat(64)), undefined);
    assert.equal(planner.holder('2'.repeat(64)), undefined);
    planner.decide(f('b', '2'));
    assert.equal(planner.holder('2'.repeat(64)), 'u-2/b');
  });
});

describe('SizeOrder', () => {
  it('lets a file decide only after the previous file of its size, in any completion order', async () => {
    const order = new SizeOrder([5n, 7n, 5n, 5n, 7n]);
    const turns: number[] = [];
    const waiting = [0, 1, 2, 3, 4].map((i) => order.turn(i).then(() => turns.push(i)));
    await Promise.resolve();
    await Promise.resolve();
    assert.deepEqual([...turns].sort(), [0, 1], 'the first of each size goes at once');
    order.done(1);
    await waiting[4];
    assert.ok(!turns.includes(2) && !turns.includes(3), 'files of size 5 wait for file 0');
    order.done(0);
    await waiting[2];
    assert.ok(!turns.includes(3), 'file 3 waits for file 2');
    order.done(2);
    await Promise.all(waiting);
    assert.deepEqual(turns.slice(2), [4, 2, 3]);
    order.done(0); // idempotent
  });
});
