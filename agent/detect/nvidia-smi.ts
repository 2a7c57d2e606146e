// GPU discovery through nvidia-smi's CSV query mode. The parser is pure; running the binary
// goes through a small exec port so tests can replay recorded outputs.
import { execFile } from 'node:child_process';
import type { Device } from '../../common/types';

/** The arguments the agent passes to nvidia-smi. */
export const NVIDIA_SMI_ARGS = ['--query-gpu=index,name,uuid,memory.total', '--format=csv,noheader'] as const;

/** How long nvidia-smi may run before the agent gives up on it (a wedged driver can hang it). */
export const DEFAULT_NVIDIA_SMI_TIMEOUT_MS = 10_000;

/** Outcome of running a command, normalised so callers never inspect Node's error shapes. */
export type ExecResult =
  | { kind: 'exited'; exitCode: number; stdout: string; stderr: string }
  | { kind: 'not-found'; message: string }
  | { kind: 'timed-out'; timeoutMs: number; stdout: string; stderr: string }
  | { kind: 'failed'; message: string; stdout: string; stderr: string };

/** Port that runs a command to completion; it never rejects. */
export type ExecPort = (file: string, args: readonly string[], opts: { timeoutMs: number }) => Promise<ExecResult>;

/** The production exec port: child_process.execFile with a timeout, mapped to ExecResult. */
export const execFilePort: ExecPort = (file, args, { timeoutMs }) =>
  new Promise((resolve) => {
    execFile(
      file,
      [...args],
      { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024, encoding: 'utf8', windowsHide: true },
      (err, stdout, stderr) => {
        if (!err) return resolve({ kind: 'exited', exitCode: 0, stdout, stderr });
        const e = err as NodeJS.ErrnoException & { code?: string | number; killed?: boolean; signal?: string | null };
        if (e.code === 'ENOENT') return resolve({ kind: 'not-found', message: `${file}: not found on PATH` });
        if (e.killed && e.signal) return resolve({ kind: 'timed-out', timeoutMs, stdout, stderr });
        if (typeof e.code === 'number') return resolve({ kind: 'exited', exitCode: e.code, stdout, stderr });
        const how = e.signal ? `killed by ${e.signal}` : e.message;
        resolve({ kind: 'failed', message: how, stdout, stderr });
      },
    );
  });

// A line looks like "0, NVIDIA H200, GPU-683f45df-..., 143771 MiB" (or "143771" with nounits).
const UUID_RE = /^(GPU|MIG)-[0-9A-Za-z-]+$/;
const MEMORY_RE = /^(\d+)(?:\s*MiB)?$/;
// Fields nvidia-smi prints when a value is unknown for a device.
const UNKNOWN_VALUES = new Set(['[N/A]', '[Not Supported]', 'N/A']);

/**
 * Parses `nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader[,nounits]`.
 * Blank lines and CRLF are tolerated; a malformed line throws an Error that quotes it.
 */
export function parseNvidiaSmiCsv(text: string): Device[] {
  const devices: Device[] = [];
  const seen = new Set<number>();
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    const fail = (why: string): never => {
      throw new Error(`cannot parse nvidia-smi output line ${i + 1} ${JSON.stringify(raw)}: ${why}`);
    };
    const fields = line.split(',').map((f) => f.trim());
    if (fields.length < 4) fail(`expected 4 comma-separated fields (index, name, uuid, memory.total), got ${fields.length}`);
    // A name could in theory contain a comma: index is first, uuid and memory are last.
    const indexText = fields[0];
    const memoryText = fields[fields.length - 1];
    const uuid = fields[fields.length - 2];
    const name = fields.slice(1, -2).join(', ');
    if (!/^\d+$/.test(indexText)) fail(`index ${JSON.stringify(indexText)} is not a non-negative integer`);
    const id = Number(indexText);
    if (seen.has(id)) fail(`GPU index ${id} appears twice`);
    if (name === '') fail('GPU name is empty');
    if (!UUID_RE.test(uuid)) fail(`uuid ${JSON.stringify(uuid)} does not look like GPU-<hex> or MIG-<hex>`);
    let memoryMib = 0;
    if (!UNKNOWN_VALUES.has(memoryText)) {
      const m = MEMORY_RE.exec(memoryText);
      if (!m) fail(`memory.total ${JSON.stringify(memoryText)} is not "<n> MiB" or "<n>"`);
      memoryMib = Number(m![1]);
    }
    seen.add(id);
    devices.push({ id, brand: name, uuid, type: 'cuda', memoryMib });
  });
  return devices.sort((a, b) => a.id - b.id);
}

/** Result of GPU detection: never an exception. */
export interface GpuDetection {
  devices: Device[];
  /** Set when nvidia-smi exists but failed: the operator should look at it. */
  warning?: string;
  /** Why `devices` is empty (not installed, failed, no GPUs listed); unset when GPUs were found. */
  absentReason?: string;
}

/** Options for detectGpus. */
export interface DetectGpusOptions {
  /** Binary to run; default "nvidia-smi" (found on PATH). */
  command?: string;
  /** Default DEFAULT_NVIDIA_SMI_TIMEOUT_MS. */
  timeoutMs?: number;
}

function tail(text: string, max = 500): string {
  const t = text.trim();
  return t.length > max ? `...${t.slice(-max)}` : t;
}

/**
 * Lists the host's GPUs with nvidia-smi. Not installed → no devices, no warning; failure, timeout
 * or unparsable output → no devices plus a warning. Never throws.
 */
export async function detectGpus(exec: ExecPort = execFilePort, opts: DetectGpusOptions = {}): Promise<GpuDetection> {
  const command = opts.command ?? 'nvidia-smi';
  const timeoutMs = opts.timeoutMs ?? DEFAULT_NVIDIA_SMI_TIMEOUT_MS;
  let result: ExecResult;
  try {
    result = await exec(command, NVIDIA_SMI_ARGS, { timeoutMs });
  } catch (err) {
    // A port is not supposed to reject; treat it like a failed run anyway.
    result = { kind: 'failed', message: err instanceof Error ? err.message : String(err), stdout: '', stderr: '' };
  }
  const failed = (why: string): GpuDetection => ({
    devices: [],
    warning: `GPU detection failed, offering no GPUs: ${why}`,
    absentReason: why,
  });
  switch (result.kind) {
    case 'not-found':
      return { devices: [], absentReason: `${command} is not installed (not found on PATH)` };
    case 'timed-out':
      return failed(`${command} did not finish within ${result.timeoutMs} ms`);
    case 'failed':
      return failed(`${command} failed: ${result.message}`);
    case 'exited': {
      if (result.exitCode !== 0) {
        const output = tail(`${result.stdout}\n${result.stderr}`);
        return failed(`${command} exited with code ${result.exitCode}${output ? `: ${output}` : ''}`);
      }
      try {
        const devices = parseNvidiaSmiCsv(result.stdout);
        return devices.length > 0 ? { devices } : { devices, absentReason: `${command} listed no GPUs` };
      } catch (err) {
        return failed(err instanceof Error ? err.message : String(err));
      }
    }
  }
}
