// Summarises a V8 .cpuprofile (node --cpu-prof) over a time window: self time by function and by
// package, so the benchmark can say where the master's CPU goes at steady state.
import * as fs from 'node:fs';
import * as path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
/** The parts of a .cpuprofile we read. */
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Self time of one entry, in ms and as a share of the window's non-idle samples. */
export interface HotSpot {
  name: string;
  ms: number;
  share: number;
}

/** Profile summary. */
export interface ProfileSummary {
  /** Sampled time in the window, idle excluded. */
  busyMs: number;
  idleMs: number;
  functions: HotSpot[];
  packages: HotSpot[];
}

/** Where a frame's code lives: a node_modules package, node internals, the repo's own top folder, or V8. Pure. */
export function packageOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return 'node internals';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const parts = url.slice(nm + '/node_modules/'.length).split('/');
    return parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0];
  }
  const dist = url.indexOf('/dist/');
  if (dist >= 0) return url.slice(dist + '/dist/'.length).split('/').slice(0, 2).join('/');
  return url;
}

/**
 * Self time by function and package for samples whose time, relative to the profile start, lies in
 * [fromMs, toMs). Pure.
 */
export function summarizeProfile(p: CpuProfile, fromMs: number, toMs: number, top = 15): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
  const fns = new Map<string, number>();
  const pkgs = new Map<string, number>();
  let t = 0;
  let busyUs = 0;
  let idleUs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i];
    // Each sample stands for the time until the next one.
    const dt = p.timeDeltas[i + 1] ?? 0;
    if (t / 1000 < fromMs || t / 1000 >= toMs) continue;
    const f = byId.get(p.samples[i]);
    if (!f) continue;
    if (f.functionName === '(idle)') {
      idleUs += dt;
      continue;
    }
    busyUs += dt;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    const fn = `${f.functionName || '(anonymous)'}${where ? ` ${where}` : ''} [${packageOf(f.url, f.functionName)}]`;
    fns.set(fn, (fns.get(fn) ?? 0) + dt);
    const pkg = packageOf(f.url, f.functionName);
    pkgs.set(pkg, (pkgs.get(pkg) ?? 0) + dt);
  }
  const rank = (m: Map<string, number>): HotSpot[] =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, us]) => ({ name, ms: us / 1000, share: busyUs > 0 ? us / busyUs : 0 }));
  return { busyMs: busyUs / 1000, idleMs: idleUs / 1000, functions: rank(fns), packages: rank(pkgs) };
}

/** The newest .cpuprofile in `dir`. */
export function readNewestProfile(dir: string): { file: string; profile: CpuProfile } {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(dir, f));
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}: did the master exit cleanly?`);
  const file = files.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
  return { file, profile: JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile };
}
