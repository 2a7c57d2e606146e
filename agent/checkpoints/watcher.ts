// Watches the host side of a trial's DET_CHECKPOINT_DIR and hands every completed checkpoint
// (marker present, see contract.ts) exactly once, in completion order, to an onComplete port.
// fs.watch is unreliable on bind mounts (events from inside a container may never arrive), so a
// periodic rescan backs it up, and flush() rescans on demand when the container exits.
import { watch as fsWatch, type FSWatcher } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { sleep } from '../../common/abort';
import { backoffDelay, type BackoffOptions } from '../../common/backoff';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import { checkpointNameProblem, COMPLETE_MARKER } from './contract';

/** Handles one completed checkpoint (e.g. uploads it); rejects to be retried. */
export type OnCheckpointComplete = (dir: string, name: string, signal: AbortSignal) => Promise<void>;
/** Told about a checkpoint that could not be handled (retries exhausted, or the watcher stopped first). */
export type OnCheckpointFailed = (dir: string, name: string, err: unknown) => void;

/** Options of a CheckpointWatcher. */
export interface CheckpointWatcherOptions {
  /** Host directory bind-mounted as DET_CHECKPOINT_DIR. */
  root: string;
  onComplete: OnCheckpointComplete;
  /** Default: only logged. */
  onFailed?: OnCheckpointFailed;
  log: Logger;
  /** Rescan period in ms (default 2000). */
  rescanIntervalMs?: number;
  /** Use fs.watch besides rescans (default true). */
  watch?: boolean;
  /** Checkpoints handled at once (default 1). */
  concurrency?: number;
  /** Attempts per checkpoint before onFailed (default 5). */
  maxAttempts?: number;
  /** Delay between attempts (default 500 ms doubling to 30 s, half jitter). */
  backoff?: BackoffOptions;
  /** Randomness for backoff jitter (tests). */
  random?: () => number;
}

/** Default rescan period. */
export const DEFAULT_RESCAN_INTERVAL_MS = 2_000;
/** Default retry backoff for onComplete. */
export const CHECKPOINT_RETRY_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000, jitter: 0.5 };
/** Most in-progress checkpoint directories watched individually; beyond that, rescans cover them. */
const MAX_SUB_WATCHERS = 64;

/** Lifecycle: idle -(start)-> running -(stop)-> stopped. stop() from idle is allowed; stop() twice is harmless. */
export type CheckpointWatcherState = 'idle' | 'running' | 'stopped';

/** Watches a checkpoint directory; see the file comment. */
export class CheckpointWatcher {
  private stateValue: CheckpointWatcherState = 'idle';
  private readonly opts: Required<Omit<CheckpointWatcherOptions, 'onFailed'>> & { onFailed?: OnCheckpointFailed };
  /** Names ever queued: each is handed over once. */
  private readonly seen = new Set<string>();
  /** Names already logged as skipped, so each is logged once. */
  private readonly warned = new Set<string>();
  private readonly queue: string[] = [];
  private active = 0;
  private idleWaiters: (() => void)[] = [];
  private rootWatcher?: FSWatcher;
  private readonly subWatchers = new Map<string, FSWatcher>();
  private timer?: NodeJS.Timeout;
  private scanChain: Promise<void> = Promise.resolve();
  private scanQueued?: Promise<void>;
  private readonly abort = new AbortController();

  constructor(opts: CheckpointWatcherOptions) {
    this.opts = {
      rescanIntervalMs: DEFAULT_RESCAN_INTERVAL_MS,
      watch: true,
      concurrency: 1,
      maxAttempts: 5,
      backoff: CHECKPOINT_RETRY_BACKOFF,
      random: Math.random,
      ...opts,
    };
    this.opts.concurrency = Math.max(1, this.opts.concurrency);
    this.opts.maxAttempts = Math.max(1, this.opts.maxAttempts);
  }

  /** Current lifecycle state. */
  get state(): CheckpointWatcherState {
    return this.stateValue;
  }

  /** Starts watching and rescanning; an initial scan runs at once. */
  start(): void {
    if (this.stateValue !== 'idle') throw new DetError('DET_ERR_INTERNAL', `cannot start a checkpoint watcher that is ${this.stateValue}`);
    this.transition('running');
    this.ensureRootWatcher();
    this.timer = setInterval(() => void this.scan(), this.opts.rescanIntervalMs);
    void this.scan();
  }

  /** Rescans now and resolves once every completed checkpoint found so far has been handled (or reported failed). */
  async flush(): Promise<void> {
    if (this.stateValue === 'stopped') throw new DetError('DET_ERR_SHUTTING_DOWN', 'cannot flush a stopped checkpoint watcher');
    await this.scan();
    await this.whenIdle();
  }

  /**
   * Stops watching, aborts retries and in-flight handlers (through their signal) and waits for them.
   * Checkpoints not handled by then are reported to onFailed, never dropped silently.
   */
  async stop(): Promise<void> {
    if (this.stateValue === 'stopped') return this.whenIdle();
    this.transition('stopped');
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.rootWatcher?.close();
    this.rootWatcher = undefined;
    for (const w of this.subWatchers.values()) w.close();
    this.subWatchers.clear();
    this.abort.abort(new DetError('DET_ERR_SHUTTING_DOWN', 'the checkpoint watcher stopped before this checkpoint was handled'));
    for (const name of this.queue.splice(0)) this.fail(name, this.abort.signal.reason);
    await this.whenIdle();
  }

  /** Scans the root once (coalesced with a scan that has not started yet). Never rejects. */
  scan(): Promise<void> {
    if (this.scanQueued) return this.scanQueued;
    const p = this.scanChain.then(() => {
      this.scanQueued = undefined;
      return this.scanOnce();
    });
    this.scanQueued = p;
    this.scanChain = p.catch(() => undefined);
    return p;
  }

  private async scanOnce(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    if (this.stateValue === 'running') this.ensureRootWatcher();
    let dirents;
    try {
      dirents = await fs.readdir(this.opts.root, { withFileTypes: true });
    } catch (err) {
      this.warnOnce('\0root', 'cannot read the checkpoint directory; retrying on the next rescan', { dir: this.opts.root, err: errorMessage(err) });
      return;
    }
    const present = new Set<string>();
    const found: { name: string; at: number }[] = [];
    for (const d of dirents) {
      const name = d.name;
      if (this.seen.has(name)) continue;
      if (!d.isDirectory()) {
        if (name !== '.' && name !== '..') this.warnOnce(name, 'ignoring an entry of the checkpoint directory that is not a directory', { name });
        continue;
      }
      const problem = checkpointNameProblem(name);
      if (problem) {
        this.warnOnce(name, 'ignoring a checkpoint directory with an invalid name', { name, problem });
        continue;
      }
      present.add(name);
      let marker;
      try {
        marker = await fs.lstat(path.join(this.opts.root, name, COMPLETE_MARKER));
      } catch {
        this.watchInProgress(name);
        continue; // in progress
      }
      if (!marker.isFile()) {
        this.warnOnce(name, `ignoring a checkpoint whose ${COMPLETE_MARKER} is not a regular file`, { name });
        continue;
      }
      found.push({ name, at: marker.mtimeMs });
    }
    for (const [name, w] of this.subWatchers) {
      if (!present.has(name) || found.some((f) => f.name === name)) {
        w.close();
        this.subWatchers.delete(name);
      }
    }
    if (this.state === 'stopped') return; // stopped while scanning
    // Several found in one scan: oldest marker first, then by name.
    found.sort((a, b) => a.at - b.at || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const f of found) {
      this.seen.add(f.name);
      this.queue.push(f.name);
      this.opts.log.info('checkpoint complete', { name: f.name });
    }
    this.pump();
  }

  private pump(): void {
    while (this.active < this.opts.concurrency && this.queue.length > 0 && this.stateValue !== 'stopped') {
      const name = this.queue.shift()!;
      this.active++;
      void this.handle(name).finally(() => {
        this.active--;
        this.pump();
      });
    }
    this.notifyIfIdle();
  }

  private async handle(name: string): Promise<void> {
    const dir = path.join(this.opts.root, name);
    const signal = this.abort.signal;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.opts.onComplete(dir, name, signal);
        this.opts.log.info('checkpoint handled', { name, attempt });
        return;
      } catch (err) {
        if (signal.aborted) return this.fail(name, signal.reason, err);
        if (attempt >= this.opts.maxAttempts) return this.fail(name, err);
        const delayMs = backoffDelay(attempt - 1, this.opts.backoff, this.opts.random);
        this.opts.log.warn('handling a checkpoint failed; retrying', { name, attempt, delayMs, err: errorMessage(err) });
        try {
          await sleep(delayMs, signal);
        } catch {
          return this.fail(name, signal.reason, err);
        }
      }
    }
  }

  private fail(name: string, err: unknown, cause?: unknown): void {
    const dir = path.join(this.opts.root, name);
    this.opts.log.error('giving up on a checkpoint', { name, err: errorMessage(err), cause: cause === undefined ? undefined : errorMessage(cause) });
    try {
      this.opts.onFailed?.(dir, name, err);
    } catch (cbErr) {
      this.opts.log.error('onFailed threw', { name, err: errorMessage(cbErr) });
    }
  }

  private whenIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private isIdle(): boolean {
    return this.active === 0 && (this.queue.length === 0 || this.stateValue === 'stopped');
  }

  private notifyIfIdle(): void {
    if (!this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private ensureRootWatcher(): void {
    if (!this.opts.watch || this.rootWatcher) return;
    try {
      const w = fsWatch(this.opts.root, () => void this.scan());
      w.on('error', (err) => {
        this.opts.log.warn('fs.watch on the checkpoint directory failed; relying on rescans', { err: errorMessage(err) });
        w.close();
        if (this.rootWatcher === w) this.rootWatcher = undefined;
      });
      this.rootWatcher = w;
    } catch (err) {
      this.warnOnce('\0watch', 'cannot watch the checkpoint directory; relying on rescans', { dir: this.opts.root, err: errorMessage(err) });
    }
  }

  private watchInProgress(name: string): void {
    if (!this.opts.watch || this.stateValue !== 'running' || this.subWatchers.has(name) || this.subWatchers.size >= MAX_SUB_WATCHERS) return;
    try {
      const w = fsWatch(path.join(this.opts.root, name), () => void this.scan());
      w.on('error', () => {
        w.close();
        if (this.subWatchers.get(name) === w) this.subWatchers.delete(name);
      });
      this.subWatchers.set(name, w);
    } catch {
      // Gone already, or not watchable: rescans cover it.
    }
  }

  private warnOnce(key: string, msg: string, fields: Record<string, unknown>): void {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.opts.log.warn(msg, fields);
  }

  private transition(to: CheckpointWatcherState): void {
    this.opts.log.info('checkpoint watcher state', { from: this.stateValue, to, dir: this.opts.root });
    this.stateValue = to;
  }
}
