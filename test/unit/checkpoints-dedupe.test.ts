import { strict as assert } from 'node:assert';
import { planUpload } from '../../agent/checkpoints/dedupe';
import type { ManifestFile } from '../../agent/checkpoints/manifest';

const f = (p: string, c: string, size = 10): ManifestFile => ({ path: p, size, sha256: c.repeat(64) });

describe('planUpload (content-addressed dedupe)', () => {
  const cases: { name: string; files: ManifestFile[]; stored: string[]; upload: string[]; skip: string[]; uploadBytes: number; skippedBytes: number }[] = [
    { name: 'nothing stored: everything uploads', files: [f('a', '1'), f('b', '2')], stored: [], upload: ['a', 'b'], skip: [], uploadBytes: 20, skippedBytes: 0 },
    { name: 'stored content is skipped', files: [f('a', '1', 5), f('b', '2', 7)], stored: ['1'.repeat(64)], upload: ['b'], skip: ['a'], uploadBytes: 7, skippedBytes: 5 },
    { name: 'everything stored: nothing uploads', files: [f('a', '1'), f('b', '2')], stored: ['1'.repeat(64), '2'.repeat(64)], upload: [], skip: ['a', 'b'], uploadBytes: 0, skippedBytes: 20 },
    { name: 'same content twice in one checkpoint uploads once', files: [f('a', '3'), f('b', '3'), f('c', '4')], stored: [], upload: ['a', 'c'], skip: ['b'], uploadBytes: 20, skippedBytes: 10 },
    { name: 'an empty checkpoint', files: [], stored: ['1'.repeat(64)], upload: [], skip: [], uploadBytes: 0, skippedBytes: 0 },
  ];
  for (const tc of cases) {
    it(tc.name, () => {
      const plan = planUpload({ files: tc.files }, new Set(tc.stored));
      assert.deepEqual(plan.upload.map((x) => x.path), tc.upload);
      assert.deepEqual(plan.skip.map((x) => x.path), tc.skip);
      assert.equal(plan.uploadBytes, tc.uploadBytes);
      assert.equal(plan.skippedBytes, tc.skippedBytes);
    });
  }

  it('a later checkpoint with one changed file uploads only that file', () => {
    const first = [f('model', 'a'), f('opt', 'b'), f('vocab', 'c')];
    const stored = new Set(planUpload({ files: first }, new Set()).upload.map((x) => x.sha256));
    const second = [f('model', 'd'), f('opt', 'b'), f('vocab', 'c')];
    assert.deepEqual(planUpload({ files: second }, stored).upload.map((x) => x.path), ['model']);
  });
});
