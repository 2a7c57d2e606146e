// Retry delay as one pure function: exponential, capped, with full jitter.

/** Backoff settings. */
export interface BackoffOptions {
  /** Delay of the first retry before jitter. */
  baseMs: number;
  /** Upper bound of any delay. */
  maxMs: number;
  /** Fraction of the delay that is randomised (0 = none, 1 = full jitter). */
  jitter: number;
}

/** Defaults for reconnecting to the master. */
export const RECONNECT_BACKOFF: BackoffOptions = { baseMs: 250, maxMs: 15_000, jitter: 0.5 };

/**
 * Delay before retry number `attempt` (0-based): base * 2^attempt capped at max,
 * minus a random share of up to `jitter` of it. `random` is injectable for tests.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number = Math.random): number {
  const exp = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.max(0, Math.min(attempt, 30)));
  const jitter = Math.min(1, Math.max(0, opts.jitter));
  return Math.round(exp * (1 - jitter * random()));
}
