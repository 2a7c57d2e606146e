// Progress lines of a data sync, as they appear in the trial's logs: one start line, a progress
// line at most every `intervalMs` while bytes arrive, and a summary. The clock is injectable.

import { formatBytes, formatCount, formatRate } from '../../common/format';

export { formatBytes, formatCount, formatRate };

/** The start line of one input. */
export function startLine(source: string, target: string, objects: number, bytes: number, cached: number): string {
  return `syncing ${source} -> ${target}: ${formatCount(objects)} objects, ${formatBytes(bytes)} (${formatCount(cached)} cached)`;
}

/** The line for a source with no objects. */
export function emptyLine(source: string, target: string): string {
  return `no objects under ${source}: ${target} will be an empty directory`;
}

/** Figures of a finished sync for the summary line. */
export interface SyncSummary {
  objects: number;
  bytes: number;
  downloadedObjects: number;
  downloadedBytes: number;
  reusedObjects: number;
  elapsedMs: number;
}

/** The summary line of one input. */
export function summaryLine(source: string, target: string, s: SyncSummary): string {
  const seconds = (s.elapsedMs / 1000).toFixed(1);
  const downloaded =
    s.downloadedObjects > 0
      ? `${formatCount(s.downloadedObjects)} downloaded, ${formatBytes(s.downloadedBytes)} at ${formatRate(s.downloadedBytes, s.elapsedMs)}`
      : '0 downloaded';
  return `synced ${source} -> ${target}: ${formatCount(s.objects)} objects, ${formatBytes(s.bytes)} in ${seconds} s (${downloaded}; ${formatCount(s.reusedObjects)} reused)`;
}

/** Options of a SyncProgress. */
export interface SyncProgressOptions {
  source: string;
  /** Objects and bytes this sync has to download (cached ones excluded). */
  totalObjects: number;
  totalBytes: number;
  emit: (line: string) => void;
  /** Least time between two progress lines (default 2000 ms). */
  intervalMs?: number;
  now?: () => number;
}

/** Counts downloaded bytes and objects and emits throttled progress lines. */
export class SyncProgress {
  private bytes = 0;
  private objects = 0;
  private readonly started: number;
  private lastLine: number;
  private readonly intervalMs: number;
  private readonly now: () => number;

  constructor(private readonly opts: SyncProgressOptions) {
    this.now = opts.now ?? Date.now;
    this.intervalMs = opts.intervalMs ?? 2000;
    this.started = this.now();
    this.lastLine = this.started;
  }

  /** Bytes arrived (negative when a failed attempt's bytes are taken back). */
  addBytes(n: number): void {
    this.bytes += n;
    this.maybeEmit();
  }

  /** One object finished downloading. */
  objectDone(): void {
    this.objects++;
    this.maybeEmit();
  }

  /** The current progress line. */
  line(): string {
    const { totalBytes, totalObjects, source } = this.opts;
    const pct = totalBytes > 0 ? Math.min(100, Math.floor((this.bytes * 100) / totalBytes)) : 100;
    return (
      `syncing ${source}: ${pct}% (${formatBytes(this.bytes)} of ${formatBytes(totalBytes)}, ` +
      `${formatCount(this.objects)} of ${formatCount(totalObjects)} objects) at ${formatRate(this.bytes, this.now() - this.started)}`
    );
  }

  private maybeEmit(): void {
    const t = this.now();
    if (t - this.lastLine < this.intervalMs) return;
    this.lastLine = t;
    this.opts.emit(this.line());
  }
}
