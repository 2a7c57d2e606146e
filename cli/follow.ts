// Following trial logs: one stream per trial, resumed after the last sequence
// number when the connection drops, and an experiment follower that runs a
// stream per trial concurrently until every trial has ended.
import { sleep } from '../common/abort';
import { RECONNECT_BACKOFF, backoffDelay } from '../common/backoff';
import { DetError } from '../common/errors';
import type { GetExperimentResponse__Output } from '../common/proto-gen/determined/api/v1/GetExperimentResponse';
import type { Trial__Output } from '../common/proto-gen/determined/api/v1/Trial';
import type { TrialLog__Output } from '../common/proto-gen/determined/api/v1/TrialLog';
import type { MasterClient } from './client';
import { Interrupted } from './errors';
import { stateName } from './format';
import { isFinalExperimentState } from './views';

/** How long a followed stream keeps trying to reconnect after the master went away. */
export const RESUME_WINDOW_MS = 60_000;

/** What to stream. */
export interface LogStreamOptions {
  /** Keep streaming until the trial ends. */
  follow: boolean;
  /** Start with only the last N stored lines (0 = all). */
  tail?: number;
  /** Told once per outage that the stream is reconnecting. */
  onReconnect?: (err: Error) => void;
}

/** Lost connections and a master that is shutting down are worth a retry; the registry says which codes are. */
function isRetryable(err: unknown): boolean {
  return err instanceof DetError && err.retryable;
}

/**
 * Streams one trial's logs to `onLog` in sequence order. While following, a
 * lost connection is retried with backoff for RESUME_WINDOW_MS, asking only for
 * lines after the last one printed, so nothing is lost or repeated.
 */
export async function streamTrialLogs(
  client: MasterClient,
  trialId: number,
  options: LogStreamOptions,
  onLog: (log: TrialLog__Output) => void,
  stop?: AbortSignal,
): Promise<void> {
  let after = 0;
  let tail = options.tail ?? 0;
  let attempt = 0;
  let outageSince = 0;
  for (;;) {
    try {
      await client.trialLogs(
        { trialId, follow: options.follow, afterSequence: after, tail },
        (logs) => {
          for (const log of logs) {
            if (log.sequence <= after) continue;
            after = log.sequence;
            attempt = 0;
            outageSince = 0;
            onLog(log);
          }
        },
        stop,
      );
      return;
    } catch (err) {
      const now = Date.now();
      if (!options.follow || !isRetryable(err) || (outageSince && now - outageSince > RESUME_WINDOW_MS)) throw err;
      if (!outageSince) {
        outageSince = now;
        options.onReconnect?.(err as Error);
      }
      tail = 0;
      await pause(backoffDelay(attempt++, RECONNECT_BACKOFF), client, stop);
    }
  }
}

/** A backoff wait that ends early on Ctrl-C (Interrupted) or `stop` (its reason). */
async function pause(ms: number, client: MasterClient, stop?: AbortSignal): Promise<void> {
  const signals = [client.abortSignal, ...(stop ? [stop] : [])];
  try {
    await sleep(ms, AbortSignal.any(signals));
  } catch (err) {
    if (client.abortSignal.aborted) throw new Interrupted();
    throw err;
  }
}

/** Receives the lines of an experiment's trials. */
export type TrialLogSink = (trialId: number, log: TrialLog__Output) => void;

/**
 * Follows every trial of an experiment concurrently (one stream each) until
 * all of them have ended and the experiment reached a final state; trials that
 * appear later are followed too. A failed stream cancels the others. Returns
 * the experiment as the master describes it at the end.
 */
export async function followExperiment(
  client: MasterClient,
  experimentId: number,
  trials: Trial__Output[],
  sink: TrialLogSink,
  onReconnect?: (err: Error) => void,
): Promise<GetExperimentResponse__Output> {
  const followed = new Set<number>();
  const siblings = new AbortController();
  let warned = false;
  const reconnect = (err: Error) => {
    if (!warned) onReconnect?.(err);
    warned = true;
  };
  const follow = (batch: Trial__Output[]): Promise<void>[] =>
    batch
      .filter((t) => !followed.has(t.id))
      .map((t) => {
        followed.add(t.id);
        return streamTrialLogs(client, t.id, { follow: true, onReconnect: reconnect }, (log) => sink(t.id, log), siblings.signal).catch((err) => {
          if (!siblings.signal.aborted) siblings.abort(err);
          throw err;
        });
      });

  let running = follow(trials);
  let attempt = 0;
  for (;;) {
    const results = await Promise.allSettled(running);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const current = await client.getExperiment(experimentId);
    running = follow(current.trials);
    if (running.length > 0) continue;
    if (isFinalExperimentState(stateName(current.experiment?.state ?? ''))) return current;
    // Every stream ended but the master has not settled the experiment yet.
    await pause(backoffDelay(attempt++, { baseMs: 200, maxMs: 2_000, jitter: 0.2 }), client);
  }
}
