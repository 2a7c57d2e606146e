// Heartbeat timing, set by the master and scaled with fleet size (as Nomad
// does) so a large fleet does not flood the master.

/** Interval and TTL handed to an agent on registration. */
export interface HeartbeatTiming {
  intervalMs: number;
  ttlMs: number;
}

/** Base interval for small fleets. */
export const MIN_HEARTBEAT_INTERVAL_MS = 5_000;
/** Heartbeats per second the master budgets for the whole fleet. */
export const HEARTBEATS_PER_SECOND = 50;

/**
 * Timing for a fleet of `agents`: the interval grows once the fleet would
 * exceed the heartbeat budget; the TTL allows three missed beats plus up to
 * one interval of jitter so agents do not expire in lockstep. Pure.
 */
export function heartbeatTiming(agents: number, random: () => number = Math.random): HeartbeatTiming {
  const intervalMs = Math.max(MIN_HEARTBEAT_INTERVAL_MS, Math.ceil((agents / HEARTBEATS_PER_SECOND) * 1000));
  return { intervalMs, ttlMs: intervalMs * 3 + Math.round(random() * intervalMs) };
}
