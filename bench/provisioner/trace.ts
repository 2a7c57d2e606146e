// A seeded synthetic job trace for the provisioner benchmark: Poisson arrivals, log-normal
// durations (training jobs, mostly 20 min - 3 h), slot sizes 1/2/4, mostly 1.

import { mulberry32 } from '../../master/experiment/searcher';

/** One job of the trace. */
export interface TraceJob {
  id: string;
  arriveMs: number;
  durationMs: number;
  slots: number;
}

/** Shape of the trace. */
export interface TraceOptions {
  seed: number;
  /** Arrivals happen in [0, hours). */
  hours: number;
  /** Mean arrivals per hour (Poisson). */
  jobsPerHour: number;
  /** Median duration; the log-normal's sigma is `sigma`; durations are clipped to [minMs, maxMs]. */
  medianMs: number;
  sigma: number;
  minMs: number;
  maxMs: number;
  /** Probability of each slot size. */
  slotMix: { slots: number; p: number }[];
  /** Extra jobs submitted at once (a hyperparameter search's trials), durations drawn as above. */
  burst?: { atMs: number; jobs: number; slots: number };
}

const MIN = 60_000;

/** The trace used by the benchmark unless options override it. */
export const DEFAULT_TRACE: TraceOptions = {
  seed: 42,
  hours: 12,
  jobsPerHour: 40,
  medianMs: 60 * MIN,
  sigma: 0.6,
  minMs: 5 * MIN,
  maxMs: 180 * MIN,
  slotMix: [{ slots: 1, p: 0.7 }, { slots: 2, p: 0.2 }, { slots: 4, p: 0.1 }],
};

/** mulberry32, the searchers' seeded PRNG: uniform in [0, 1). */
export const seededRandom = mulberry32;

/** Standard normal by Box-Muller. */
function normal(random: () => number): number {
  const u = 1 - random();
  const v = random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Generates the trace, arrivals in order. Same options, same trace. */
// Durations: median * e^(sigma * N(0,1)), clipped; with the defaults 5th-95th percentile is about 22-160 min.
export function generateTrace(o: TraceOptions): TraceJob[] {
  const random = seededRandom(o.seed);
  const jobs: TraceJob[] = [];
  const meanGapMs = 3_600_000 / o.jobsPerHour;
  let t = 0;
  for (;;) {
    t += -Math.log(1 - random()) * meanGapMs;
    if (t >= o.hours * 3_600_000) break;
    const durationMs = Math.round(Math.min(o.maxMs, Math.max(o.minMs, o.medianMs * Math.exp(o.sigma * normal(random)))));
    let r = random();
    let slots = o.slotMix[o.slotMix.length - 1].slots;
    for (const m of o.slotMix) {
      if (r < m.p) {
        slots = m.slots;
        break;
      }
      r -= m.p;
    }
    jobs.push({ id: '', arriveMs: Math.round(t), durationMs, slots });
  }
  if (o.burst) {
    for (let k = 0; k < o.burst.jobs; k++) {
      const durationMs = Math.round(Math.min(o.maxMs, Math.max(o.minMs, o.medianMs * Math.exp(o.sigma * normal(random)))));
      jobs.push({ id: '', arriveMs: o.burst.atMs, durationMs, slots: o.burst.slots });
    }
  }
  // Stable sort: the burst goes after Poisson arrivals of the same millisecond; ids follow arrival order.
  return jobs.sort((a, b) => a.arriveMs - b.arriveMs).map((j, i) => ({ ...j, id: `job-${String(i + 1).padStart(5, '0')}` }));
}
