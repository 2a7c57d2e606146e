// Log sequence numbers of one allocation that survive an agent restart (design: the comment at the
// top of manager.ts). A container line's sequence is its position in the container's output plus
// the number of agent lines emitted before it; agent lines' positions are persisted before they
// are sent, so a restarted agent that replays the container's output from its first line gives
// every container line the sequence it had before.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { LogLine } from '../../common/types';
import type { RuntimeLogLine } from './runtime';

/** What an earlier run of the agent left of an allocation's numbering. */
export interface LogSequenceState {
  /** For each agent line, in order: how many container lines came before it. */
  agentPositions: number[];
  /** Container lines the earlier run numbered (an upper bound); undefined when unknown. */
  numbered: number | undefined;
  /** Highest sequence the earlier run handed to a stream (a lower bound). */
  sent: number;
}

/** Where a LogSequencer records what a restarted agent needs; every write is synchronous. */
export interface LogSequenceStore {
  /** Records an agent line's position; called before the line is handed on. */
  appendAgentPosition(position: number): void;
  /** Records how many container lines were numbered and the highest sequence sent. */
  writeCounters(numbered: number, sent: number): void;
  close(): void;
}

/** Numbers an allocation's log lines; see the file comment. */
export class LogSequencer {
  private containerLines = 0;
  /** Agent positions before the next container line (a cursor into `positions`). */
  private before = 0;
  private readonly positions: number[];
  /** While fewer container lines than this have been replayed, new agent lines wait in `held`. */
  private holdUntil: number;
  /** The earlier count is unknown: hold agent lines until endReplay(). */
  private holdToEnd: boolean;
  private held: RuntimeLogLine[] = [];
  private store: LogSequenceStore | undefined;
  private sentSeq: number;

  /** A fresh numbering, or the continuation of an earlier agent run's. */
  constructor(restored?: LogSequenceState) {
    this.positions = [...(restored?.agentPositions ?? [])];
    const lastPosition = this.positions.length > 0 ? this.positions[this.positions.length - 1] : 0;
    this.holdUntil = Math.max(restored?.numbered ?? 0, lastPosition);
    this.holdToEnd = restored !== undefined && restored.numbered === undefined;
    this.sentSeq = restored?.sent ?? 0;
  }

  /** Highest sequence handed to a stream (what Register reports). */
  get sent(): number {
    return this.sentSeq;
  }

  /** Agent lines held back until the replay of an adopted container's output catches up. */
  get heldLines(): number {
    return this.held.length;
  }

  /** Starts recording into `store`, which already holds the agent positions so far. */
  persistTo(store: LogSequenceStore): void {
    this.store = store;
    this.writeCounters();
  }

  /** Agent positions so far (to initialize a store). */
  agentPositions(): number[] {
    return [...this.positions];
  }

  /** Numbers lines in the order given; agent lines may be held back (see holdUntil). */
  number(lines: RuntimeLogLine[]): LogLine[] {
    const out: LogLine[] = [];
    for (const l of lines) {
      if (l.stream === 'agent') {
        if (this.holding()) this.held.push(l);
        else out.push(this.agentLine(l, this.containerLines));
        continue;
      }
      this.containerLines++;
      while (this.before < this.positions.length && this.positions[this.before] < this.containerLines) this.before++;
      out.push({ ...l, sequence: this.containerLines + this.before });
      if (this.held.length > 0 && !this.holding()) out.push(...this.release(this.containerLines));
    }
    if (out.length > 0) this.writeCounters();
    return out;
  }

  /** The container's output has ended: numbers held agent lines and stops holding. */
  endReplay(): LogLine[] {
    const position = Math.max(this.containerLines, this.holdUntil);
    this.holdUntil = 0;
    this.holdToEnd = false;
    const out = this.release(position);
    if (out.length > 0) this.writeCounters();
    return out;
  }

  /** Notes (and records) that lines up to `sequence` were handed to a stream. */
  markSent(sequence: number): void {
    if (sequence <= this.sentSeq) return;
    this.sentSeq = sequence;
    this.writeCounters();
  }

  /** Records the counters one last time and closes the store. */
  close(): void {
    if (!this.store) return;
    this.writeCounters();
    this.store.close();
    this.store = undefined;
  }

  private holding(): boolean {
    return this.holdToEnd || this.containerLines < this.holdUntil;
  }

  private release(position: number): LogLine[] {
    const held = this.held;
    this.held = [];
    return held.map((l) => this.agentLine(l, position));
  }

  // Every earlier position is <= position, so the line's sequence is its position plus the agent lines so far.
  private agentLine(l: RuntimeLogLine, position: number): LogLine {
    this.positions.push(position);
    this.store?.appendAgentPosition(position);
    return { ...l, sequence: position + this.positions.length };
  }

  private writeCounters(): void {
    const last = this.positions.length > 0 ? this.positions[this.positions.length - 1] : 0;
    this.store?.writeCounters(Math.max(this.containerLines, this.holdUntil, last), this.sentSeq);
  }
}

/** File names of the numbering state inside an allocation's directory. */
export const LOG_STATE_FILES = { agentLines: 'log-agent-lines', counters: 'log-counters' } as const;

// Fixed width, written in place: a reader sees the old or the new record, never a truncated one.
const COUNTERS_WIDTH = 48;

/** Keeps the numbering state in two small files of the allocation's directory. */
export class FileLogSequenceStore implements LogSequenceStore {
  private failed = false;

  private constructor(
    private readonly positionsFd: number,
    private readonly countersFd: number,
    private readonly onError: (err: unknown) => void,
  ) {}

  /** Creates the files in `dir` (replacing earlier ones unless `resume`), holding `positions` so far. */
  static open(dir: string, positions: number[], resume: boolean, onError: (err: unknown) => void): FileLogSequenceStore {
    const positionsFd = fs.openSync(path.join(dir, LOG_STATE_FILES.agentLines), resume ? 'a' : 'w', 0o600);
    let countersFd: number;
    try {
      if (!resume && positions.length > 0) fs.writeSync(positionsFd, positions.map((p) => `${p}\n`).join(''));
      const counters = path.join(dir, LOG_STATE_FILES.counters);
      countersFd = resume && fs.existsSync(counters) ? fs.openSync(counters, 'r+') : fs.openSync(counters, 'w', 0o600);
    } catch (err) {
      fs.closeSync(positionsFd);
      throw err;
    }
    return new FileLogSequenceStore(positionsFd, countersFd, onError);
  }

  /** Reads the state an earlier agent run left in `dir`; undefined when there is none. */
  static read(dir: string): LogSequenceState | undefined {
    let positionsText: string;
    try {
      positionsText = fs.readFileSync(path.join(dir, LOG_STATE_FILES.agentLines), 'utf8');
    } catch {
      return undefined;
    }
    const agentPositions: number[] = [];
    for (const line of positionsText.split('\n')) {
      if (line === '') continue;
      const n = Number(line);
      if (!Number.isSafeInteger(n) || n < 0 || (agentPositions.length > 0 && n < agentPositions[agentPositions.length - 1])) return undefined;
      agentPositions.push(n);
    }
    let numbered: number | undefined;
    let sent = 0;
    try {
      const [a, b] = fs.readFileSync(path.join(dir, LOG_STATE_FILES.counters), 'utf8').trim().split(/\s+/).map(Number);
      if (Number.isSafeInteger(a) && a >= 0 && Number.isSafeInteger(b) && b >= 0) {
        numbered = a;
        sent = b;
      }
    } catch {
      // Unknown: the sequencer holds agent lines until the replay ends.
    }
    return { agentPositions, numbered, sent };
  }

  appendAgentPosition(position: number): void {
    this.write(() => fs.writeSync(this.positionsFd, `${position}\n`));
  }

  writeCounters(numbered: number, sent: number): void {
    this.write(() => fs.writeSync(this.countersFd, `${numbered} ${sent}`.padEnd(COUNTERS_WIDTH - 1) + '\n', 0));
  }

  close(): void {
    for (const fd of [this.positionsFd, this.countersFd]) {
      try {
        fs.closeSync(fd);
      } catch {
        // Already closed.
      }
    }
  }

  // A failed write (disk full) costs exact numbering after a restart, not the run: report it once.
  private write(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (!this.failed) this.onError(err);
      this.failed = true;
    }
  }
}
