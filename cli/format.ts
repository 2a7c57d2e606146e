// Human output: aligned tables, "Key: value" blocks, times, durations and
// state names without their enum prefix. Pure functions, no dependencies.

/** A table cell; null/undefined print as empty. */
export type Cell = string | number | boolean | null | undefined;

function cellText(cell: Cell): string {
  if (cell === null || cell === undefined) return '';
  return String(cell).replace(/\s*\n\s*/g, ' ');
}

/**
 * A column-aligned table in Determined's style (" a | b" over "---+---").
 * Columns holding only numbers are right-aligned. No trailing newline.
 */
export function table(headers: string[], rows: Cell[][]): string {
  const texts = rows.map((row) => headers.map((_, i) => cellText(row[i])));
  const widths = headers.map((h, i) => Math.max(h.length, ...texts.map((r) => r[i].length)));
  const numeric = headers.map((_, i) => rows.length > 0 && rows.every((r) => r[i] === null || r[i] === undefined || typeof r[i] === 'number'));
  const line = (cells: string[], align: boolean) =>
    cells
      .map((c, i) => ' ' + (align && numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i])) + ' ')
      .join('|')
      .trimEnd();
  return [line(headers, false), widths.map((w) => '-'.repeat(w + 2)).join('+'), ...texts.map((r) => line(r, true))].join('\n');
}

/** "Key: value" lines with the values aligned. No trailing newline. */
export function keyValues(pairs: [string, Cell][]): string {
  const width = Math.max(0, ...pairs.map(([k]) => k.length + 1));
  return pairs.map(([k, v]) => `${(k + ':').padEnd(width)}  ${v === null || v === undefined ? '' : String(v)}`.trimEnd()).join('\n');
}

const ENUM_PREFIX = /^(TRIAL_STATE|EXPERIMENT_STATE|AGENT_STATE|SLOT_TYPE|CHECKPOINT_STATE)_/;

/** 'TRIAL_STATE_RUNNING' -> 'RUNNING' (also for experiment/agent/checkpoint states and slot types). */
export function stateName(value: string): string {
  return value.replace(ENUM_PREFIX, '');
}

/** Compact duration: "0s", "42s", "3m 5s", "2h 10m", "4d 3h". */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** Epoch ms as ISO 8601 UTC without milliseconds; empty for 0 ("not yet"). */
export function formatTime(ms: number): string {
  return ms > 0 ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '';
}

/** "5s ago" relative to `now`; "never" for 0. */
export function formatAgo(ms: number, now: number): string {
  return ms > 0 ? `${formatDuration(now - ms)} ago` : 'never';
}

/** Device memory: "512 MiB", "141.0 GiB"; empty for 0 (unknown). */
export function formatMemory(mib: number): string {
  if (!mib) return '';
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${mib} MiB`;
}

/** Slot counts by type: "8 cuda", "2 cpu", "1 cpu, 2 cuda"; "0" for none. */
export function slotSummary(types: string[]): string {
  if (types.length === 0) return '0';
  const counts = new Map<string, number>();
  for (const t of types) counts.set(stateName(t).toLowerCase(), (counts.get(stateName(t).toLowerCase()) ?? 0) + 1);
  return [...counts.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([t, n]) => `${n} ${t}`)
    .join(', ');
}

/** Trial counts per state: "2 COMPLETED, 1 RUNNING" (states sorted by name). */
export function stateCounts(counts: Record<string, number>): string {
  return Object.entries(counts)
    .filter(([, n]) => n > 0)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([s, n]) => `${n} ${stateName(s)}`)
    .join(', ');
}
