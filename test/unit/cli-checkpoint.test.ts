// det checkpoint list | describe | download and det experiment delete against a fake master (a
// real gRPC server on 127.0.0.1:0), downloading from a real shared_fs checkpoint on disk.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { manifestKey } from '../../common/checkpoints/layout';
import { buildManifest } from '../../common/checkpoints/manifest';
import { SharedFsStorage } from '../../common/storage';
import { main, type CliIO } from '../../cli/main';
import { cannedCluster, clusterHandlers, mock, startFakeMaster, type FakeCluster, type FakeMaster } from '../support/fake-master';

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function det(args: string[], io: Partial<CliIO> = {}): Promise<Result> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), env: {}, now: () => 1_700_000_200_000, ...io });
  return { code, stdout, stderr };
}

describe('det checkpoint and det experiment delete', () => {
  let cluster: FakeCluster;
  let fake: FakeMaster;
  let m: string[];
  let tmp: string;

  beforeEach(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'det-cli-ckpt-'));
    cluster = cannedCluster();
    cluster.experiments.push({
      experiment: mock.experiment({ id: 2, name: 'done', state: 'EXPERIMENT_STATE_COMPLETED', numTrials: 1 }),
      trials: [mock.trial({ id: 9, experimentId: 2, state: 'TRIAL_STATE_COMPLETED' })],
    });
    cluster.checkpoints = [
      mock.checkpoint({ uuid: 'ckpt-a', experimentId: 2, trialId: 9, name: 'step-100', totalSize: 1536, fileCount: 2 }),
      mock.checkpoint({
        uuid: 'ckpt-b', experimentId: 2, trialId: 9, name: 'step-200', totalSize: 3 * 1024 ** 3, fileCount: 12, state: 'CHECKPOINT_STATE_DELETED',
        storage: { type: 'shared_fs', hostPath: '/mnt/ckpts', bucket: '', prefix: '', region: '', endpointUrl: '', forcePathStyle: false }, location: '/mnt/ckpts/ckpt-b/.det-manifest.json',
      }),
    ];
    fake = await startFakeMaster(clusterHandlers(cluster));
    m = ['-m', fake.address];
  });
  afterEach(async () => {
    await fake.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const calls = (method: string) => fake.calls.filter((c) => c.method === method).map((c) => c.request);

  it('checkpoint list prints a table and --json, and needs --experiment or --trial', async () => {
    const r = await det([...m, 'checkpoint', 'list', '--experiment', '2']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      [
        ' UUID   | Trial | Name     | Size    | Files | State     | Location',
        '--------+-------+----------+---------+-------+-----------+' + '-'.repeat(45),
        ' ckpt-a |     9 | step-100 | 1.5 KiB |     2 | COMPLETED | s3://ckpts/exp/ckpt-0001/.det-manifest.json',
        ' ckpt-b |     9 | step-200 | 3.0 GiB |    12 | DELETED   | /mnt/ckpts/ckpt-b/.det-manifest.json',
        '',
      ].join('\n'),
    );
    const j = await det([...m, 'c', 'ls', '-t', '9', '--json']);
    const views = JSON.parse(j.stdout) as Record<string, unknown>[];
    assert.deepEqual(views[0], {
      uuid: 'ckpt-a', experimentId: 2, trialId: 9, allocationId: 'alloc-7', name: 'step-100', state: 'COMPLETED', createdAtMs: 1_700_000_050_000,
      reportedAtMs: 1_700_000_051_000, totalSize: 1536, fileCount: 2, metadata: { step: 100 }, location: 's3://ckpts/exp/ckpt-0001/.det-manifest.json',
      storage: { type: 's3', bucket: 'ckpts', prefix: 'exp' },
    });
    assert.deepEqual(views[1].storage, { type: 'shared_fs', host_path: '/mnt/ckpts' });
    assert.deepEqual(calls('ListCheckpoints'), [{ experimentId: 2, trialId: 0 }, { experimentId: 0, trialId: 9 }]);

    const none = await det([...m, 'checkpoint', 'list']);
    assert.deepEqual(none, { code: 2, stdout: '', stderr: 'det: say whose checkpoints to list: --experiment <experiment-id> or --trial <trial-id>\n' });
    const missing = await det([...m, 'checkpoint', 'list', '-e', '99']);
    assert.deepEqual(missing, { code: 1, stdout: '', stderr: 'det: experiment 99 not found\n' });
  });

  it('checkpoint describe shows every field, and an unknown uuid in one line', async () => {
    const r = await det([...m, 'checkpoint', 'describe', 'ckpt-a']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Size: +1\.5 KiB \(1536 bytes\)$/m);
    assert.match(r.stdout, /^Storage: +\{"type":"s3","bucket":"ckpts","prefix":"exp"\}$/m);
    assert.match(r.stdout, /^Metadata: +\{"step":100\}$/m);
    assert.deepEqual(await det([...m, 'checkpoint', 'describe', 'nope']), { code: 1, stdout: '', stderr: 'det: checkpoint nope not found\n' });
  });

  it('checkpoint download refuses a non-empty target before asking anyone, and a DELETED checkpoint', async () => {
    fs.writeFileSync(path.join(tmp, 'taken'), 'x');
    const busy = await det([...m, 'checkpoint', 'download', 'ckpt-a', tmp]);
    assert.deepEqual(busy, { code: 1, stdout: '', stderr: `det: cannot download into ${tmp}: the directory is not empty (1 entries); choose a new or empty directory\n` });
    const file = path.join(tmp, 'taken');
    assert.equal((await det([...m, 'checkpoint', 'download', 'ckpt-a', file])).stderr, `det: cannot download into ${file}: it exists and is not a directory\n`);
    assert.equal(fake.calls.length, 0);

    const deleted = await det([...m, 'checkpoint', 'download', 'ckpt-b', path.join(tmp, 'new')]);
    assert.equal(deleted.code, 1);
    assert.match(deleted.stderr, /^det: checkpoint ckpt-b is DELETED: its files are gone from storage/);
    assert.ok(!fs.existsSync(path.join(tmp, 'new')));
  });

  it('checkpoint download from shared_fs draws a progress bar on a terminal and writes identical files', async () => {
    // A checkpoint as an agent stores it: files, then the manifest last.
    const src = path.join(tmp, 'src');
    const files: Record<string, Buffer> = { 'w.bin': Buffer.alloc(50_000, 7), 'd/x.txt': Buffer.from('x'), 'd/y.txt': Buffer.from('') };
    for (const [rel, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
      fs.writeFileSync(path.join(src, rel), content);
    }
    const manifest = await buildManifest(src, { uuid: 'ckpt-fs', trialId: 9, allocationId: 'a', name: 'step-1', createdAtMs: 1 });
    const hostPath = path.join(tmp, 'storage');
    const storage = new SharedFsStorage({ hostPath });
    for (const f of manifest.files) await storage.put(f.key, fs.readFileSync(path.join(src, f.path)));
    await storage.put(manifestKey('ckpt-fs'), Buffer.from(JSON.stringify(manifest)));
    cluster.checkpoints!.push(
      mock.checkpoint({ uuid: 'ckpt-fs', experimentId: 2, trialId: 9, storage: { type: 'shared_fs', hostPath, bucket: '', prefix: '', region: '', endpointUrl: '', forcePathStyle: false } }),
    );

    const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 120 });
    let drawn = '';
    terminal.on('data', (d: Buffer) => (drawn += d.toString()));
    const target = path.join(tmp, 'out', 'ckpt');
    const r = await det([...m, 'checkpoint', 'download', 'ckpt-fs', target], { progressStream: terminal });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual([r.stdout, r.stderr], [`Downloaded checkpoint ckpt-fs to ${target}\n`, '']);
    assert.match(drawn, /Downloading \[[=-]+\] 100% \| 48\.8 KiB \/ 48\.8 KiB \| 3\/3 files/);
    for (const [rel, content] of Object.entries(files)) assert.deepEqual(fs.readFileSync(path.join(target, rel)), content, rel);
    assert.deepEqual(fs.readdirSync(target).sort(), ['d', 'w.bin']);
  });

  it('experiment delete asks on a terminal (or needs --yes), and prints what went', async () => {
    const none = await det([...m, 'experiment', 'delete', '2']);
    assert.deepEqual(none, { code: 2, stdout: '', stderr: 'det: not deleting experiment 2 without confirmation: no terminal to ask on; pass --yes\n' });

    const asked: string[] = [];
    const no = await det([...m, 'e', 'delete', '2'], { confirm: async (q) => (asked.push(q), false) });
    assert.deepEqual([no.code, no.stdout], [0, 'Experiment 2 was not deleted\n']);
    assert.deepEqual(asked, ['Delete experiment 2 (done, COMPLETED, 1 trial(s)) and its 1 checkpoint(s) (1.5 KiB) from storage? This cannot be undone. [y/N] ']);
    assert.equal(calls('DeleteExperiment').length, 0);

    const yes = await det([...m, 'e', 'delete', '2'], { confirm: async () => true });
    assert.deepEqual(yes, { code: 0, stdout: 'Deleted experiment 2: 2 checkpoint(s), 16 object(s) removed from storage\n', stderr: '' });
    assert.deepEqual(calls('DeleteExperiment'), [{ experimentId: 2 }]);

    // A running experiment: no question, the master's refusal in one line.
    asked.length = 0;
    const active = await det([...m, 'e', 'delete', '1'], { confirm: async (q) => (asked.push(q), true) });
    assert.deepEqual(active, { code: 1, stdout: '', stderr: 'det: experiment 1 is ACTIVE; kill it first (det experiment kill 1)\n' });
    assert.deepEqual(asked, []);
  });
});
