// What an allocation needs on the host before its container starts, and what is cleaned up after:
//   <work_dir>/allocations/<allocation id>/
//     checkpoints/   bind-mounted read-write at DET_CHECKPOINT_DIR (/det/checkpoints)
//     latest/        the restored latest checkpoint, read-only at DET_LATEST_CHECKPOINT
//     data/<i>/      read-only views of the data inputs (hard links into the data cache)
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { downloadCheckpoint } from '../../common/checkpoints/download';
import { manifestKey } from '../../common/checkpoints/layout';
import type { Manifest } from '../../common/checkpoints/manifest';
import { DetError, errorMessage } from '../../common/errors';
import { formatBytes } from '../../common/format';
import type { Logger } from '../../common/log';
import { openCheckpointStorage, type CheckpointStorage, type CheckpointStorageOverrides } from '../../common/storage';
import type { CheckpointReport, TaskSpec } from '../../common/types';
import { CHECKPOINT_DIR_ENV, LATEST_CHECKPOINT_ENV } from '../checkpoints/contract';
import type { HashCache } from '../checkpoints/hash-cache';
import { CheckpointSync } from '../checkpoints/sync';
import type { DataCache } from '../data';
import type { BindMount, RunSpec } from './runtime';

/** DET_CHECKPOINT_DIR inside the container. */
export const CONTAINER_CHECKPOINT_DIR = '/det/checkpoints';
/** DET_LATEST_CHECKPOINT inside the container (only set when a checkpoint was restored). */
export const CONTAINER_LATEST_CHECKPOINT = '/det/latest_checkpoint';

/** Agent-wide parts the preparation uses. */
export interface TaskFilesDeps {
  /** The agent's work directory. */
  workDir: string;
  dataCache: DataCache;
  hashCache: HashCache;
  /** Test credentials for S3 (production: the SDK default chain). */
  storageOverrides?: CheckpointStorageOverrides;
  log: Logger;
  /** Rescan period of checkpoint watchers (tests). */
  rescanIntervalMs?: number;
}

/** A prepared allocation. */
export interface PreparedTask {
  /** The spec with the mounts and DET_* checkpoint variables added. */
  spec: RunSpec;
  /** Not started yet: the caller starts it with the container. */
  checkpoints: CheckpointSync;
  /** Removes the host directories; checkpoints that could not be stored are kept. */
  release(keepCheckpoints: boolean): Promise<void>;
}

/**
 * Creates the allocation's host directories, restores its latest checkpoint, syncs its data inputs
 * and sets up checkpoint syncing. Throws a DetError naming what failed (the task cannot start).
 */
export async function prepareTask(
  spec: TaskSpec,
  deps: TaskFilesDeps,
  say: (line: string) => void,
  report: (c: CheckpointReport) => Promise<void>,
  signal: AbortSignal,
): Promise<PreparedTask> {
  const root = path.join(deps.workDir, 'allocations', safeSegment(spec.allocationId));
  const dirs = { checkpoints: path.join(root, 'checkpoints'), latest: path.join(root, 'latest'), data: path.join(root, 'data') };
  let storage: CheckpointStorage | undefined;
  try {
    await fs.rm(dirs.latest, { recursive: true, force: true });
    await fs.mkdir(dirs.checkpoints, { recursive: true });
    // Any container user may write checkpoints (the mode is set explicitly: umask would narrow it).
    await fs.chmod(dirs.checkpoints, 0o777);
    storage = openCheckpointStorage(spec.checkpointStorage, deps.storageOverrides);
    const mounts: BindMount[] = [{ hostPath: dirs.checkpoints, containerPath: CONTAINER_CHECKPOINT_DIR, readOnly: false }];
    const env: Record<string, string> = { [CHECKPOINT_DIR_ENV]: CONTAINER_CHECKPOINT_DIR };
    let restored: Manifest | undefined;
    if (spec.latestCheckpointUuid) {
      restored = await restore(storage, spec.latestCheckpointUuid, dirs.latest, say, signal);
      mounts.push({ hostPath: dirs.latest, containerPath: CONTAINER_LATEST_CHECKPOINT, readOnly: true });
      env[LATEST_CHECKPOINT_ENV] = CONTAINER_LATEST_CHECKPOINT;
    }
    if (spec.data.length > 0) {
      const inputs = await deps.dataCache.prepare(spec.data, dirs.data, say, signal);
      for (const i of inputs) mounts.push({ hostPath: i.hostDir, containerPath: i.target, readOnly: true });
    }
    const checkpoints = new CheckpointSync({
      allocationId: spec.allocationId, trialId: spec.trialId, hostDir: dirs.checkpoints, storage, hashCache: deps.hashCache,
      log: deps.log.child('checkpoints'), say, report, restored, rescanIntervalMs: deps.rescanIntervalMs,
    });
    const s3 = storage;
    return {
      spec: { ...spec, env: { ...spec.env, ...env }, mounts },
      checkpoints,
      release: async (keepCheckpoints) => {
        closeStorage(s3);
        await deps.dataCache.release(dirs.data).catch((err) => deps.log.warn('cannot remove data views', { dir: dirs.data, err: errorMessage(err) }));
        await fs.rm(keepCheckpoints ? dirs.latest : root, { recursive: true, force: true }).catch((err) => deps.log.warn('cannot remove allocation files', { dir: root, err: errorMessage(err) }));
      },
    };
  } catch (err) {
    if (storage) closeStorage(storage);
    await deps.dataCache.release(dirs.data).catch(() => undefined);
    await fs.rm(root, { recursive: true, force: true }).catch(() => undefined);
    if (signal.aborted) throw err;
    throw err instanceof DetError ? err : new DetError('DET_ERR_INTERNAL', `cannot prepare the task's files in ${root}: ${errorMessage(err)}`);
  }
}

async function restore(storage: CheckpointStorage, uuid: string, dir: string, say: (line: string) => void, signal: AbortSignal): Promise<Manifest> {
  say(`restoring checkpoint ${uuid} from ${storage.location(manifestKey(uuid))}`);
  let lastSaid = 0;
  try {
    const m = await downloadCheckpoint(storage, uuid, dir, {
      signal,
      onProgress: (p) => {
        if (Date.now() - lastSaid < 2_000) return;
        lastSaid = Date.now();
        say(`restoring checkpoint ${uuid}: ${formatBytes(p.doneBytes)} of ${formatBytes(p.totalBytes)} (${p.doneFiles}/${p.totalFiles} files)`);
      },
    });
    say(`restored checkpoint ${m.name} (${uuid}): ${m.files.length} files, ${formatBytes(m.totalSize)}, verified; ${LATEST_CHECKPOINT_ENV}=${CONTAINER_LATEST_CHECKPOINT}`);
    return m;
  } catch (err) {
    throw new DetError('DET_ERR_INTERNAL', `cannot restore checkpoint ${uuid}: ${errorMessage(err)}`);
  }
}

function closeStorage(storage: CheckpointStorage): void {
  (storage as { destroy?: () => void }).destroy?.();
}

// Allocation ids are "<task>.<n>"; anything else is refused rather than used as a path.
function safeSegment(id: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/.test(id) || id.includes('..')) throw new DetError('DET_ERR_INVALID_ARGUMENT', `allocation id ${JSON.stringify(id)} cannot name a directory`);
  return id;
}
