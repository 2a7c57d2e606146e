// LogSequencer: log sequence numbers that survive an agent restart (agent/containers/log-sequence.ts,
// design in agent/containers/manager.ts). A store in memory for the pure core; the file store on a
// real temp directory.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileLogSequenceStore, LOG_STATE_FILES, LogSequencer, type LogSequenceState, type LogSequenceStore } from '../../agent/containers/log-sequence';
import type { RuntimeLogLine } from '../../agent/containers/runtime';
import type { LogLine } from '../../common/types';

/** Lines from a compact form: "a:text" is an agent line, "e:text" stderr, anything else stdout. */
function lines(...specs: string[]): RuntimeLogLine[] {
  return specs.map((s) => {
    if (s.startsWith('a:')) return { stream: 'agent', text: s.slice(2), timestampMs: 0 };
    if (s.startsWith('e:')) return { stream: 'stderr', text: s.slice(2), timestampMs: 0 };
    return { stream: 'stdout', text: s, timestampMs: 0 };
  });
}

const show = (out: LogLine[]) => out.map((l) => `${l.sequence}:${l.text}`);

/** A store in memory, as a restarted agent would read it back. */
class MemoryStore implements LogSequenceStore {
  positions: number[] = [];
  numbered = 0;
  sent = 0;
  closed = false;
  constructor(initial: number[]) {
    this.positions = [...initial];
  }
  appendAgentPosition(position: number): void {
    this.positions.push(position);
  }
  writeCounters(numbered: number, sent: number): void {
    this.numbered = numbered;
    this.sent = sent;
  }
  close(): void {
    this.closed = true;
  }
  state(): LogSequenceState {
    return { agentPositions: [...this.positions], numbered: this.numbered, sent: this.sent };
  }
}

describe('LogSequencer', () => {
  it('numbers agent and container lines 1..n in the order given', () => {
    const s = new LogSequencer();
    assert.deepEqual(show(s.number(lines('a:pulling', 'a:pulled'))), ['1:pulling', '2:pulled']);
    assert.deepEqual(show(s.number(lines('one', 'e:two', 'a:checkpoint stored', 'three'))), ['3:one', '4:two', '5:checkpoint stored', '6:three']);
    assert.deepEqual(show(s.endReplay()), [], 'nothing held in a fresh numbering');
    assert.deepEqual(show(s.number(lines('a:after exit'))), ['7:after exit']);
  });

  it('after a restart, replayed container lines get their old sequences and new agent lines come after every old line', () => {
    const before = new LogSequencer();
    const first = before.number(lines('a:pulled'));
    // Lines numbered before the allocation's directory existed go into the store when it is attached.
    const live = new MemoryStore(before.agentPositions());
    before.persistTo(live);
    const sentBefore = [...first, ...before.number(lines('one', 'a:ckpt-1', 'two', 'three'))];
    before.markSent(sentBefore[sentBefore.length - 1].sequence);
    assert.deepEqual(show(sentBefore), ['1:pulled', '2:one', '3:ckpt-1', '4:two', '5:three']);
    assert.deepEqual(live.state(), { agentPositions: [0, 1], numbered: 3, sent: 5 });

    // SIGKILL; the container printed "four" meanwhile. The restarted agent replays from line one.
    const after = new LogSequencer(live.state());
    after.persistTo(live);
    assert.equal(after.sent, 5);
    assert.deepEqual(show(after.number(lines('a:reattached'))), [], 'held until the replay passes the old lines');
    assert.equal(after.heldLines, 1);
    assert.deepEqual(show(after.number(lines('one', 'two'))), ['2:one', '4:two']);
    assert.deepEqual(show(after.number(lines('three', 'four'))), ['5:three', '6:reattached', '7:four']);
    assert.deepEqual(show(after.number(lines('a:ckpt-2'))), ['8:ckpt-2']);
    assert.deepEqual(live.positions, [0, 1, 3, 4]);

    // And once more: a second restart numbers everything the same way again.
    const again = new LogSequencer(live.state());
    assert.deepEqual(show(again.number(lines('one', 'two', 'three', 'four'))), ['2:one', '4:two', '5:three', '7:four']);
  });

  it('an agent line emitted while the output is shorter than what was numbered before goes after it at the end', () => {
    const state: LogSequenceState = { agentPositions: [0], numbered: 5, sent: 6 };
    const s = new LogSequencer(state);
    assert.deepEqual(show(s.number(lines('a:reattached', 'one', 'two'))), ['2:one', '3:two']);
    // The output ended early (e.g. a rotated log): held lines are placed after line 5's sequence.
    assert.deepEqual(show(s.endReplay()), ['7:reattached']);
  });

  it('with the counters unknown, agent lines are held until the replay ends', () => {
    const s = new LogSequencer({ agentPositions: [0, 2], numbered: undefined, sent: 0 });
    assert.deepEqual(show(s.number(lines('a:note', 'one', 'two', 'three'))), ['2:one', '3:two', '5:three']);
    assert.equal(s.heldLines, 1);
    assert.deepEqual(show(s.endReplay()), ['6:note']);
  });
});

describe('FileLogSequenceStore (real files)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-log-seq-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('round-trips what a restarted agent needs; reopening to resume keeps it', () => {
    assert.equal(FileLogSequenceStore.read(dir), undefined, 'nothing there yet');
    const s = new LogSequencer();
    s.number(lines('a:pulling', 'a:pulled'));
    s.persistTo(FileLogSequenceStore.open(dir, s.agentPositions(), false, (err) => assert.fail(String(err))));
    const out = s.number(lines('one', 'a:ckpt', 'two'));
    s.markSent(out[out.length - 1].sequence);
    assert.deepEqual(FileLogSequenceStore.read(dir), { agentPositions: [0, 0, 1], numbered: 2, sent: 5 });
    s.close();
    assert.equal(fs.statSync(path.join(dir, LOG_STATE_FILES.counters)).mode & 0o777, 0o600);

    const resumed = new LogSequencer(FileLogSequenceStore.read(dir));
    resumed.persistTo(FileLogSequenceStore.open(dir, [], true, (err) => assert.fail(String(err))));
    assert.deepEqual(show(resumed.number(lines('one', 'two', 'three', 'a:done'))), ['3:one', '5:two', '6:three', '7:done']);
    resumed.close();
    assert.deepEqual(FileLogSequenceStore.read(dir), { agentPositions: [0, 0, 1, 3], numbered: 3, sent: 5 });
  });

  it('unreadable counters leave the positions and mark the count unknown; a broken positions file gives nothing', () => {
    fs.writeFileSync(path.join(dir, LOG_STATE_FILES.agentLines), '0\n4\n');
    fs.writeFileSync(path.join(dir, LOG_STATE_FILES.counters), 'garbage');
    assert.deepEqual(FileLogSequenceStore.read(dir), { agentPositions: [0, 4], numbered: undefined, sent: 0 });
    fs.writeFileSync(path.join(dir, LOG_STATE_FILES.agentLines), '4\n0\n');
    assert.equal(FileLogSequenceStore.read(dir), undefined, 'positions never go down');
  });
});
