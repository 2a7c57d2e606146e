// One trial allocation's checkpoints, from the container's DET_CHECKPOINT_DIR to storage and the
// master: the watcher finds each completed checkpoint, the uploader stores its files and then its
// manifest, and only then is the checkpoint reported. finish() runs when the container has exited:
// pending checkpoints are uploaded before the trial's end is reported.
import { randomUUID } from 'node:crypto';
import { errorMessage } from '../../common/errors';
import { formatBytes } from '../../common/format';
import type { Logger } from '../../common/log';
import type { CheckpointStorage } from '../../common/storage';
import type { CheckpointReport } from '../../common/types';
import type { Manifest } from '../../common/checkpoints/manifest';
import type { HashCache } from './hash-cache';
import { CheckpointUploader } from './uploader';
import { CheckpointWatcher } from './watcher';

/** What a CheckpointSync needs. */
export interface CheckpointSyncOptions {
  allocationId: string;
  trialId: number;
  /** Host side of DET_CHECKPOINT_DIR. */
  hostDir: string;
  storage: CheckpointStorage;
  hashCache: HashCache;
  log: Logger;
  /** Writes a line into the trial's log. */
  say: (line: string) => void;
  /** Hands a stored checkpoint to the master (resolves once it is on its way). */
  report: (c: CheckpointReport) => Promise<void>;
  /** The checkpoint restored at start (its content counts as stored, for dedupe). */
  restored?: Manifest;
  /** Rescan period of the watcher (tests). */
  rescanIntervalMs?: number;
  /** Checkpoints (by name) an earlier run of the agent stored: neither stored nor reported again. */
  storedBefore?: ReadonlySet<string>;
}

/** How a sync ended: names of checkpoints that could not be stored (their files stay on the host). */
export interface CheckpointSyncResult {
  stored: number;
  failed: string[];
}

/** Watches, uploads and reports one allocation's checkpoints. */
export class CheckpointSync {
  private readonly watcher: CheckpointWatcher;
  private readonly uploader: CheckpointUploader;
  /** One uuid per checkpoint directory, so a retried upload writes to the same place. */
  private readonly uuids = new Map<string, string>();
  private stored = 0;
  private readonly failed: string[] = [];

  constructor(private readonly o: CheckpointSyncOptions) {
    this.uploader = new CheckpointUploader({ storage: o.storage, log: o.log, hashCache: o.hashCache, onProgress: o.say });
    if (o.restored) this.uploader.remember(o.restored);
    this.watcher = new CheckpointWatcher({
      root: o.hostDir,
      log: o.log,
      maxAttempts: 3,
      rescanIntervalMs: o.rescanIntervalMs,
      onComplete: (dir, name, signal) => this.store(dir, name, signal),
      onFailed: (dir, name, err) => {
        this.failed.push(name);
        o.say(`checkpoint ${name} could NOT be stored: ${errorMessage(err)}; its files stay on this agent at ${dir}`);
      },
    });
  }

  /** Starts watching DET_CHECKPOINT_DIR. */
  start(): void {
    this.watcher.start();
  }

  /** Stores every completed checkpoint now (spot interruption notice); keeps watching. */
  async flushNow(): Promise<void> {
    if (this.watcher.state === 'running') await this.watcher.flush();
  }

  /** After the container exited: stores what is still pending, then stops. */
  async finish(): Promise<CheckpointSyncResult> {
    if (this.watcher.state === 'running') await this.watcher.flush();
    await this.watcher.stop();
    return { stored: this.stored, failed: [...this.failed] };
  }

  private async store(dir: string, name: string, signal: AbortSignal): Promise<void> {
    if (this.o.storedBefore?.has(name)) return;
    let uuid = this.uuids.get(name);
    if (!uuid) {
      uuid = randomUUID();
      this.uuids.set(name, uuid);
    }
    const createdAtMs = Date.now();
    const up = await this.uploader.upload(dir, { uuid, trialId: this.o.trialId, allocationId: this.o.allocationId, name, createdAtMs }, signal);
    const m = up.manifest;
    this.stored++;
    this.o.say(
      `checkpoint ${name} stored as ${uuid}: ${m.files.length} files, ${formatBytes(m.totalSize)} ` +
        `(${formatBytes(up.uploadedBytes)} uploaded, ${formatBytes(up.skippedBytes)} unchanged) at ${up.location}`,
    );
    await this.o.report({
      allocationId: this.o.allocationId, uuid, name, createdAtMs: m.createdAtMs, totalSize: m.totalSize, fileCount: m.files.length, metadata: m.metadata, location: up.location,
    });
  }
}
