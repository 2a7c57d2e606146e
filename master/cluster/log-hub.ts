// Fan-out of newly stored trial log lines to TrialLogs followers.
import { EventEmitter } from 'node:events';
import type { TrialLogRecord } from '../store/store';

/** What a follower hears about a trial. */
export type TrialLogEvent = { type: 'logs'; records: TrialLogRecord[] } | { type: 'end' };

/** Publishes per-trial log events; listeners are removed by the returned function. */
export class LogHub {
  private readonly emitter = new EventEmitter();
  constructor() {
    this.emitter.setMaxListeners(0);
  }
  /** Subscribes to one trial; returns the unsubscribe function. */
  subscribe(trialId: number, listener: (e: TrialLogEvent) => void): () => void {
    const key = String(trialId);
    this.emitter.on(key, listener);
    return () => this.emitter.off(key, listener);
  }
  /** Announces newly stored lines. */
  publish(trialId: number, records: TrialLogRecord[]): void {
    if (records.length > 0) this.emitter.emit(String(trialId), { type: 'logs', records });
  }
  /** Announces that a trial reached a terminal state (no more lines will come). */
  end(trialId: number): void {
    this.emitter.emit(String(trialId), { type: 'end' });
  }
}
