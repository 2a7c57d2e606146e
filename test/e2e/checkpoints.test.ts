// End to end: data inputs in, checkpoints out, resume after a restart, download and delete, with
// real det-master, det-agent and det processes, real Docker and the s3rver S3 server on 127.0.0.1.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { awsCli, s3TestProcessEnv } from '../support/awscli';
import { testEnv, waitFor } from '../support/env';
import { det, startAgent, startMaster, type DetProcess, type TestMaster } from '../support/processes';
import { createTestBucket, deleteTestBucket, testS3Client } from '../support/s3';

// A trial that checkpoints and then fails on its first run, and on its restart shows what it got.
const TRIAL_SCRIPT = `
set -e
if [ -n "$DET_LATEST_CHECKPOINT" ]; then
  echo "resumed from $(cat "$DET_LATEST_CHECKPOINT/state.txt")"
  echo "copy: $(cat "$DET_LATEST_CHECKPOINT/sub/copy.txt")"
  exit 0
fi
echo "data: $(cat /data/mnist/train.txt)"
mkdir -p "$DET_CHECKPOINT_DIR/step-1/sub"
cp /data/mnist/train.txt "$DET_CHECKPOINT_DIR/step-1/sub/copy.txt"
echo step-1 > "$DET_CHECKPOINT_DIR/step-1/state.txt"
echo '{"step": 1, "loss": 0.5}' > "$DET_CHECKPOINT_DIR/step-1/.det-metadata.json"
touch "$DET_CHECKPOINT_DIR/step-1/.det-complete"
exit 3
`;

describe('e2e: checkpoints and data on S3', function () {
  this.timeout(180_000);
  const env = testEnv();
  const awsEnv = s3TestProcessEnv();
  let s3: S3Client;
  let ckptBucket: string;
  let dataBucket: string;
  let master: TestMaster;
  let agent: DetProcess;
  let workDir: string;
  const m = () => ['-m', master.address];

  const storageYaml = () => `{type: s3, bucket: ${ckptBucket}, prefix: team-a, endpoint_url: "${env.s3Endpoint}", force_path_style: true}`;
  const experimentYaml = (name: string) => `
name: ${name}
image: ${env.image}
max_restarts: 2
checkpoint_storage: ${storageYaml()}
data:
  - source: s3://${dataBucket}/mnist/
    target: /data/mnist
    endpoint_url: "${env.s3Endpoint}"
    force_path_style: true
entrypoint: ["sh", "-c", ${JSON.stringify(TRIAL_SCRIPT)}]
`;
  const create = async (yaml: string) => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-ckpt-')), 'exp.yaml');
    fs.writeFileSync(file, yaml);
    const r = await det([...m(), 'experiment', 'create', file, '--follow']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return { id: Number(/Created experiment (\d+)/.exec(r.stdout)![1]), out: r.stdout };
  };
  const keysUnder = async (bucket: string, prefix: string) => {
    const out = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key!).sort();
  };

  before(async () => {
    s3 = testS3Client();
    ckptBucket = await createTestBucket(s3, 'e2e-ckpt');
    dataBucket = await createTestBucket(s3, 'e2e-data');
    // The data is written by awscli: what the trial sees must be exactly that.
    const src = fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-data-'));
    fs.writeFileSync(path.join(src, 'train.txt'), 'written by awscli\n');
    await awsCli('s3', 'cp', path.join(src, 'train.txt'), `s3://${dataBucket}/mnist/train.txt`);
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-agent-work-'));
    // The master deletes checkpoints itself: it needs credentials for the storage too.
    master = await startMaster([], awsEnv);
    agent = await startAgent(master, env.dockerSocket, { args: ['--cpu-slots', '1', '--slot-type', 'cpu', '--work-dir', workDir], env: awsEnv });
  });
  after(async () => {
    await agent?.stop();
    await master?.proc.stop();
    await deleteTestBucket(s3, ckptBucket);
    await deleteTestBucket(s3, dataBucket);
    s3.destroy();
  });

  let experimentId = 0;
  let uuid = '';

  it('syncs data in, stores the checkpoint, and the restarted trial resumes from it', async () => {
    const r = await create(experimentYaml('resume'));
    experimentId = r.id;
    assert.match(r.out, /data: written by awscli/);
    assert.match(r.out, /resumed from step-1/);
    assert.match(r.out, /copy: written by awscli/);
    const exp = JSON.parse((await det([...m(), '--json', 'experiment', 'describe', String(experimentId)])).stdout);
    assert.equal(exp.experiment.state, 'COMPLETED');
    assert.equal(exp.trials[0].restarts, 1);
  });

  it('lists the checkpoint with its manifest summary and user metadata', async () => {
    const r = await det([...m(), '--json', 'checkpoint', 'list', '--experiment', String(experimentId)]);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout);
    assert.equal(list.length, 1);
    const c = list[0];
    uuid = c.uuid;
    assert.equal(c.name, 'step-1');
    assert.equal(c.state, 'COMPLETED');
    assert.equal(c.fileCount, 2);
    assert.equal(c.totalSize, 'step-1\n'.length + 'written by awscli\n'.length);
    assert.deepEqual(c.metadata, { step: 1, loss: 0.5 });
    assert.equal(c.location, `s3://${ckptBucket}/team-a/${uuid}/.det-manifest.json`);
    const table = await det([...m(), 'checkpoint', 'list', '--experiment', String(experimentId)]);
    assert.match(table.stdout, new RegExp(`${uuid}.*step-1`));
  });

  it('stores plain objects that awscli reads', async () => {
    const ls = (await awsCli('s3', 'ls', '--recursive', `s3://${ckptBucket}/team-a/${uuid}/`)).stdout.toString();
    assert.match(ls, /state\.txt/);
    assert.match(ls, /sub\/copy\.txt/);
    assert.match(ls, /\.det-manifest\.json/);
    const state = (await awsCli('s3', 'cp', `s3://${ckptBucket}/team-a/${uuid}/state.txt`, '-')).stdout.toString();
    assert.equal(state, 'step-1\n');
  });

  it('det checkpoint download writes the files, verified', async () => {
    const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'det-e2e-dl-')), 'ckpt');
    const r = await det([...m(), 'checkpoint', 'download', uuid, dir], awsEnv);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(fs.readFileSync(path.join(dir, 'state.txt'), 'utf8'), 'step-1\n');
    assert.equal(fs.readFileSync(path.join(dir, 'sub', 'copy.txt'), 'utf8'), 'written by awscli\n');
  });

  it('a second experiment on the same agent reuses the data cache', async () => {
    const r = await create(experimentYaml('resume-again'));
    assert.match(r.out, /data: written by awscli/);
    const exp = JSON.parse((await det([...m(), '--json', 'experiment', 'describe', String(r.id)])).stdout);
    const logs = (await det([...m(), 'trial', 'logs', String(exp.trials[0].id)])).stdout;
    assert.match(logs, /1 cached/, logs);
  });

  it('det experiment delete removes the checkpoint objects, then the metadata', async () => {
    assert.ok((await keysUnder(ckptBucket, `team-a/${uuid}/`)).length > 0);
    const r = await det([...m(), 'experiment', 'delete', String(experimentId), '--yes']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.deepEqual(await keysUnder(ckptBucket, `team-a/${uuid}/`), []);
    const d = await det([...m(), 'experiment', 'describe', String(experimentId)]);
    assert.notEqual(d.code, 0);
    assert.match(d.stderr, /experiment \d+ not found/);
    const gone = await det([...m(), 'checkpoint', 'list', '--experiment', String(experimentId)]);
    assert.doesNotMatch(gone.stdout, new RegExp(uuid));
  });

  it('cleans up the allocation directories on the agent', async () => {
    await waitFor(() => fs.readdirSync(path.join(workDir, 'allocations')).length === 0, { what: 'allocation directories to be removed' });
  });
});
