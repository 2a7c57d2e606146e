import { strict as assert } from 'node:assert';
import { planUpload } from '../../agent/checkpoints/dedupe';
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
