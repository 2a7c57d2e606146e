// Searchers turn a hyperparameter space into trial hyperparameter sets.
// Pure and deterministic: the same config (and seed) gives the same trials.
import { DetError } from '../../common/errors';
import type { ExperimentConfig, Hyperparameter } from './config';

/** Hyperparameter values of one trial. */
export type HParams = Record<string, string | number | boolean>;

/** The most trials one experiment may create. */
export const MAX_TRIALS = 10_000;

/** All trials of an experiment, in order. */
export function generateTrials(config: Pick<ExperimentConfig, 'hyperparameters' | 'searcher'>): HParams[] {
  const names = Object.keys(config.hyperparameters).sort();
  switch (config.searcher.name) {
    case 'single':
      return [sampleAll(names, config.hyperparameters, mulberry32(config.searcher.seed ?? 0), 'single')];
    case 'random': {
      const rng = mulberry32(config.searcher.seed ?? 0);
      const n = config.searcher.maxTrials ?? 1;
      if (n > MAX_TRIALS) throw tooMany(n);
      return Array.from({ length: n }, () => sampleAll(names, config.hyperparameters, rng, 'random'));
    }
    case 'grid': {
      const axes = names.map((name) => gridValues(config.hyperparameters[name]));
      const total = axes.reduce((acc, a) => acc * a.length, 1);
      const cap = config.searcher.maxTrials;
      if (total > MAX_TRIALS && (cap === undefined || cap > MAX_TRIALS)) throw tooMany(total);
      const out: HParams[] = [];
      const limit = cap === undefined ? total : Math.min(cap, total);
      for (let i = 0; i < limit; i++) {
        const hp: HParams = {};
        let rest = i;
        // The last name varies fastest, like nested loops in name order.
        for (let a = axes.length - 1; a >= 0; a--) {
          hp[names[a]] = axes[a][rest % axes[a].length];
          rest = Math.floor(rest / axes[a].length);
        }
        out.push(Object.fromEntries(names.map((n) => [n, hp[n]])));
      }
      return out;
    }
  }
}

/** The grid points of one hyperparameter. */
export function gridValues(hp: Hyperparameter): (string | number | boolean)[] {
  switch (hp.type) {
    case 'const':
      return [hp.val];
    case 'categorical':
      return hp.vals;
    case 'int': {
      const span = hp.maxval - hp.minval + 1;
      const count = Math.min(hp.count ?? span, span);
      if (count === 1) return [hp.minval];
      return dedupe(Array.from({ length: count }, (_, i) => Math.round(hp.minval + ((hp.maxval - hp.minval) * i) / (count - 1))));
    }
    case 'double':
      return linspace(hp.minval, hp.maxval, hp.count ?? 1);
    case 'log':
      return linspace(hp.minval, hp.maxval, hp.count ?? 1).map((e) => tidy(hp.base ** e));
  }
}

function sampleAll(names: string[], space: Record<string, Hyperparameter>, rng: () => number, mode: 'single' | 'random'): HParams {
  const out: HParams = {};
  for (const name of names) out[name] = sample(space[name], rng, mode);
  return out;
}

function sample(hp: Hyperparameter, rng: () => number, mode: 'single' | 'random'): string | number | boolean {
  switch (hp.type) {
    case 'const':
      return hp.val;
    case 'categorical':
      return mode === 'single' ? hp.vals[0] : hp.vals[Math.floor(rng() * hp.vals.length)];
    case 'int':
      return mode === 'single' ? Math.floor((hp.minval + hp.maxval) / 2) : hp.minval + Math.floor(rng() * (hp.maxval - hp.minval + 1));
    case 'double':
      return mode === 'single' ? (hp.minval + hp.maxval) / 2 : hp.minval + rng() * (hp.maxval - hp.minval);
    case 'log':
      return tidy(hp.base ** (mode === 'single' ? (hp.minval + hp.maxval) / 2 : hp.minval + rng() * (hp.maxval - hp.minval)));
  }
}

/** Drops floating-point noise (Math.pow(10, -4) is 0.00009999999999999999 in V8). */
function tidy(x: number): number {
  return Number(x.toPrecision(12));
}

function linspace(min: number, max: number, count: number): number[] {
  if (count <= 1) return [min];
  return Array.from({ length: count }, (_, i) => tidy(min + ((max - min) * i) / (count - 1)));
}

function dedupe<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}

function tooMany(n: number): DetError {
  return new DetError('DET_ERR_EXPERIMENT_CONFIG_INVALID', `experiment config is invalid (1 problem):\n  - searcher: would create ${n} trials; the limit is ${MAX_TRIALS} (set searcher.max_trials or use fewer grid points)`);
}

/** A small seeded PRNG (mulberry32): uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
