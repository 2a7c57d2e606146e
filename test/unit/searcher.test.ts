import { strict as assert } from 'node:assert';
import { generateTrials, gridValues, mulberry32, MAX_TRIALS, type HParams } from '../../master/experiment/searcher';
import type { ExperimentConfig, Hyperparameter } from '../../master/experiment/config';
import { DetError } from '../../common/errors';

type SearchConfig = Pick<ExperimentConfig, 'hyperparameters' | 'searcher'>;

const search = (name: 'single' | 'grid' | 'random', hyperparameters: Record<string, Hyperparameter>, over: { maxTrials?: number; seed?: number } = {}): SearchConfig => ({
  hyperparameters,
  searcher: { name, maxTrials: over.maxTrials, seed: over.seed },
});

function assertTooMany(fn: () => unknown): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DetError);
    assert.equal(err.code, 'DET_ERR_EXPERIMENT_CONFIG_INVALID');
    assert.match(err.message, new RegExp(`the limit is ${MAX_TRIALS}`));
    return true;
  });
}

describe('searcher', () => {
  describe('gridValues', () => {
    const cases: { name: string; hp: Hyperparameter; want: (string | number | boolean)[] }[] = [
      { name: 'const', hp: { type: 'const', val: 'x' }, want: ['x'] },
      { name: 'categorical keeps order', hp: { type: 'categorical', vals: ['sgd', 1, true] }, want: ['sgd', 1, true] },
      { name: 'int without count: every integer', hp: { type: 'int', minval: 2, maxval: 5 }, want: [2, 3, 4, 5] },
      { name: 'int with count', hp: { type: 'int', minval: 0, maxval: 10, count: 3 }, want: [0, 5, 10] },
      { name: 'int with count > range', hp: { type: 'int', minval: 1, maxval: 3, count: 10 }, want: [1, 2, 3] },
      { name: 'int with count 1', hp: { type: 'int', minval: 4, maxval: 9, count: 1 }, want: [4] },
      { name: 'int single value', hp: { type: 'int', minval: 7, maxval: 7 }, want: [7] },
      { name: 'double', hp: { type: 'double', minval: 0, maxval: 1, count: 5 }, want: [0, 0.25, 0.5, 0.75, 1] },
      { name: 'double without float noise', hp: { type: 'double', minval: 0.1, maxval: 0.3, count: 3 }, want: [0.1, 0.2, 0.3] },
      { name: 'log base 10', hp: { type: 'log', minval: -4, maxval: -2, base: 10, count: 3 }, want: [0.0001, 0.001, 0.01] },
      { name: 'log base 2', hp: { type: 'log', minval: 0, maxval: 3, base: 2, count: 4 }, want: [1, 2, 4, 8] },
    ];
    for (const tc of cases) {
      it(tc.name, () => {
        assert.deepEqual(gridValues(tc.hp), tc.want);
      });
    }
  });

  describe('grid', () => {
    it('is the cross product in sorted name order, last name fastest', () => {
      const trials = generateTrials(
        search('grid', {
          // Declared out of order on purpose: the searcher sorts names.
          c: { type: 'categorical', vals: ['x', 'y'] },
          a: { type: 'int', minval: 1, maxval: 2 },
          b: { type: 'const', val: true },
        }),
      );
      assert.deepEqual(trials, [
        { a: 1, b: true, c: 'x' },
        { a: 1, b: true, c: 'y' },
        { a: 2, b: true, c: 'x' },
        { a: 2, b: true, c: 'y' },
      ]);
      for (const t of trials) assert.deepEqual(Object.keys(t), ['a', 'b', 'c']);
    });

    it('has as many trials as the product of the axes', () => {
      const trials = generateTrials(
        search('grid', {
          lr: { type: 'log', minval: -4, maxval: -2, base: 10, count: 3 },
          layers: { type: 'int', minval: 1, maxval: 4 },
          opt: { type: 'categorical', vals: ['sgd', 'adam'] },
        }),
      );
      assert.equal(trials.length, 3 * 4 * 2);
      assert.equal(new Set(trials.map((t) => JSON.stringify(t))).size, trials.length, 'grid points are distinct');
    });

    it('with no hyperparameters is one empty trial', () => {
      assert.deepEqual(generateTrials(search('grid', {})), [{}]);
    });

    const caps: { maxTrials: number; want: number }[] = [
      { maxTrials: 1, want: 1 },
      { maxTrials: 5, want: 5 },
      { maxTrials: 6, want: 6 },
      { maxTrials: 100, want: 6 },
    ];
    for (const tc of caps) {
      it(`max_trials ${tc.maxTrials} caps a 6-point grid at ${tc.want}, keeping the first points`, () => {
        const space: Record<string, Hyperparameter> = { a: { type: 'int', minval: 1, maxval: 3 }, b: { type: 'categorical', vals: ['x', 'y'] } };
        const all = generateTrials(search('grid', space));
        const capped = generateTrials(search('grid', space, { maxTrials: tc.maxTrials }));
        assert.deepEqual(capped, all.slice(0, tc.want));
      });
    }

    it('rejects a grid above the trial limit', () => {
      assertTooMany(() => generateTrials(search('grid', { a: { type: 'int', minval: 1, maxval: 101 }, b: { type: 'int', minval: 1, maxval: 100 } })));
    });

    it('allows a grid above the limit when max_trials caps it', () => {
      const trials = generateTrials(search('grid', { a: { type: 'int', minval: 1, maxval: 101 }, b: { type: 'int', minval: 1, maxval: 100 } }, { maxTrials: 3 }));
      assert.deepEqual(trials, [{ a: 1, b: 1 }, { a: 1, b: 2 }, { a: 1, b: 3 }]);
    });
  });

  describe('random', () => {
    const space: Record<string, Hyperparameter> = {
      i: { type: 'int', minval: 1, maxval: 3 },
      d: { type: 'double', minval: -1, maxval: 1 },
      l: { type: 'log', minval: -4, maxval: -2, base: 10 },
      c: { type: 'categorical', vals: ['sgd', 'adam', 'rmsprop'] },
      k: { type: 'const', val: 42 },
    };

    it('creates max_trials trials', () => {
      assert.equal(generateTrials(search('random', space, { maxTrials: 17, seed: 1 })).length, 17);
    });

    it('is deterministic per seed', () => {
      assert.deepEqual(generateTrials(search('random', space, { maxTrials: 10, seed: 5 })), generateTrials(search('random', space, { maxTrials: 10, seed: 5 })));
    });

    it('differs between seeds', () => {
      assert.notDeepEqual(generateTrials(search('random', space, { maxTrials: 10, seed: 5 })), generateTrials(search('random', space, { maxTrials: 10, seed: 6 })));
    });

    it('keeps every value within its bounds and reaches both int ends', () => {
      const trials: HParams[] = generateTrials(search('random', space, { maxTrials: 300, seed: 11 }));
      const ints = new Set<number>();
      const cats = new Set<string>();
      for (const t of trials) {
        assert.ok(Number.isInteger(t.i) && (t.i as number) >= 1 && (t.i as number) <= 3, `int ${t.i}`);
        ints.add(t.i as number);
        assert.ok((t.d as number) >= -1 && (t.d as number) < 1, `double ${t.d}`);
        assert.ok((t.l as number) >= 1e-4 && (t.l as number) <= 1e-2, `log ${t.l}`);
        assert.ok(['sgd', 'adam', 'rmsprop'].includes(t.c as string), `categorical ${t.c}`);
        cats.add(t.c as string);
        assert.equal(t.k, 42);
      }
      assert.deepEqual([...ints].sort(), [1, 2, 3], 'int range is inclusive at both ends');
      assert.equal(cats.size, 3, 'every categorical value is drawn');
    });

    it('spreads log samples across decades', () => {
      const trials = generateTrials(search('random', { l: { type: 'log', minval: -4, maxval: -2, base: 10 } }, { maxTrials: 200, seed: 3 }));
      const below = trials.filter((t) => (t.l as number) < 1e-3).length;
      assert.ok(below > 50 && below < 150, `about half below 10^-3, got ${below}/200`);
    });

    it('rejects more than the trial limit', () => {
      assertTooMany(() => generateTrials(search('random', space, { maxTrials: MAX_TRIALS + 1 })));
    });
  });

  describe('single', () => {
    it('creates exactly one trial at the middle of each range', () => {
      const trials = generateTrials(
        search('single', {
          i: { type: 'int', minval: 1, maxval: 4 },
          d: { type: 'double', minval: 0, maxval: 1 },
          l: { type: 'log', minval: -4, maxval: -2, base: 10 },
          c: { type: 'categorical', vals: ['sgd', 'adam'] },
          k: { type: 'const', val: 'x' },
        }),
      );
      assert.deepEqual(trials, [{ c: 'sgd', d: 0.5, i: 2, k: 'x', l: 0.001 }]);
    });

    it('ignores max_trials', () => {
      assert.equal(generateTrials(search('single', { k: { type: 'const', val: 1 } }, { maxTrials: 5 })).length, 1);
    });
  });

  describe('mulberry32', () => {
    it('stays in [0, 1) and is deterministic per seed', () => {
      for (const seed of [0, 1, 42, 0xffffffff, -1]) {
        const a = mulberry32(seed);
        const b = mulberry32(seed);
        for (let i = 0; i < 2000; i++) {
          const x = a();
          assert.ok(x >= 0 && x < 1, `seed ${seed} gave ${x}`);
          assert.equal(b(), x);
        }
      }
    });

    it('differs between seeds and is roughly uniform', () => {
      const a = mulberry32(1);
      const b = mulberry32(2);
      const xs = Array.from({ length: 4000 }, () => a());
      assert.notEqual(xs[0], b());
      const buckets = [0, 0, 0, 0];
      for (const x of xs) buckets[Math.floor(x * 4)]++;
      for (const n of buckets) assert.ok(n > 800 && n < 1200, `bucket counts ${buckets}`);
    });
  });
});
