// Deleting an experiment: its checkpoints' objects first, then its metadata, so the registry never
// forgets a checkpoint whose objects still exist (Determined loses track of checkpoints when a
// deletion fails halfway). The experiment is DELETING meanwhile; when storage keeps failing it
// becomes DELETE_FAILED, keeping every row, and a later delete continues where this one stopped
// (checkpoints already DELETED are skipped). Storage is a port (open + delete objects) so the flow
// is tested without S3.
import { deleteCheckpointObjects } from '../../common/checkpoints/delete';
import { isTransientStorageError, withRetries } from '../../common/checkpoints/transfer';
import type { BackoffOptions } from '../../common/backoff';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import { openCheckpointStorage, redact, type CheckpointStorage } from '../../common/storage';
import type { CheckpointStorageSpec } from '../../common/types';
import type { CheckpointRecord, ExperimentState, Store } from '../store/store';

/** Experiment states from which a delete may start: ended, or a deletion that failed or was interrupted. */
export const DELETABLE_STATES: readonly ExperimentState[] = ['COMPLETED', 'CANCELED', 'ERROR', 'DELETE_FAILED', 'DELETING'];

/**
 * Default attempts per checkpoint, the first included. Each attempt is itself patient: deleteCheckpointObjects
 * retries every storage call with backoff (common/checkpoints/transfer.ts) and the S3 SDK retries each request,
 * so one more attempt after a pause is enough to ride out a longer outage without making a user wait minutes
 * for an answer that will not change.
 */
export const DEFAULT_DELETE_ATTEMPTS = 2;
/** Default delay between attempts for one checkpoint. */
export const DELETE_RETRY_BACKOFF: BackoffOptions = { baseMs: 1_000, maxMs: 5_000, jitter: 0.5 };

/** A storage opened for deletion; S3 storages have destroy() to close their connections. */
export type OpenedStorage = CheckpointStorage & { destroy?(): void };

/** The storage port of the deletion flow. */
export interface DeletionStorage {
  /** Opens the storage a checkpoint lives in (openCheckpointStorage in production). */
  open(spec: CheckpointStorageSpec): OpenedStorage;
  /** Deletes every object of checkpoint `uuid`; idempotent; resolves to the number deleted. */
  deleteObjects(storage: CheckpointStorage, uuid: string, signal?: AbortSignal): Promise<number>;
}

/** The real storage: the master's AWS default credential chain. */
export const REAL_DELETION_STORAGE: DeletionStorage = {
  open: (spec) => openCheckpointStorage(spec),
  deleteObjects: deleteCheckpointObjects,
};

/** What ExperimentDeleter needs; everything but the store has a default. */
export interface ExperimentDeleterOptions {
  store: Store;
  storage?: DeletionStorage;
  log?: Logger;
  /** Attempts per checkpoint (default DEFAULT_DELETE_ATTEMPTS). */
  attempts?: number;
  /** Delay between attempts (default DELETE_RETRY_BACKOFF). */
  backoff?: BackoffOptions;
  /** Stops deletions (the master's shutdown); an interrupted experiment stays DELETING and resumes on start. */
  signal?: AbortSignal;
}

/** What one delete did. */
export interface DeletionResult {
  /** Checkpoints whose objects this delete removed. */
  checkpointsDeleted: number;
  /** Storage objects this delete removed. */
  objectsDeleted: number;
}

/** The error for an experiment that may not be deleted in its current state, or undefined when it may. */
export function notDeletableError(id: number, state: ExperimentState): DetError | undefined {
  if (DELETABLE_STATES.includes(state)) return undefined;
  const what =
    state === 'STOPPING_CANCELED' ? `wait until its trials have stopped (det experiment describe ${id})` : `kill it first (det experiment kill ${id})`;
  return new DetError('DET_ERR_EXPERIMENT_NOT_ENDED', `experiment ${id} is ${state}; ${what}`);
}

/**
 * Checkpoints whose objects still have to go, newest first (`all` is in registry order, oldest first). A
 * checkpoint's manifest may point at objects of an earlier checkpoint of its trial (dedupe, see
 * common/checkpoints/layout.ts), never of a later one; deleting the newest first keeps every checkpoint
 * that a failed deletion leaves behind complete and downloadable.
 */
export function pendingCheckpoints(all: readonly CheckpointRecord[]): CheckpointRecord[] {
  return all.filter((c) => c.state !== 'DELETED').reverse();
}

/** Where a storage config points, for messages: s3://bucket/prefix (at endpoint) or the host path. Never credentials. */
export function describeStorage(spec: CheckpointStorageSpec): string {
  if (spec.type === 'shared_fs') return spec.host_path;
  const root = `s3://${spec.bucket}${spec.prefix ? `/${spec.prefix}` : ''}`;
  return spec.endpoint_url ? `${root} at ${spec.endpoint_url}` : root;
}

/** The error when a checkpoint's objects could not be deleted; the experiment is DELETE_FAILED. */
export function checkpointDeleteError(experimentId: number, rec: CheckpointRecord, remaining: number, cause: unknown): DetError {
  const reason = redact(errorMessage(cause));
  return new DetError(
    'DET_ERR_CHECKPOINT_DELETE',
    `cannot delete checkpoint ${rec.uuid} (trial ${rec.trialId}) of experiment ${experimentId} from ${redact(describeStorage(rec.storage))}: ${reason}. ` +
      `Experiment ${experimentId} is DELETE_FAILED with ${remaining} checkpoint(s) and all its metadata kept; ` +
      `fix the storage, then run det experiment delete ${experimentId} again to continue`,
  );
}

/** Deletes experiments; concurrent deletes of one experiment share one run. */
export class ExperimentDeleter {
  private readonly store: Store;
  private readonly storage: DeletionStorage;
  private readonly running = new Map<number, Promise<DeletionResult>>();

  constructor(private readonly opts: ExperimentDeleterOptions) {
    this.store = opts.store;
    this.storage = opts.storage ?? REAL_DELETION_STORAGE;
  }

  /**
   * Deletes experiment `id`: objects of every checkpoint not yet DELETED, then all its rows. Rejects with
   * DET_ERR_EXPERIMENT_NOT_FOUND, DET_ERR_EXPERIMENT_NOT_ENDED, or DET_ERR_CHECKPOINT_DELETE (experiment left
   * DELETE_FAILED).
   */
  delete(id: number): Promise<DeletionResult> {
    let run = this.running.get(id);
    if (run === undefined) {
      run = this.run(id).finally(() => this.running.delete(id));
      this.running.set(id, run);
    }
    return run;
  }

  /** Continues every experiment left DELETING (by a master that stopped mid-way); failures are logged, not thrown. */
  async resumePending(): Promise<void> {
    const deleting = (await this.store.listExperiments()).filter((e) => e.state === 'DELETING');
    for (const e of deleting) {
      if (this.opts.signal?.aborted) return;
      this.opts.log?.info('resuming experiment deletion', { experiment: e.id });
      try {
        await this.delete(e.id);
      } catch (err) {
        this.opts.log?.error('resumed experiment deletion failed', { experiment: e.id, err: errorMessage(err) });
      }
    }
  }

  private async run(id: number): Promise<DeletionResult> {
    const exp = await this.store.getExperiment(id);
    if (!exp) throw new DetError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${id} not found`);
    const refused = notDeletableError(id, exp.state);
    if (refused) throw refused;
    if (exp.state !== 'DELETING') {
      await this.store.updateExperiment(id, { state: 'DELETING' });
      this.opts.log?.info('experiment state', { experiment: id, state: 'DELETING', was: exp.state });
    }

    const result: DeletionResult = { checkpointsDeleted: 0, objectsDeleted: 0 };
    const opened = new Map<string, OpenedStorage>();
    try {
      // Listed again after each pass: an agent may still report a checkpoint its trial wrote just before it ended.
      for (let pending = pendingCheckpoints(await this.store.listCheckpoints({ experimentId: id })); pending.length > 0; ) {
        for (const [i, rec] of pending.entries()) {
          let objects: number;
          try {
            objects = await this.deleteObjects(rec, opened);
          } catch (err) {
            if (this.opts.signal?.aborted) throw err;
            await this.markFailed(id);
            const error = checkpointDeleteError(id, rec, pending.length - i, err);
            this.opts.log?.error('experiment deletion failed', { experiment: id, checkpoint: rec.uuid, err: error.message });
            throw error;
          }
          await this.store.setCheckpointState(rec.uuid, 'DELETED');
          result.checkpointsDeleted++;
          result.objectsDeleted += objects;
          this.opts.log?.debug('checkpoint deleted', { experiment: id, checkpoint: rec.uuid, objects });
        }
        pending = pendingCheckpoints(await this.store.listCheckpoints({ experimentId: id }));
      }
    } finally {
      for (const s of opened.values()) s.destroy?.();
    }

    try {
      await this.store.deleteExperiment(id);
    } catch (err) {
      // Another master (or a resumed run) finished first: the outcome is the same.
      if (!(err instanceof DetError && err.code === 'DET_ERR_EXPERIMENT_NOT_FOUND')) throw err;
    }
    this.opts.log?.info('experiment deleted', { experiment: id, ...result });
    return result;
  }

  /** Deletes one checkpoint's objects, retrying transient failures; storages are opened once per config. */
  private async deleteObjects(rec: CheckpointRecord, opened: Map<string, OpenedStorage>): Promise<number> {
    const key = JSON.stringify(rec.storage);
    let storage = opened.get(key);
    if (storage === undefined) {
      storage = this.storage.open(rec.storage);
      opened.set(key, storage);
    }
    const s = storage;
    return withRetries(() => this.storage.deleteObjects(s, rec.uuid, this.opts.signal), {
      maxAttempts: this.opts.attempts ?? DEFAULT_DELETE_ATTEMPTS,
      backoff: this.opts.backoff ?? DELETE_RETRY_BACKOFF,
      signal: this.opts.signal,
      isTransient: isTransientStorageError,
      onRetry: (attempt, delayMs, err) =>
        this.opts.log?.warn('retrying checkpoint deletion', { checkpoint: rec.uuid, attempt, delayMs, err: redact(errorMessage(err)) }),
    });
  }

  private async markFailed(id: number): Promise<void> {
    try {
      await this.store.updateExperiment(id, { state: 'DELETE_FAILED' });
      this.opts.log?.info('experiment state', { experiment: id, state: 'DELETE_FAILED' });
    } catch (err) {
      if (!(err instanceof DetError && err.code === 'DET_ERR_EXPERIMENT_NOT_FOUND')) throw err;
    }
  }
}

/**
 * Continues, at master start, the deletions of experiments left DELETING by a master that stopped mid-way.
 * Resolves when done; never rejects (failures are logged and leave the experiment DELETE_FAILED).
 * Pass the master's root signal so shutdown stops it.
 */
export async function resumeExperimentDeletions(store: Store, log: Logger, signal?: AbortSignal): Promise<void> {
  try {
    await new ExperimentDeleter({ store, log, signal }).resumePending();
  } catch (err) {
    if (!signal?.aborted) log.error('cannot resume experiment deletions', { err: errorMessage(err) });
  }
}
