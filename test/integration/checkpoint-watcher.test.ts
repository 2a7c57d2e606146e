// CheckpointWatcher against real directories and real fs.watch.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { DetError } from '../../common/errors';
import { createLogger } from '../../common/log';
import { COMPLETE_MARKER } from '../../agent/checkpoints/contract';
import { CheckpointWatcher, type CheckpointWatcherOptions } from '../../agent/checkpoints/watcher';
import { waitFor } from '../support/env';

const HOUR = 3_600_000;
const FAST_RETRY = { baseMs: 1, maxMs: 5, jitter: 0 };

describe('CheckpointWatcher', () => {
  let root: string;
  let lines: string[];
  let watchers: CheckpointWatcher[];
  const log = () => createLogger('ckpt-test', { level: 'debug', sink: (l) => lines.push(l) });

  function make(o: Partial<CheckpointWatcherOptions> & Pick<CheckpointWatcherOptions, 'onComplete'>): CheckpointWatcher {
    const w = new CheckpointWatcher({ root, log: log(), backoff: FAST_RETRY, ...o });
    watchers.push(w);
    return w;
  }
  async function writeCheckpoint(name: string, complete: boolean): Promise<void> {
    await fs.mkdir(path.join(root, name), { recursive: true });
    await fs.writeFile(path.join(root, name, 'weights.bin'), `weights of ${name}`);
    if (complete) await fs.writeFile(path.join(root, name, COMPLETE_MARKER), '');
  }
  const complete = (name: string) => fs.writeFile(path.join(root, name, COMPLETE_MARKER), '');

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'det-ckpt-watch-'));
    lines = [];
    watchers = [];
  });
  afterEach(async () => {
    for (const w of watchers) await w.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it('hands over a checkpoint once, only after its marker is written', async () => {
    const handed: string[] = [];
    const w = make({ onComplete: async (dir, name) => void handed.push(`${name}@${dir}`) });
    w.start();
    await writeCheckpoint('step-1', false);
    await w.flush();
    assert.deepEqual(handed, [], 'a checkpoint without marker must not be handed over');
    await complete('step-1');
    await waitFor(() => handed.length === 1, { what: 'step-1 to be handed over after its marker' });
    await w.flush();
    await fs.writeFile(path.join(root, 'step-1', 'late'), 'touch'); // more events on a handled checkpoint
    await w.flush();
    assert.deepEqual(handed, [`step-1@${path.join(root, 'step-1')}`]);
  });

  it('hands several checkpoints over one at a time, in completion order', async () => {
    const handed: string[] = [];
    let active = 0;
    let maxActive = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const w = make({
      onComplete: async (_dir, name) => {
        active++;
        maxActive = Math.max(maxActive, active);
        if (name === 'zeta') await gate;
        handed.push(name);
        active--;
      },
    });
    w.start();
    await writeCheckpoint('zeta', true);
    await waitFor(() => active === 1, { what: 'zeta to be in onComplete' });
    for (const name of ['mid', 'alpha']) {
      await writeCheckpoint(name, true);
      // The scan that sees it must have queued it before the next one completes.
      await w.scan();
    }
    release();
    await w.flush();
    assert.deepEqual(handed, ['zeta', 'mid', 'alpha']);
    assert.equal(maxActive, 1);
  });

  it('orders checkpoints found in one scan by marker time, not by name', async () => {
    const handed: string[] = [];
    const w = make({ watch: false, rescanIntervalMs: HOUR, onComplete: async (_d, name) => void handed.push(name) });
    const t0 = Date.now() / 1000 - 100;
    for (const [i, name] of ['c', 'a', 'b'].entries()) {
      await writeCheckpoint(name, true);
      await fs.utimes(path.join(root, name, COMPLETE_MARKER), t0 + i, t0 + i);
    }
    w.start();
    await w.flush();
    assert.deepEqual(handed, ['c', 'a', 'b']);
  });

  it('flush() picks up a checkpoint that fs.watch never reported', async () => {
    const handed: string[] = [];
    const w = make({ watch: false, rescanIntervalMs: HOUR, onComplete: async (_d, name) => void handed.push(name) });
    w.start();
    await w.flush(); // initial scan done, nothing there
    await writeCheckpoint('just-before-exit', true);
    assert.deepEqual(handed, []);
    await w.flush();
    assert.deepEqual(handed, ['just-before-exit']);
  });

  it('the periodic rescan finds checkpoints without fs.watch', async () => {
    const handed: string[] = [];
    const w = make({ watch: false, rescanIntervalMs: 20, onComplete: async (_d, name) => void handed.push(name) });
    w.start();
    await writeCheckpoint('found-by-rescan', true);
    await waitFor(() => handed.length === 1, { what: 'the rescan to find the checkpoint' });
    assert.deepEqual(handed, ['found-by-rescan']);
  });

  it('retries a failing onComplete with backoff and hands the checkpoint over once', async () => {
    let calls = 0;
    const failed: string[] = [];
    const handed: string[] = [];
    const w = make({
      maxAttempts: 5,
      onFailed: (_d, name) => failed.push(name),
      onComplete: async (_d, name) => {
        calls++;
        if (calls <= 2) throw new Error(`S3 unavailable (call ${calls})`);
        handed.push(name);
      },
    });
    w.start();
    await writeCheckpoint('flaky', true);
    await w.flush();
    assert.equal(calls, 3);
    assert.deepEqual(handed, ['flaky']);
    assert.deepEqual(failed, []);
    assert.equal(lines.filter((l) => l.includes('retrying')).length, 2);
  });

  it('reports a checkpoint to onFailed once retries are exhausted, and keeps going', async () => {
    const failed: { name: string; err: unknown }[] = [];
    const handed: string[] = [];
    let calls = 0;
    const w = make({
      maxAttempts: 3,
      onFailed: (_d, name, err) => failed.push({ name, err }),
      onComplete: async (_d, name) => {
        if (name === 'broken') {
          calls++;
          throw new Error('bucket does not exist');
        }
        handed.push(name);
      },
    });
    w.start();
    await writeCheckpoint('broken', true);
    await w.flush();
    await writeCheckpoint('next', true);
    await w.flush();
    assert.equal(calls, 3);
    assert.deepEqual(failed.map((f) => f.name), ['broken']);
    assert.match(String((failed[0].err as Error).message), /bucket does not exist/);
    assert.deepEqual(handed, ['next']);
  });

  it('ignores reserved and invalid names, logging each once', async () => {
    const handed: string[] = [];
    const w = make({ watch: false, rescanIntervalMs: HOUR, onComplete: async (_d, name) => void handed.push(name) });
    await writeCheckpoint('bad name', true);
    await writeCheckpoint('.det-tmp', true);
    await fs.writeFile(path.join(root, 'stray-file'), 'x');
    await writeCheckpoint('good', true);
    w.start();
    await w.flush();
    await w.flush();
    assert.deepEqual(handed, ['good']);
    assert.equal(lines.filter((l) => l.includes('invalid name') && l.includes('bad name')).length, 1);
    assert.equal(lines.filter((l) => l.includes('invalid name') && l.includes('.det-tmp')).length, 1);
    assert.equal(lines.filter((l) => l.includes('not a directory') && l.includes('stray-file')).length, 1);
  });

  it('stop() ends timers and watchers, and is harmless twice', async () => {
    const count = () => {
      const r = process.getActiveResourcesInfo();
      return { timers: r.filter((x) => x === 'Timeout').length, watches: r.filter((x) => x === 'FSEventWrap').length };
    };
    const w = make({ rescanIntervalMs: 50, onComplete: async () => undefined });
    await writeCheckpoint('in-progress', false);
    const before = count(); // after an await, so mocha's own timer is counted too
    w.start();
    await w.flush();
    const running = count();
    assert.equal(running.timers, before.timers + 1, 'the rescan timer runs');
    assert.equal(running.watches, before.watches + 2, 'the root and the in-progress checkpoint are watched');
    await w.stop();
    await w.stop();
    assert.equal(w.state, 'stopped');
    assert.equal(count().timers, before.timers, 'the rescan timer is cleared');
    // A closed fs.watch handle is released on a later turn of the event loop.
    await waitFor(() => count().watches === before.watches, { what: 'fs.watch handles to be released' });
    await assert.rejects(w.flush(), (e: unknown) => e instanceof DetError && e.code === 'DET_ERR_SHUTTING_DOWN');
    assert.throws(() => w.start(), /stopped/);
  });

  it('stop() aborts in-flight and queued checkpoints and reports them to onFailed', async () => {
    const failed: string[] = [];
    let started = 0;
    const w = make({
      watch: false,
      rescanIntervalMs: HOUR,
      onFailed: (_d, name, err) => failed.push(`${name}:${(err as DetError).code}`),
      onComplete: (_d, _name, signal) =>
        new Promise<void>((_resolve, reject) => {
          started++;
          signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        }),
    });
    await writeCheckpoint('first', true);
    await fs.utimes(path.join(root, 'first', COMPLETE_MARKER), 1000, 1000);
    await writeCheckpoint('second', true);
    w.start();
    await waitFor(() => started === 1, { what: 'the first checkpoint to be in onComplete' });
    await w.scan();
    await w.stop();
    assert.deepEqual(failed.sort(), ['first:DET_ERR_SHUTTING_DOWN', 'second:DET_ERR_SHUTTING_DOWN']);
    assert.equal(started, 1);
  });
});
