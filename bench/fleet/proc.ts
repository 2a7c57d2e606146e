// Reads a process's CPU time and resident memory from /proc (Linux only), the way `top` does.
import * as fs from 'node:fs';

/** Kernel clock ticks per second for /proc/<pid>/stat times (USER_HZ; 100 on every mainstream Linux). */
export const CLOCK_TICKS_PER_S = 100;

/**
 * utime + stime in clock ticks from the text of /proc/<pid>/stat. The command name (field 2) may
 * hold spaces and parentheses, so fields are counted after its closing parenthesis. Pure.
 */
export function parseStatCpuTicks(stat: string): number {
  const close = stat.lastIndexOf(')');
  if (close < 0) throw new Error(`cannot parse /proc stat: no ')' in ${JSON.stringify(stat.slice(0, 80))}`);
  // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
  const rest = stat.slice(close + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`cannot parse utime/stime in /proc stat: ${JSON.stringify(stat.slice(0, 200))}`);
  return utime + stime;
}

/** VmRSS in KiB from the text of /proc/<pid>/status. Pure. */
export function parseVmRssKib(status: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!m) throw new Error('no VmRSS line in /proc status (has the process exited?)');
  return Number(m[1]);
}

/** CPU seconds (user + system) the process has used so far. */
export function cpuSeconds(pid: number): number {
  return parseStatCpuTicks(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')) / CLOCK_TICKS_PER_S;
}

/** Resident set size in MiB. */
export function rssMib(pid: number): number {
  return parseVmRssKib(fs.readFileSync(`/proc/${pid}/status`, 'utf8')) / 1024;
}

/** A CPU-time reading at a wall-clock instant. */
export interface CpuMark {
  cpuS: number;
  wallMs: number;
}

/** Marks the process's CPU time now. */
export function cpuMark(pid: number): CpuMark {
  return { cpuS: cpuSeconds(pid), wallMs: performance.now() };
}

/** CPU used between two marks as a fraction of one core (1.0 = one core fully busy). */
export function cpuFraction(from: CpuMark, to: CpuMark): number {
  const wallS = (to.wallMs - from.wallMs) / 1000;
  return wallS > 0 ? (to.cpuS - from.cpuS) / wallS : 0;
}

/** Whether /proc can be read for this process (i.e. we are on Linux). */
export function procAvailable(): boolean {
  return fs.existsSync(`/proc/${process.pid}/stat`);
}
