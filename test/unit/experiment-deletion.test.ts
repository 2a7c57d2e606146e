// The experiment deletion flow (master/checkpoints/deletion.ts) on a real SQLite store and real
// shared_fs checkpoints, with failures injected through its storage port.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { deleteCheckpointObjects } from '../../common/checkpoints/delete';
import { DetError } from '../../common/errors';
import { openCheckpointStorage } from '../../common/storage';
import type { CheckpointStorageSpec } from '../../common/types';
import {
  DELETABLE_STATES,
  describeStorage,
  ExperimentDeleter,
  notDeletableError,
  pendingCheckpoints,
  type DeletionStorage,
} from '../../master/checkpoints/deletion';
import { openSqliteStore } from '../../master/store/sqlite';
import type { CheckpointRecord, ExperimentState, Store } from '../../master/store/store';

const NO_WAIT = { baseMs: 0, maxMs: 0, jitter: 0 };

describe('experiment deletion', () => {
  let root: string;
  let store: Store;
  let ckptDir: string;
  let spec: CheckpointStorageSpec;
  let seq = 0;
  /** uuid -> errors thrown by the next deleteObjects calls of that checkpoint, in order. */
  let failures: Map<string, Error[]>;
  let calls: string[];
  /** Runs before a checkpoint's objects are deleted (to simulate a late report). */
  let beforeDelete: ((uuid: string) => Promise<void>) | undefined;

  const storage: DeletionStorage = {
    open: (s) => openCheckpointStorage(s),
    deleteObjects: async (s, uuid, signal) => {
      calls.push(uuid);
      await beforeDelete?.(uuid);
      const next = failures.get(uuid)?.shift();
      if (next) throw next;
      return deleteCheckpointObjects(s, uuid, signal);
    },
  };
  const deleter = (over: Partial<ConstructorParameters<typeof ExperimentDeleter>[0]> = {}) => new ExperimentDeleter({ store, storage, attempts: 2, backoff: NO_WAIT, ...over });

  beforeEach(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'det-deletion-'));
    ckptDir = path.join(root, 'ckpts');
    spec = { type: 'shared_fs', host_path: ckptDir };
    store = await openSqliteStore(':memory:');
    failures = new Map();
    calls = [];
    beforeDelete = undefined;
  });
  afterEach(async () => {
    await store.close();
    fs.rmSync(root, { recursive: true, force: true });
  });

  async function experiment(state: ExperimentState = 'COMPLETED'): Promise<{ id: number; trialId: number }> {
    const { experiment: e, trials } = await store.createExperiment(
      { name: 'e', state, configYaml: '', config: {}, resourcePool: 'default', priority: 42, killRequested: false, createdAtMs: 1, endedAtMs: null },
      [{ state: 'COMPLETED', hparams: {}, restarts: 0, allocationId: null, agentId: null, slotIds: [], exitCode: 0, message: '', createdAtMs: 1, endedAtMs: 2 }],
    );
    return { id: e.id, trialId: trials[0].id };
  }

  /** A checkpoint with two files and a manifest on disk, recorded in the store. */
  async function checkpoint(exp: { id: number; trialId: number }, createdAtMs = ++seq): Promise<CheckpointRecord> {
    const uuid = `c${++seq}`;
    for (const f of ['a.bin', 'sub/b.bin', '.det-manifest.json']) {
      fs.mkdirSync(path.dirname(path.join(ckptDir, uuid, f)), { recursive: true });
      fs.writeFileSync(path.join(ckptDir, uuid, f), uuid);
    }
    const rec: CheckpointRecord = {
      uuid, experimentId: exp.id, trialId: exp.trialId, allocationId: 'a', name: uuid, state: 'COMPLETED', createdAtMs, reportedAtMs: createdAtMs,
      totalSize: 2, fileCount: 2, metadata: {}, storage: spec, location: uuid,
    };
    await store.addCheckpoint(rec);
    return rec;
  }
  const onDisk = (uuid: string) => fs.existsSync(path.join(ckptDir, uuid));

  it('allows ended experiments and unfinished deletions only, saying what to do otherwise', () => {
    const all: ExperimentState[] = ['ACTIVE', 'STOPPING_CANCELED', 'COMPLETED', 'CANCELED', 'ERROR', 'DELETING', 'DELETE_FAILED'];
    assert.deepEqual(all.filter((s) => notDeletableError(7, s) === undefined), ['COMPLETED', 'CANCELED', 'ERROR', 'DELETING', 'DELETE_FAILED']);
    assert.deepEqual([...DELETABLE_STATES].sort(), ['CANCELED', 'COMPLETED', 'DELETE_FAILED', 'DELETING', 'ERROR']);
    assert.equal(notDeletableError(7, 'ACTIVE')?.message, 'experiment 7 is ACTIVE; kill it first (det experiment kill 7)');
    assert.equal(notDeletableError(7, 'ACTIVE')?.code, 'DET_ERR_EXPERIMENT_NOT_ENDED');
    assert.match(notDeletableError(7, 'STOPPING_CANCELED')!.message, /^experiment 7 is STOPPING_CANCELED; wait until its trials have stopped/);
  });

  it('describes storage without credentials and skips DELETED checkpoints', () => {
    assert.equal(describeStorage({ type: 's3', bucket: 'b', prefix: 'p/q', endpoint_url: 'http://127.0.0.1:1' }), 's3://b/p/q at http://127.0.0.1:1');
    assert.equal(describeStorage({ type: 's3', bucket: 'b' }), 's3://b');
    assert.equal(describeStorage({ type: 'shared_fs', host_path: '/mnt/c' }), '/mnt/c');
    const rec = { state: 'COMPLETED' } as CheckpointRecord;
    assert.deepEqual(pendingCheckpoints([rec, { ...rec, state: 'DELETED' }]), [rec]);
  });

  it('deletes every checkpoint, then the rows; concurrent calls share one run', async () => {
    const exp = await experiment();
    const a = await checkpoint(exp);
    const b = await checkpoint(exp);
    const d = deleter();
    const [r1, r2] = await Promise.all([d.delete(exp.id), d.delete(exp.id)]);
    assert.deepEqual(r1, { checkpointsDeleted: 2, objectsDeleted: 6 });
    assert.equal(r2, r1);
    assert.deepEqual(calls, [b.uuid, a.uuid], 'newest first');
    assert.ok(!onDisk(a.uuid) && !onDisk(b.uuid));
    assert.equal(await store.getExperiment(exp.id), undefined);
    assert.deepEqual(await store.listCheckpoints({}), []);
  });

  it('also deletes a checkpoint reported while the deletion runs, before the rows go', async () => {
    const exp = await experiment();
    const a = await checkpoint(exp);
    let late: CheckpointRecord | undefined;
    beforeDelete = async (uuid) => {
      if (uuid === a.uuid && !late) late = await checkpoint(exp);
    };
    assert.deepEqual(await deleter().delete(exp.id), { checkpointsDeleted: 2, objectsDeleted: 6 });
    assert.deepEqual(calls, [a.uuid, late!.uuid]);
    assert.ok(!onDisk(late!.uuid));
  });

  it('retries a transient failure and then succeeds', async () => {
    const exp = await experiment();
    const a = await checkpoint(exp);
    failures.set(a.uuid, [new DetError('DET_ERR_INTERNAL', 'cannot delete x: cannot reach S3 at http://s3 (ECONNRESET)')]);
    assert.deepEqual(await deleter().delete(exp.id), { checkpointsDeleted: 1, objectsDeleted: 3 });
    assert.deepEqual(calls, [a.uuid, a.uuid]);
  });

  it('stops at a permanent failure: DELETE_FAILED, rows kept, and a later delete continues', async () => {
    const exp = await experiment('CANCELED');
    const a = await checkpoint(exp);
    const b = await checkpoint(exp);
    const c = await checkpoint(exp);
    failures.set(b.uuid, [new DetError('DET_ERR_INTERNAL', 'cannot stat s3://x/y: access denied (AccessDenied (HTTP 403)); check that the credentials allow it')]);
    const d = deleter();
    await assert.rejects(d.delete(exp.id), (err: DetError) => {
      assert.equal(err.code, 'DET_ERR_CHECKPOINT_DELETE');
      assert.equal(
        err.message,
        `cannot delete checkpoint ${b.uuid} (trial ${exp.trialId}) of experiment ${exp.id} from ${ckptDir}: ` +
          'cannot stat s3://x/y: access denied (AccessDenied (HTTP 403)); check that the credentials allow it. ' +
          `Experiment ${exp.id} is DELETE_FAILED with 2 checkpoint(s) and all its metadata kept; fix the storage, then run det experiment delete ${exp.id} again to continue`,
      );
      return true;
    });
    assert.deepEqual(calls, [c.uuid, b.uuid], 'newest first; a permanent error is not retried');
    assert.equal((await store.getExperiment(exp.id))?.state, 'DELETE_FAILED');
    // What is left are the oldest checkpoints: complete, since dedupe only points at earlier ones.
    assert.deepEqual((await store.listCheckpoints({ experimentId: exp.id })).map((x) => x.state), ['COMPLETED', 'COMPLETED', 'DELETED']);
    assert.ok(onDisk(a.uuid) && onDisk(b.uuid) && !onDisk(c.uuid));

    calls = [];
    assert.deepEqual(await d.delete(exp.id), { checkpointsDeleted: 2, objectsDeleted: 6 });
    assert.deepEqual(calls, [b.uuid, a.uuid]);
    assert.equal(await store.getExperiment(exp.id), undefined);
  });

  it('refuses running and unknown experiments without touching anything', async () => {
    const exp = await experiment('ACTIVE');
    const a = await checkpoint(exp);
    await assert.rejects(deleter().delete(exp.id), { code: 'DET_ERR_EXPERIMENT_NOT_ENDED' });
    await assert.rejects(deleter().delete(exp.id + 100), { code: 'DET_ERR_EXPERIMENT_NOT_FOUND', message: `experiment ${exp.id + 100} not found` });
    assert.deepEqual(calls, []);
    assert.ok(onDisk(a.uuid));
    assert.equal((await store.getExperiment(exp.id))?.state, 'ACTIVE');
  });

  it('an abort (master shutdown) leaves the experiment DELETING; resumePending finishes DELETING ones only', async () => {
    const interrupted = await experiment();
    const x = await checkpoint(interrupted);
    const y = await checkpoint(interrupted);
    const failed = await experiment();
    await checkpoint(failed);
    await store.updateExperiment(failed.id, { state: 'DELETE_FAILED' });

    const shutdown = new AbortController();
    beforeDelete = async (uuid) => {
      if (uuid === x.uuid) shutdown.abort(new Error('received SIGTERM'));
    };
    await assert.rejects(deleter({ signal: shutdown.signal }).delete(interrupted.id), /received SIGTERM/);
    assert.equal((await store.getExperiment(interrupted.id))?.state, 'DELETING');
    assert.ok(onDisk(x.uuid) && !onDisk(y.uuid));

    beforeDelete = undefined;
    calls = [];
    await deleter().resumePending();
    assert.deepEqual(calls, [x.uuid]);
    assert.equal(await store.getExperiment(interrupted.id), undefined);
    assert.equal((await store.getExperiment(failed.id))?.state, 'DELETE_FAILED', 'a failed deletion waits for the user');
  });
});
