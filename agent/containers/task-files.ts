// What an allocation needs on the host before its container starts, and what is cleaned up after:
//   <work_dir>/allocations/<allocation id>/
//     checkpoints/   bind-mounted read-write at DET_CHECKPOINT_DIR (/det/checkpoints)
//     latest/        the restored latest checkpoint, read-only at DET_LATEST_CHECKPOINT
//     data/<i>/      read-only views of the data inputs (hard links into the data cache)
//     spec.json      what a restarted agent needs to adopt the running container (written last, atomically)
//     checkpoints-stored.jsonl  checkpoints stored so far (a restarted agent neither stores nor loses them)
//     log-*          the log numbering state (log-sequence.ts)
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { downloadCheckpoint } from '../../common/checkpoints/download';
import { manifestKey } from '../../common/checkpoints/layout';
import { parseManifest, type Manifest } from '../../common/checkpoints/manifest';
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
  /** The allocation's directory on the host. */
  dir: string;
  /** Not started yet: the caller starts it with the container. */
  checkpoints: CheckpointSync;
  /** Writes spec.json: from then on a restarted agent can adopt the allocation's container. */
  save(): Promise<void>;
  /** Removes the host directories; checkpoints that could not be stored are kept. */
  release(keepCheckpoints: boolean): Promise<void>;
}

/** What spec.json holds. */
export interface SavedTask {
  version: 1;
  /** The prepared spec (mounts and env included), as the container was created with it. */
  spec: RunSpec;
  /** The manifest of the checkpoint restored at start (for dedupe), if any. */
  restored?: Manifest;
}

/** An allocation resumed by a restarted agent. */
export interface ResumedTask extends PreparedTask {
  /** Checkpoints the earlier agent run stored: the caller reports them again (the master ignores repeats). */
  storedBefore: CheckpointReport[];
}

const SPEC_FILE = 'spec.json';
const STORED_FILE = 'checkpoints-stored.jsonl';

/** The directory of an allocation under the agent's work dir. */
export function allocationDir(workDir: string, allocationId: string): string {
  return path.join(workDir, 'allocations', safeSegment(allocationId));
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
  const root = allocationDir(deps.workDir, spec.allocationId);
  const dirs = dirsOf(root);
  let storage: CheckpointStorage | undefined;
  try {
    await fs.rm(path.join(root, SPEC_FILE), { force: true });
    await fs.rm(path.join(root, STORED_FILE), { force: true });
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
    const runSpec: RunSpec = { ...spec, env: { ...spec.env, ...env }, mounts };
    const saved: SavedTask = { version: 1, spec: runSpec, restored };
    return prepared(saved, root, storage, deps, say, report);
  } catch (err) {
    if (storage) closeStorage(storage);
    await deps.dataCache.release(dirs.data).catch(() => undefined);
    await fs.rm(root, { recursive: true, force: true }).catch(() => undefined);
    if (signal.aborted) throw err;
    throw err instanceof DetError ? err : new DetError('DET_ERR_INTERNAL', `cannot prepare the task's files in ${root}: ${errorMessage(err)}`);
  }
}

/**
 * Reads an allocation's spec.json. Undefined when there is none (the allocation was never
 * prepared completely, or its files are gone); a DetError when it is unusable.
 */
export async function loadSavedTask(workDir: string, allocationId: string): Promise<SavedTask | undefined> {
  const file = path.join(allocationDir(workDir, allocationId), SPEC_FILE);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DetError('DET_ERR_INTERNAL', `cannot read ${file}: ${errorMessage(err)}`);
  }
  try {
    const v = JSON.parse(text) as Partial<SavedTask>;
    if (v.version !== 1 || !v.spec || typeof v.spec !== 'object') throw new Error('not a version 1 saved task');
    const s = v.spec;
    if (s.allocationId !== allocationId) throw new Error(`it names allocation ${JSON.stringify(s.allocationId)}`);
    if (typeof s.image !== 'string' || typeof s.trialId !== 'number' || typeof s.killGracePeriodMs !== 'number' || !s.checkpointStorage || !Array.isArray(s.mounts)) {
      throw new Error('the spec lacks fields');
    }
    return { version: 1, spec: s, restored: v.restored ? parseManifest(v.restored) : undefined };
  } catch (err) {
    throw new DetError('DET_ERR_INTERNAL', `${file} is unusable: ${errorMessage(err)}`);
  }
}

/**
 * Takes over a saved allocation after an agent restart, without preparing anything again: the
 * checkpoint sync starts afresh (checkpoints stored before are neither stored nor reported twice).
 */
export async function resumeTask(
  saved: SavedTask,
  deps: TaskFilesDeps,
  say: (line: string) => void,
  report: (c: CheckpointReport) => Promise<void>,
): Promise<ResumedTask> {
  const root = allocationDir(deps.workDir, saved.spec.allocationId);
  const storedBefore = await readStored(path.join(root, STORED_FILE), deps.log);
  const storage = openCheckpointStorage(saved.spec.checkpointStorage, deps.storageOverrides);
  const names = new Set(storedBefore.map((c) => c.name));
  return { ...prepared(saved, root, storage, deps, say, report, names), storedBefore };
}

/** After the agent discarded an allocation's container: removes its files, except checkpoints not stored. */
export async function releaseTaskFiles(workDir: string, allocationId: string, deps: Pick<TaskFilesDeps, 'dataCache' | 'log'>): Promise<void> {
  const root = allocationDir(workDir, allocationId);
  await deps.dataCache.release(dirsOf(root).data).catch((err) => deps.log.warn('cannot remove data views', { dir: root, err: errorMessage(err) }));
  await removeAllBut(root, 'checkpoints').catch((err) => deps.log.warn('cannot remove allocation files', { dir: root, err: errorMessage(err) }));
}

function dirsOf(root: string) {
  return { checkpoints: path.join(root, 'checkpoints'), latest: path.join(root, 'latest'), data: path.join(root, 'data') };
}

function prepared(
  saved: SavedTask,
  root: string,
  storage: CheckpointStorage,
  deps: TaskFilesDeps,
  say: (line: string) => void,
  report: (c: CheckpointReport) => Promise<void>,
  storedBefore?: ReadonlySet<string>,
): PreparedTask {
  const dirs = dirsOf(root);
  const storedFile = path.join(root, STORED_FILE);
  const checkpoints = new CheckpointSync({
    allocationId: saved.spec.allocationId, trialId: saved.spec.trialId, hostDir: dirs.checkpoints, storage, hashCache: deps.hashCache,
    log: deps.log.child('checkpoints'), say, restored: saved.restored, rescanIntervalMs: deps.rescanIntervalMs, storedBefore,
    // Recorded before it is reported: a restarted agent reports it again rather than storing it twice.
    report: async (c) => {
      await fs.appendFile(storedFile, `${JSON.stringify(c)}\n`, { mode: 0o600 }).catch((err) => deps.log.warn('cannot record a stored checkpoint', { file: storedFile, err: errorMessage(err) }));
      await report(c);
    },
  });
  return {
    spec: saved.spec,
    dir: root,
    checkpoints,
    // The env may hold the user's secrets: the file is the agent's alone (so is Docker's copy).
    save: () => writeAtomic(path.join(root, SPEC_FILE), JSON.stringify(saved)),
    release: async (keepCheckpoints) => {
      closeStorage(storage);
      await deps.dataCache.release(dirs.data).catch((err) => deps.log.warn('cannot remove data views', { dir: dirs.data, err: errorMessage(err) }));
      await (keepCheckpoints ? removeAllBut(root, 'checkpoints') : fs.rm(root, { recursive: true, force: true })).catch((err) =>
        deps.log.warn('cannot remove allocation files', { dir: root, err: errorMessage(err) }),
      );
    },
  };
}

async function readStored(file: string, log: Logger): Promise<CheckpointReport[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return [];
  }
  const out: CheckpointReport[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      const c = JSON.parse(line) as CheckpointReport;
      if (typeof c.uuid === 'string' && typeof c.name === 'string') out.push(c);
    } catch {
      log.warn('ignoring an unreadable line of the stored checkpoints record', { file });
    }
  }
  return out;
}

async function removeAllBut(root: string, keep: string): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const name of names) if (name !== keep) await fs.rm(path.join(root, name), { recursive: true, force: true });
}

async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await fs.writeFile(tmp, text, { mode: 0o600 });
  await fs.rename(tmp, file);
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
