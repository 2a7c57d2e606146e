// det checkpoint list | describe | download: the master's checkpoint registry, and downloads that
// read straight from checkpoint storage (with this machine's AWS credentials) and verify every
// file against the checkpoint's manifest.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { downloadCheckpoint, type DownloadProgress } from '../../common/checkpoints/download';
import { formatBytes } from '../../common/format';
import { DetError, errorMessage } from '../../common/errors';
import { openCheckpointStorage } from '../../common/storage';
import { parseCount, parseId } from '../args';
import type { Context } from '../context';
import { Interrupted, UsageError } from '../errors';
import { formatTime, keyValues, table } from '../format';
import { checkpointView, type CheckpointView } from '../views';

/** The table of `det checkpoint list`. */
export function checkpointTable(checkpoints: CheckpointView[]): string {
  return table(
    ['UUID', 'Trial', 'Name', 'Size', 'Files', 'State', 'Location'],
    checkpoints.map((c) => [c.uuid, c.trialId, c.name, formatBytes(c.totalSize), c.fileCount, c.state, c.location]),
  );
}

/** Fails early, before any download, when `dir` cannot receive a checkpoint (it must be new or an empty directory). */
export function checkDownloadTarget(dir: string): void {
  let entries: string[];
  try {
    entries = fs.readdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTDIR') throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot download into ${dir}: it exists and is not a directory`);
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot read the download directory ${dir}: ${errorMessage(err)}`);
  }
  if (entries.length > 0) {
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot download into ${dir}: the directory is not empty (${entries.length} entries); choose a new or empty directory`);
  }
}

/** Shows download progress: a bar on a terminal, otherwise nothing until the summary. */
class DownloadProgressView {
  private bar: SingleBar | undefined;
  private last: DownloadProgress | undefined;

  constructor(private readonly stream: NodeJS.WritableStream | undefined) {}

  update(p: DownloadProgress): void {
    this.last = p;
    if (!this.stream) return;
    const payload = { done: formatBytes(p.doneBytes), size: formatBytes(p.totalBytes), files: `${p.doneFiles}/${p.totalFiles}` };
    if (!this.bar) {
      this.bar = new SingleBar(
        { stream: this.stream, format: 'Downloading [{bar}] {percentage}% | {done} / {size} | {files} files', hideCursor: true, fps: 10 },
        Presets.legacy,
      );
      // Bytes drive the bar; an empty checkpoint counts files so it still reaches 100%.
      this.bar.start(p.totalBytes > 0 ? p.totalBytes : Math.max(1, p.totalFiles), 0, payload);
    }
    this.bar.update(p.totalBytes > 0 ? p.doneBytes : p.totalFiles > 0 ? p.doneFiles : 1, payload);
  }

  /** Stops the bar; resolves to the summary line for a non-terminal (undefined with a bar). */
  stop(): string | undefined {
    this.bar?.stop();
    if (this.stream || !this.last) return undefined;
    return `${this.last.doneFiles}/${this.last.totalFiles} files, ${formatBytes(this.last.doneBytes)} downloaded and verified against the manifest`;
  }
}

/** Registers `det checkpoint` (alias `c`). */
export function registerCheckpoint(program: Command, ctx: Context): void {
  const checkpoint = program.command('checkpoint').alias('c').description('list, describe and download checkpoints');

  checkpoint
    .command('list')
    .alias('ls')
    .description('list the checkpoints of an experiment or of a trial, oldest first')
    .option('-e, --experiment <experiment-id>', 'checkpoints of this experiment', parseId)
    .option('-t, --trial <trial-id>', 'checkpoints of this trial', parseId)
    .option('--json', 'print JSON')
    .action(async (opts: { experiment?: number; trial?: number; json?: boolean }) => {
      if (opts.experiment === undefined && opts.trial === undefined) {
        throw new UsageError('say whose checkpoints to list: --experiment <experiment-id> or --trial <trial-id>');
      }
      const checkpoints = (await ctx.client().listCheckpoints(opts.experiment ?? 0, opts.trial ?? 0)).checkpoints.map(checkpointView);
      if (opts.json) return ctx.json(checkpoints);
      ctx.out(checkpointTable(checkpoints));
    });

  checkpoint
    .command('describe')
    .description('describe one checkpoint, including where it is stored')
    .argument('<uuid>', 'checkpoint uuid')
    .option('--json', 'print JSON')
    .action(async (uuid: string, opts: { json?: boolean }) => {
      const res = await ctx.client().getCheckpoint(uuid);
      if (!res.checkpoint) throw new Error(`the master returned no checkpoint for ${uuid}`);
      const c = checkpointView(res.checkpoint);
      if (opts.json) return ctx.json(c);
      ctx.out(
        keyValues([
          ['UUID', c.uuid],
          ['Experiment ID', c.experimentId],
          ['Trial ID', c.trialId],
          ['Allocation ID', c.allocationId],
          ['Name', c.name],
          ['State', c.state],
          ['Created', formatTime(c.createdAtMs)],
          ['Reported', formatTime(c.reportedAtMs)],
          ['Size', `${formatBytes(c.totalSize)} (${c.totalSize} bytes)`],
          ['Files', c.fileCount],
          ['Location', c.location],
          ['Storage', JSON.stringify(c.storage)],
          ['Metadata', JSON.stringify(c.metadata)],
        ]),
      );
    });

  checkpoint
    .command('download')
    .description('download a checkpoint from its storage into a new or empty directory, verifying every file')
    .argument('<uuid>', 'checkpoint uuid')
    .argument('<dir>', 'target directory (created if missing; must be empty)')
    .option('--concurrency <n>', 'files downloaded at once (default 8)', parseCount)
    .action(async (uuid: string, dir: string, opts: { concurrency?: number }) => {
      const target = path.resolve(dir);
      checkDownloadTarget(target);
      const res = await ctx.client().getCheckpoint(uuid);
      if (!res.checkpoint) throw new Error(`the master returned no checkpoint for ${uuid}`);
      const c = checkpointView(res.checkpoint);
      if (c.state !== 'COMPLETED') {
        throw new DetError('DET_ERR_CHECKPOINT_NOT_FOUND', `checkpoint ${uuid} is ${c.state}: its files are gone from storage (experiment ${c.experimentId} is being deleted)`);
      }
      // Credentials come from this machine's AWS default chain (environment, profile, instance profile).
      const storage = openCheckpointStorage(c.storage) as ReturnType<typeof openCheckpointStorage> & { destroy?(): void };
      const progress = new DownloadProgressView(ctx.progressStream);
      try {
        await downloadCheckpoint(storage, uuid, target, {
          signal: ctx.signal,
          ...(opts.concurrency ? { concurrency: opts.concurrency } : {}),
          onProgress: (p) => progress.update(p),
        });
      } catch (err) {
        progress.stop();
        if (ctx.signal.aborted) throw new Interrupted(`stopped downloading checkpoint ${uuid}; removed what was written to ${target}`);
        throw err;
      } finally {
        storage.destroy?.();
      }
      const summary = progress.stop();
      if (summary) ctx.err(summary);
      ctx.out(`Downloaded checkpoint ${uuid} to ${target}`);
    });
}
