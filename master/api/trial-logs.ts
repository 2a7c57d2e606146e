// TrialLogs: stored history first, then (with follow) live lines until the trial ends.
import type * as grpc from '@grpc/grpc-js';
import type { TrialLogsRequest__Output } from '../../common/proto-gen/determined/api/v1/TrialLogsRequest';
import type { TrialLogsResponse } from '../../common/proto-gen/determined/api/v1/TrialLogsResponse';
import { DetError } from '../../common/errors';
import type { Cluster } from '../cluster/cluster';
import type { TrialLogEvent } from '../cluster/log-hub';
import type { TrialLogRecord } from '../store/store';
import { trialLogToProto } from './convert';
import { toServiceError } from './errors';

const PAGE = 1000;

type LogsCall = grpc.ServerWritableStream<TrialLogsRequest__Output, TrialLogsResponse>;

/** Serves one TrialLogs call. */
export async function serveTrialLogs(call: LogsCall, cluster: Cluster): Promise<void> {
  const { trialId, follow, tail } = call.request;
  // Subscribe before reading history so nothing slips between the two.
  const live: TrialLogEvent[] = [];
  let wake: (() => void) | undefined;
  const unsubscribe = cluster.logs.subscribe(trialId, (e) => {
    live.push(e);
    wake?.();
  });
  let cancelled = false;
  call.on('cancelled', () => {
    cancelled = true;
    wake?.();
  });
  try {
    const trial = await cluster.store.getTrial(trialId);
    if (!trial) throw new DetError('DET_ERR_TRIAL_NOT_FOUND', `trial ${trialId} not found`);
    let last = call.request.afterSequence;
    if (tail > 0 && last === 0) last = Math.max(0, (await cluster.store.lastTrialLogSequence(trialId)) - tail);
    const drainStore = async () => {
      for (;;) {
        const page = await cluster.store.trialLogs(trialId, last, PAGE);
        if (page.length === 0 || cancelled) return;
        await write(call, page);
        last = page[page.length - 1].sequence;
      }
    };
    await drainStore();
    while (follow && !cancelled) {
      let ended = false;
      for (const e of live.splice(0)) {
        if (e.type === 'end') ended = true;
        else {
          const fresh = e.records.filter((r) => r.sequence > last);
          if (fresh.length > 0) {
            await write(call, fresh);
            last = fresh[fresh.length - 1].sequence;
          }
        }
      }
      if (ended) break;
      if (!cluster.isLive(trialId)) {
        // It ended before or while we read history: whatever is left is stored.
        await drainStore();
        break;
      }
      if (live.length === 0 && !cancelled) await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
    call.end();
  } catch (err) {
    call.emit('error', toServiceError(err));
  } finally {
    unsubscribe();
  }
}

/** Writes a batch; waits for 'drain' when the client is slow, but never past the call's end. */
function write(call: LogsCall, records: TrialLogRecord[]): Promise<void> {
  return new Promise((resolve) => {
    if (call.destroyed || call.cancelled) return resolve();
    if (call.write({ logs: records.map(trialLogToProto) })) return resolve();
    const done = () => {
      for (const ev of ['drain', 'close', 'cancelled', 'error'] as const) call.off(ev, done);
      resolve();
    };
    for (const ev of ['drain', 'close', 'cancelled', 'error'] as const) call.once(ev, done);
  });
}
