// The checkpoint registry's admin API and experiment deletion against an in-process master, with
// real checkpoints (files + manifest written last) in s3rver and in a shared_fs directory, and the
// built det CLI downloading them as a user would.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import type { S3Client } from '@aws-sdk/client-s3';
import { manifestKey } from '../../common/checkpoints/layout';
import { buildManifest, type Manifest } from '../../common/checkpoints/manifest';
import { ERROR_CODE_METADATA_KEY } from '../../common/errors';
import { openCheckpointStorage, type CheckpointStorage } from '../../common/storage';
import type { CheckpointStorageSpec } from '../../common/types';
import type { Checkpoint__Output } from '../../common/proto-gen/determined/api/v1/Checkpoint';
import type { DeleteExperimentResponse__Output } from '../../common/proto-gen/determined/api/v1/DeleteExperimentResponse';
import type { GetExperimentResponse__Output } from '../../common/proto-gen/determined/api/v1/GetExperimentResponse';
import type { CheckpointRecord, ExperimentState, NewTrial } from '../../master/store/store';
import { rpc } from '../support/admin-api';
import { testEnv } from '../support/env';
import { startInProcessMaster, type InProcessMaster } from '../support/in-process-master';
import { det } from '../support/processes';
import { createTestBucket, deleteTestBucket, S3RVER_CREDENTIALS, S3_TEST_REGION, testS3Client } from '../support/s3';

/** The master's (and the CLI's) AWS default chain: s3rver's credentials, no instance metadata lookups. */
const AWS_ENV = {
  AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
  AWS_REGION: S3_TEST_REGION,
  AWS_EC2_METADATA_DISABLED: 'true',
};

/** A gRPC failure with its registered code. */
interface CallError {
  code: grpc.status;
  details: string;
  detCode: string;
}

async function callError(p: Promise<unknown>): Promise<CallError> {
  try {
    await p;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return { code: e.code, details: e.details, detCode: String(e.metadata?.get(ERROR_CODE_METADATA_KEY)[0] ?? '') };
  }
  throw new assert.AssertionError({ message: 'expected the call to fail' });
}

function newTrial(): NewTrial {
  return { state: 'COMPLETED', hparams: { lr: 0.1 }, restarts: 0, allocationId: null, agentId: null, slotIds: [], exitCode: 0, message: '', createdAtMs: 1_700_000_000_000, endedAtMs: 1_700_000_100_000 };
}

describe('checkpoint API and experiment deletion (in-process master, s3rver, shared_fs)', function () {
  this.timeout(120_000);
  let root = '';
  let m: InProcessMaster;
  let s3: S3Client;
  let bucket = '';
  let sharedDir = '';
  let seq = 0;
  const envBefore: Record<string, string | undefined> = {};
  const opened: CheckpointStorage[] = [];

  before(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'det-ckpt-api-'));
    sharedDir = path.join(root, 'shared-ckpts');
    s3 = testS3Client();
    bucket = await createTestBucket(s3, 'ckpt-api');
    for (const [k, v] of Object.entries(AWS_ENV)) {
      envBefore[k] = process.env[k];
      process.env[k] = v;
    }
    m = await startInProcessMaster({ dbFile: path.join(root, 'master.db'), token: 'tok', clusterName: 'ckpt-api', pools: [{ name: 'default', description: '' }] });
  });

  after(async () => {
    await m?.stop();
    for (const s of opened) (s as { destroy?(): void }).destroy?.();
    if (bucket) await deleteTestBucket(s3, bucket);
    s3?.destroy();
    for (const [k, v] of Object.entries(envBefore)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    fs.rmSync(root, { recursive: true, force: true });
  });

  const s3Spec = (prefix: string, over: Partial<Extract<CheckpointStorageSpec, { type: 's3' }>> = {}): CheckpointStorageSpec => ({
    type: 's3', bucket, prefix, region: S3_TEST_REGION, endpoint_url: testEnv().s3Endpoint, force_path_style: true, ...over,
  });
  const fsSpec = (): CheckpointStorageSpec => ({ type: 'shared_fs', host_path: sharedDir });

  /** The storage of a spec as the test sees it (explicit s3rver credentials). */
  function storageOf(spec: CheckpointStorageSpec): CheckpointStorage {
    const s = openCheckpointStorage(spec, { credentials: S3RVER_CREDENTIALS });
    opened.push(s);
    return s;
  }

  async function keysUnder(spec: CheckpointStorageSpec, uuid: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const o of storageOf(spec).list(`${uuid}/`)) keys.push(o.key);
    return keys.sort();
  }

  /** An ended experiment (or one in `state`) with `trials` trials, straight into the master's store. */
  async function experiment(trials = 1, state: ExperimentState = 'COMPLETED'): Promise<{ id: number; trialIds: number[] }> {
    const { experiment: e, trials: ts } = await m.store.createExperiment(
      { name: `exp-${++seq}`, state, configYaml: 'name: x\n', config: {}, resourcePool: 'default', priority: 42, killRequested: false, createdAtMs: Date.now(), endedAtMs: null },
      Array.from({ length: trials }, newTrial),
    );
    return { id: e.id, trialIds: ts.map((t) => t.id) };
  }

  interface Stored {
    record: CheckpointRecord;
    manifest: Manifest;
    /** The checkpoint directory as the trial wrote it. */
    dir: string;
  }

  /**
   * Stores a checkpoint as an agent does (every file, then the manifest last) in `writeTo`, and records it in the
   * master's registry with `recordAs` as its storage (default: the same).
   */
  async function checkpoint(
    exp: { id: number; trialIds: number[] },
    writeTo: CheckpointStorageSpec,
    opts: { trial?: number; files?: Record<string, string | Buffer>; recordAs?: CheckpointStorageSpec; createdAtMs?: number } = {},
  ): Promise<Stored> {
    const uuid = `ckpt-${process.pid}-${++seq}`;
    const trialId = opts.trial ?? exp.trialIds[0];
    const dir = path.join(root, 'written', uuid);
    const files = opts.files ?? { 'model.bin': Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31) % 251)), 'opt/state.json': `{"uuid":"${uuid}"}`, 'empty.txt': '' };
    for (const [rel, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
      fs.writeFileSync(path.join(dir, rel), content);
    }
    fs.writeFileSync(path.join(dir, '.det-metadata.json'), JSON.stringify({ step: seq, note: 'Ünï' }));
    const createdAtMs = opts.createdAtMs ?? 1_700_000_000_000 + seq;
    const manifest = await buildManifest(dir, { uuid, trialId, allocationId: `${exp.id}.${trialId}.1`, name: `step-${seq}`, createdAtMs });
    const storage = storageOf(writeTo);
    for (const f of manifest.files) await storage.put(f.key, fs.readFileSync(path.join(dir, f.path)));
    await storage.put(manifestKey(uuid), Buffer.from(JSON.stringify(manifest)));
    const record: CheckpointRecord = {
      uuid, experimentId: exp.id, trialId, allocationId: manifest.allocationId, name: manifest.name, state: 'COMPLETED', createdAtMs,
      reportedAtMs: createdAtMs + 10, totalSize: manifest.totalSize, fileCount: manifest.files.length, metadata: manifest.metadata,
      storage: opts.recordAs ?? writeTo, location: storage.location(manifestKey(uuid)),
    };
    assert.equal(await m.store.addCheckpoint(record), true);
    return { record, manifest, dir };
  }

  const listCheckpoints = (experimentId: number, trialId = 0) =>
    rpc<{ checkpoints: Checkpoint__Output[] }>((cb) => m.api.ListCheckpoints({ experimentId, trialId }, cb)).then((r) => r.checkpoints);
  const getCheckpoint = (uuid: string) => rpc<{ checkpoint: Checkpoint__Output | null }>((cb) => m.api.GetCheckpoint({ uuid }, cb)).then((r) => r.checkpoint!);
  const deleteExperiment = (experimentId: number) => rpc<DeleteExperimentResponse__Output>((cb) => m.api.DeleteExperiment({ experimentId }, { deadline: Date.now() + 100_000 }, cb));
  const getExperiment = (experimentId: number) => rpc<GetExperimentResponse__Output>((cb) => m.api.GetExperiment({ experimentId }, cb));

  it('ListCheckpoints and GetCheckpoint serve the registry, with the storage config to read from', async () => {
    const exp = await experiment(2);
    const other = await experiment(1);
    const late = await checkpoint(exp, s3Spec('team/a'), { trial: exp.trialIds[1], createdAtMs: 1_700_000_900_000 });
    const early = await checkpoint(exp, fsSpec(), { createdAtMs: 1_700_000_000_001 });
    await checkpoint(other, s3Spec('team/b'));

    const listed = await listCheckpoints(exp.id);
    assert.deepEqual(listed.map((c) => c.uuid), [early.record.uuid, late.record.uuid]);
    assert.deepEqual((await listCheckpoints(exp.id, exp.trialIds[1])).map((c) => c.uuid), [late.record.uuid]);
    assert.deepEqual((await listCheckpoints(0, exp.trialIds[0])).map((c) => c.uuid), [early.record.uuid]);

    const got = await getCheckpoint(late.record.uuid);
    assert.deepEqual(got, {
      uuid: late.record.uuid, experimentId: exp.id, trialId: exp.trialIds[1], allocationId: late.record.allocationId, name: late.record.name,
      state: 'CHECKPOINT_STATE_COMPLETED', createdAtMs: 1_700_000_900_000, reportedAtMs: 1_700_000_900_010, totalSize: late.manifest.totalSize,
      fileCount: 3, metadataJson: JSON.stringify(late.manifest.metadata), location: `s3://${bucket}/team/a/${late.record.uuid}/.det-manifest.json`,
      storage: { type: 's3', hostPath: '', bucket, prefix: 'team/a', region: S3_TEST_REGION, endpointUrl: testEnv().s3Endpoint, forcePathStyle: true },
    });
    assert.equal(got.totalSize, late.manifest.totalSize);
    assert.deepEqual((await getCheckpoint(early.record.uuid)).storage, { type: 'shared_fs', hostPath: sharedDir, bucket: '', prefix: '', region: '', endpointUrl: '', forcePathStyle: false });
    assert.equal((await getCheckpoint(early.record.uuid)).location, path.join(sharedDir, early.record.uuid, '.det-manifest.json'));

    const unknown = await callError(getCheckpoint('no-such-checkpoint'));
    assert.deepEqual([unknown.code, unknown.detCode], [grpc.status.NOT_FOUND, 'DET_ERR_CHECKPOINT_NOT_FOUND']);
    assert.match(unknown.details, /checkpoint no-such-checkpoint not found/);
    const noExp = await callError(listCheckpoints(999_999));
    assert.deepEqual([noExp.code, noExp.detCode], [grpc.status.NOT_FOUND, 'DET_ERR_EXPERIMENT_NOT_FOUND']);
    const mismatch = await callError(listCheckpoints(other.id, exp.trialIds[0]));
    assert.deepEqual([mismatch.code, mismatch.details], [grpc.status.INVALID_ARGUMENT, `trial ${exp.trialIds[0]} belongs to experiment ${exp.id}, not ${other.id}`]);
  });

  it('DeleteExperiment deletes the objects of every checkpoint, then every row; other experiments keep theirs', async () => {
    const exp = await experiment(2);
    const other = await experiment(1);
    const a = await checkpoint(exp, s3Spec('del'));
    const b = await checkpoint(exp, s3Spec('del'), { trial: exp.trialIds[1] });
    const c = await checkpoint(exp, fsSpec());
    const kept = await checkpoint(other, s3Spec('del'));
    const keptShared = await checkpoint(other, fsSpec());
    await m.store.appendTrialLogs(exp.trialIds[0], [{ allocationId: 'x', timestampMs: 1, stream: 'stdout', text: 'hello' }]);
    assert.equal((await keysUnder(s3Spec('del'), a.record.uuid)).length, 4);

    const res = await deleteExperiment(exp.id);
    assert.deepEqual(res, { checkpointsDeleted: 3, objectsDeleted: 3 * 4 });

    for (const s of [a, b]) assert.deepEqual(await keysUnder(s3Spec('del'), s.record.uuid), []);
    assert.deepEqual(await keysUnder(fsSpec(), c.record.uuid), []);
    assert.equal(await m.store.getExperiment(exp.id), undefined);
    assert.deepEqual(await m.store.listCheckpoints({ experimentId: exp.id }), []);
    for (const t of exp.trialIds) assert.equal(await m.store.getTrial(t), undefined);
    assert.deepEqual(await m.store.trialLogs(exp.trialIds[0], 0, 10), []);
    const gone = await callError(getExperiment(exp.id));
    assert.deepEqual([gone.code, gone.detCode], [grpc.status.NOT_FOUND, 'DET_ERR_EXPERIMENT_NOT_FOUND']);
    assert.equal((await callError(getCheckpoint(a.record.uuid))).code, grpc.status.NOT_FOUND);

    // The other experiment is untouched, in storage and in the registry.
    assert.equal((await keysUnder(s3Spec('del'), kept.record.uuid)).length, 4);
    assert.equal((await keysUnder(fsSpec(), keptShared.record.uuid)).length, 4);
    assert.deepEqual((await listCheckpoints(other.id)).map((x) => x.uuid).sort(), [kept.record.uuid, keptShared.record.uuid].sort());
    assert.equal((await getExperiment(other.id)).experiment?.state, 'EXPERIMENT_STATE_COMPLETED');

    const again = await callError(deleteExperiment(exp.id));
    assert.deepEqual([again.code, again.detCode], [grpc.status.NOT_FOUND, 'DET_ERR_EXPERIMENT_NOT_FOUND']);
  });

  it('DeleteExperiment refuses an experiment that still runs, deleting nothing', async () => {
    const exp = await experiment(1, 'ACTIVE');
    const a = await checkpoint(exp, s3Spec('active'));
    const err = await callError(deleteExperiment(exp.id));
    assert.deepEqual(err, {
      code: grpc.status.FAILED_PRECONDITION,
      detCode: 'DET_ERR_EXPERIMENT_NOT_ENDED',
      details: `experiment ${exp.id} is ACTIVE; kill it first (det experiment kill ${exp.id})`,
    });
    assert.equal((await keysUnder(s3Spec('active'), a.record.uuid)).length, 4);
    assert.equal((await m.store.getExperiment(exp.id))?.state, 'ACTIVE');
    assert.equal((await getCheckpoint(a.record.uuid)).state, 'CHECKPOINT_STATE_COMPLETED');
  });

  it('a storage failure leaves the experiment DELETE_FAILED with its rows; after the fix a retry continues and finishes', async () => {
    const exp = await experiment(1);
    const first = await checkpoint(exp, s3Spec('flaky'), { createdAtMs: 1_600_000_000_001 });
    // Stored in s3rver, but recorded with an endpoint where nothing listens.
    const broken = await checkpoint(exp, s3Spec('flaky'), { createdAtMs: 1_600_000_000_002, recordAs: s3Spec('flaky', { endpoint_url: 'http://127.0.0.1:1' }) });
    const last = await checkpoint(exp, fsSpec(), { createdAtMs: 1_600_000_000_003 });

    const err = await callError(deleteExperiment(exp.id));
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    assert.equal(err.detCode, 'DET_ERR_CHECKPOINT_DELETE');
    assert.ok(err.details.startsWith(`cannot delete checkpoint ${broken.record.uuid} (trial ${exp.trialIds[0]}) of experiment ${exp.id} from s3://${bucket}/flaky at http://127.0.0.1:1: `), err.details);
    assert.match(err.details, /ECONNREFUSED/);
    assert.match(err.details, new RegExp(`Experiment ${exp.id} is DELETE_FAILED with 2 checkpoint\\(s\\) and all its metadata kept; fix the storage, then run det experiment delete ${exp.id} again`));
    for (const secret of [S3RVER_CREDENTIALS.accessKeyId, S3RVER_CREDENTIALS.secretAccessKey]) assert.ok(!err.details.includes(secret), err.details);

    // Newest first: the one deleted checkpoint is marked, the others (with their objects) and every row are kept.
    assert.equal((await getExperiment(exp.id)).experiment?.state, 'EXPERIMENT_STATE_DELETE_FAILED');
    assert.deepEqual((await listCheckpoints(exp.id)).map((c) => [c.uuid, c.state]), [
      [first.record.uuid, 'CHECKPOINT_STATE_COMPLETED'],
      [broken.record.uuid, 'CHECKPOINT_STATE_COMPLETED'],
      [last.record.uuid, 'CHECKPOINT_STATE_DELETED'],
    ]);
    assert.equal((await keysUnder(s3Spec('flaky'), first.record.uuid)).length, 4);
    assert.equal((await keysUnder(s3Spec('flaky'), broken.record.uuid)).length, 4);
    assert.deepEqual(await keysUnder(fsSpec(), last.record.uuid), []);
    assert.ok(await m.store.getTrial(exp.trialIds[0]));

    // The operator fixes the recorded endpoint; deleting again continues with what is left.
    const db = new Database(path.join(root, 'master.db'));
    try {
      db.prepare('UPDATE checkpoints SET storage = ? WHERE uuid = ?').run(JSON.stringify(s3Spec('flaky')), broken.record.uuid);
    } finally {
      db.close();
    }
    assert.deepEqual(await deleteExperiment(exp.id), { checkpointsDeleted: 2, objectsDeleted: 8 });
    assert.deepEqual(await keysUnder(s3Spec('flaky'), broken.record.uuid), []);
    assert.deepEqual(await keysUnder(s3Spec('flaky'), first.record.uuid), []);
    assert.equal(await m.store.getExperiment(exp.id), undefined);
    assert.deepEqual(await m.store.listCheckpoints({ experimentId: exp.id }), []);
  });

  describe('the built det CLI', () => {
    const cli = (args: string[]) => det(['-m', m.address, ...args], AWS_ENV, 60_000);

    /** Every file under `dir` (relative path -> content). */
    function tree(dir: string): Map<string, Buffer> {
      const out = new Map<string, Buffer>();
      const walk = (d: string) => {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) walk(p);
          else out.set(path.relative(dir, p), fs.readFileSync(p));
        }
      };
      walk(dir);
      return out;
    }

    it('checkpoint list prints the registry; download writes files identical to the stored ones, from S3 and shared_fs', async () => {
      const exp = await experiment(1);
      const files = { 'model/weights.bin': Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7 + 3) % 256)), 'config.yaml': 'lr: 0.1\n', 'd/e/f/deep.txt': 'deep' };
      const inS3 = await checkpoint(exp, s3Spec('cli'), { files });
      const inFs = await checkpoint(exp, fsSpec(), { files: { 'only.txt': 'shared' } });

      const list = await cli(['checkpoint', 'list', '--experiment', String(exp.id)]);
      assert.equal(list.code, 0, list.stderr);
      const lines = list.stdout.trimEnd().split('\n');
      assert.match(lines[0], /^ UUID +\| Trial \| Name +\| Size +\| Files \| State +\| Location/);
      assert.equal(lines.length, 4);
      assert.match(lines[2], new RegExp(`^ ${inS3.record.uuid} +\\| +${exp.trialIds[0]} \\| ${inS3.record.name} +\\| 293\\.0 KiB \\| +3 \\| COMPLETED \\| s3://${bucket}/cli/${inS3.record.uuid}/\\.det-manifest\\.json`));
      assert.match(lines[3], new RegExp(`^ ${inFs.record.uuid} .*\\| 6 B +\\| +1 \\| COMPLETED \\| ${sharedDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      const json = await cli(['checkpoint', 'list', '--trial', String(exp.trialIds[0]), '--json']);
      assert.deepEqual((JSON.parse(json.stdout) as { uuid: string; storage: unknown }[]).map((c) => [c.uuid, c.storage]), [
        [inS3.record.uuid, s3Spec('cli')],
        [inFs.record.uuid, fsSpec()],
      ]);

      for (const stored of [inS3, inFs]) {
        const target = path.join(root, 'downloads', stored.record.uuid);
        const res = await cli(['checkpoint', 'download', stored.record.uuid, target]);
        assert.equal(res.code, 0, res.stderr);
        assert.equal(res.stdout, `Downloaded checkpoint ${stored.record.uuid} to ${target}\n`);
        // stderr is not a terminal: one summary line instead of a bar.
        assert.equal(res.stderr, `${stored.manifest.files.length}/${stored.manifest.files.length} files, ${stored.record.totalSize === 6 ? '6 B' : '293.0 KiB'} downloaded and verified against the manifest\n`);
        const want = tree(stored.dir);
        want.delete('.det-metadata.json');
        assert.deepEqual(tree(target), want);
      }

      // A non-empty target is refused before anything is fetched, in one line.
      const busy = path.join(root, 'downloads', inS3.record.uuid);
      const refused = await cli(['checkpoint', 'download', inS3.record.uuid, busy]);
      assert.equal(refused.code, 1);
      assert.equal(refused.stderr, `det: cannot download into ${busy}: the directory is not empty (3 entries); choose a new or empty directory\n`);
      const unknown = await cli(['checkpoint', 'download', 'nope', path.join(root, 'downloads', 'nope')]);
      assert.equal(unknown.code, 1);
      assert.match(unknown.stderr, /^det: checkpoint nope not found/);
      assert.ok(!fs.existsSync(path.join(root, 'downloads', 'nope')));
      const noSelection = await cli(['checkpoint', 'list']);
      assert.equal(noSelection.code, 2);
      assert.match(noSelection.stderr, /--experiment <experiment-id> or --trial <trial-id>/);
    });

    it('experiment delete asks for --yes without a terminal, then deletes and says what went', async () => {
      const exp = await experiment(1);
      const a = await checkpoint(exp, s3Spec('cli-del'));
      const b = await checkpoint(exp, fsSpec());

      const unconfirmed = await cli(['experiment', 'delete', String(exp.id)]);
      assert.equal(unconfirmed.code, 2);
      assert.match(unconfirmed.stderr, new RegExp(`^det: not deleting experiment ${exp.id} without confirmation: .*pass --yes\\n$`));
      assert.ok(await m.store.getExperiment(exp.id));

      const res = await cli(['experiment', 'delete', String(exp.id), '--yes']);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(res.stdout, `Deleted experiment ${exp.id}: 2 checkpoint(s), 8 object(s) removed from storage\n`);
      assert.deepEqual(await keysUnder(s3Spec('cli-del'), a.record.uuid), []);
      assert.deepEqual(await keysUnder(fsSpec(), b.record.uuid), []);
      const missing = await cli(['experiment', 'describe', String(exp.id)]);
      assert.equal(missing.code, 1);

      const running = await experiment(1, 'ACTIVE');
      const refused = await cli(['experiment', 'delete', String(running.id), '--yes']);
      assert.equal(refused.code, 1);
      assert.equal(refused.stderr, `det: experiment ${running.id} is ACTIVE; kill it first (det experiment kill ${running.id})\n`);
    });
  });
});
