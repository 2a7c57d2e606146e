// Deletes a checkpoint's objects from checkpoint storage (the master, when it deletes an
// experiment: all checkpoints of all its trials, see layout.ts for why only whole experiments).
// The manifest goes first, so that the checkpoint stops existing as a whole before any of its
// files disappear; an interrupted delete leaves files without a manifest, which is no checkpoint
// and is removed by the next call.
import { DetError, errorMessage } from '../errors';
import type { CheckpointStorage } from '../storage';
import { checkpointPrefix, manifestKey } from './layout';
import { withRetries } from './transfer';

/** Keys deleted per storage request (S3 allows 1000). */
const DELETE_BATCH = 1000;

/**
 * Deletes checkpoint `uuid`: its manifest first, then every object under `${uuid}/`. Idempotent
 * (a missing checkpoint deletes nothing); resolves with the number of objects deleted. Transient
 * storage errors are retried with backoff; anything else throws a DetError naming the checkpoint.
 */
export async function deleteCheckpointObjects(storage: CheckpointStorage, uuid: string, signal?: AbortSignal): Promise<number> {
  const mKey = manifestKey(uuid);
  const prefix = checkpointPrefix(uuid);
  const retry = <T>(op: () => Promise<T>) => withRetries(op, { signal });
  try {
    let deleted = 0;
    if (await retry(() => storage.head(mKey, signal))) {
      await retry(() => storage.delete([mKey], signal));
      deleted++;
    }
    const keys: string[] = [];
    await retry(async () => {
      keys.length = 0;
      for await (const o of storage.list(prefix, signal)) if (o.key !== mKey) keys.push(o.key);
    });
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      await retry(() => storage.delete(batch, signal));
      deleted += batch.length;
    }
    return deleted;
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    const code = err instanceof DetError ? err.code : 'DET_ERR_INTERNAL';
    throw new DetError(code, `cannot delete checkpoint ${uuid} at ${storage.location(prefix.slice(0, -1))}: ${errorMessage(err)}`);
  }
}
