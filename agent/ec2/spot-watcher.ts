// Watches IMDS for a spot interruption notice (EC2 gives about two minutes and
// recommends polling every 5 s). The first notice is reported once; the agent
// forwards it to the master so it can stop scheduling here and reschedule.
import { sleep } from '../../common/abort';
import { errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { AgentToMaster } from '../../common/types';
import type { Outbox } from '../session/outbox';
import type { InstanceMetadata, SpotInstanceAction } from './imds';

/** Poll interval AWS recommends. */
export const DEFAULT_SPOT_POLL_INTERVAL_MS = 5_000;

/** At most one log line about failing polls per this interval. */
export const DEFAULT_SPOT_ERROR_LOG_INTERVAL_MS = 60_000;

/** Options of the spot watcher. */
export interface SpotWatcherOptions {
  imds: Pick<InstanceMetadata, 'spotInstanceAction'>;
  /** Called once, with the first notice seen. */
  onNotice: (notice: SpotInstanceAction) => void;
  log: Logger;
  /** Stops polling when aborted (the agent's root signal). */
  signal: AbortSignal;
  /** Pause between polls (default 5 s). */
  intervalMs?: number;
  /** Minimum time between log lines about failed polls (default 60 s). */
  errorLogIntervalMs?: number;
  /** Clock for the log rate limit (default Date.now). */
  now?: () => number;
}

/** The message the agent sends the master about a notice. */
export function spotInterruptionMessage(notice: SpotInstanceAction): AgentToMaster {
  return { kind: 'spotInterruption', action: notice.action, actionTimeMs: notice.timeMs };
}

/**
 * Polls until the first notice (reported once, then the watcher ends) or until
 * the signal aborts. Never rejects: failed polls are logged (rate-limited) and
 * polling goes on.
 */
export async function watchSpotInterruption(opts: SpotWatcherOptions): Promise<SpotInstanceAction | undefined> {
  const { imds, log, signal } = opts;
  const intervalMs = opts.intervalMs ?? DEFAULT_SPOT_POLL_INTERVAL_MS;
  const errorLogIntervalMs = opts.errorLogIntervalMs ?? DEFAULT_SPOT_ERROR_LOG_INTERVAL_MS;
  const now = opts.now ?? Date.now;
  let lastErrorLogMs = -Infinity;
  let suppressed = 0;
  let failing = false;
  while (!signal.aborted) {
    try {
      const notice = await imds.spotInstanceAction(signal);
      if (failing) log.info('spot interruption check works again');
      failing = false;
      if (notice) {
        try {
          opts.onNotice(notice);
        } catch (err) {
          log.error('handling the spot interruption notice failed', { error: errorMessage(err) });
        }
        return notice;
      }
    } catch (err) {
      if (signal.aborted) break;
      failing = true;
      if (now() - lastErrorLogMs >= errorLogIntervalMs) {
        log.warn('cannot check for a spot interruption notice; will keep trying', { error: errorMessage(err), suppressed: suppressed || undefined });
        lastErrorLogMs = now();
        suppressed = 0;
      } else {
        suppressed++;
      }
    }
    try {
      await sleep(intervalMs, signal);
    } catch {
      break; // aborted
    }
  }
  return undefined;
}

/**
 * What det-agent runs with --config-source ec2: watches for a notice, logs it
 * and sends it to the master through the outbox (queued while disconnected).
 */
export function forwardSpotInterruption(
  opts: Omit<SpotWatcherOptions, 'onNotice'> & { outbox: Pick<Outbox, 'send'>; onNotice?: (notice: SpotInstanceAction) => void },
): Promise<SpotInstanceAction | undefined> {
  const { outbox, log, onNotice, ...rest } = opts;
  return watchSpotInterruption({
    ...rest,
    log,
    onNotice: (notice) => {
      log.warn(`spot interruption notice: EC2 will ${notice.action} this instance at ${new Date(notice.timeMs).toISOString()}; telling the master`, { action: notice.action });
      void outbox.send(spotInterruptionMessage(notice));
      // e.g. upload pending checkpoints now, before the instance goes away
      onNotice?.(notice);
    },
  });
}
