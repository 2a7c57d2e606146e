// Human-readable numbers for log lines and CLI tables.

/** "1.2 GiB", "532 B" (binary units). */
export function formatBytes(n: number): string {
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  if (n < 1024) return `${n} B`;
  let v = n;
  let unit = 'B';
  for (const u of units) {
    if (v < 1024) break;
    v /= 1024;
    unit = u;
  }
  return `${v.toFixed(1)} ${unit}`;
}

/** "1,234". */
export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/** "85.3 MB/s" (decimal megabytes, like most throughput figures). */
export function formatRate(bytes: number, ms: number): string {
  const perSecond = ms > 0 ? (bytes * 1000) / ms : 0;
  return `${(perSecond / 1e6).toFixed(1)} MB/s`;
}
