// The agent's container manager with checkpoints: a fake container runtime (the container is the
// test), real files, real shared_fs checkpoint storage and the real uploader/downloader. What
// reaches the master, in which order, and what the container is given on a restart.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ContainerManager } from '../../agent/containers/manager';
import { prepareTask, type TaskFilesDeps } from '../../agent/containers/task-files';
import { Outbox } from '../../agent/session/outbox';
import { readManifest } from '../../common/checkpoints/download';
import { createLogger } from '../../common/log';
import { SharedFsStorage } from '../../common/storage';
import type { AgentToMaster, CheckpointReport, TaskSpec } from '../../common/types';
import { waitFor } from '../support/env';
import { FakeRuntime, type FakeRun } from '../support/fake-runtime';
import { testTaskFiles } from '../support/task-files';

describe('agent: checkpoints of task containers (fake runtime, real files)', function () {
  this.timeout(30_000);
  let storeDir: string;
  let sent: AgentToMaster[];
  let runtime: FakeRuntime;
  let manager: ContainerManager;
  let workDir: string;
  let files: TaskFilesDeps;
  let seq = 0;

  beforeEach(() => {
    storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-agent-ckpt-store-'));
    sent = [];
    const outbox = new Outbox();
    outbox.attach({ write: (m) => (sent.push(m), true), drained: async () => undefined });
    const log = createLogger('agent', { level: 'error', sink: () => undefined });
    // A long rescan period: checkpoints are found by inotify, flush() or the exit.
    files = testTaskFiles(log, { rescanIntervalMs: 60_000 });
    workDir = files.workDir;
    runtime = new FakeRuntime();
    manager = new ContainerManager(runtime, { clusterId: 'c', agentId: 'a', networkMode: 'host', devices: [] }, outbox, log, files);
  });
  afterEach(async () => {
    await manager.stopAll();
  });

  function spec(o: Partial<TaskSpec> = {}): TaskSpec {
    seq++;
    return {
      taskId: `t${seq}`, allocationId: `t${seq}.0`, image: 'img', entrypoint: [], command: [], env: {}, deviceIds: [], deviceType: 'cpu', memoryLimitBytes: 0,
      pullPolicy: 'missing', labels: {}, killGracePeriodMs: 0, trialId: 40 + seq, checkpointStorage: { type: 'shared_fs', host_path: storeDir }, data: [], latestCheckpointUuid: '',
      ...o,
    };
  }

  /** The host side of the container's DET_CHECKPOINT_DIR. */
  const hostCheckpointDir = (run: FakeRun) => run.spec.mounts!.find((m) => m.containerPath === run.spec.env.DET_CHECKPOINT_DIR)!.hostPath;

  /** Writes a complete checkpoint the way a trial does (marker last). */
  function writeCheckpoint(run: FakeRun | string, name: string, files: Record<string, string>, metadata?: object): void {
    const dir = path.join(typeof run === 'string' ? run : hostCheckpointDir(run), name);
    for (const [rel, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
      fs.writeFileSync(path.join(dir, rel), content);
    }
    if (metadata) fs.writeFileSync(path.join(dir, '.det-metadata.json'), JSON.stringify(metadata));
    fs.writeFileSync(path.join(dir, '.det-complete'), '');
  }

  const reports = (): CheckpointReport[] => sent.flatMap((m) => (m.kind === 'checkpoint' ? [m.checkpoint] : []));
  const kinds = (allocationId: string) =>
    sent.flatMap((m) => (m.kind === 'checkpoint' && m.checkpoint.allocationId === allocationId ? ['checkpoint'] : m.kind === 'containerState' && m.allocationId === allocationId ? [m.state] : []));
  const agentLines = (allocationId: string) => sent.flatMap((m) => (m.kind === 'logs' && m.allocationId === allocationId ? m.lines.map((l) => l.text) : []));

  it('gives the container a writable DET_CHECKPOINT_DIR and no DET_LATEST_CHECKPOINT on a first run', async () => {
    const s = spec();
    manager.start(s);
    const run = await runtime.waitForRun(s.allocationId);
    assert.equal(run.spec.env.DET_CHECKPOINT_DIR, '/det/checkpoints');
    assert.equal(run.spec.env.DET_LATEST_CHECKPOINT, undefined);
    assert.deepEqual(run.spec.mounts!.map((m) => [m.containerPath, m.readOnly]), [['/det/checkpoints', false]]);
    assert.equal(fs.statSync(hostCheckpointDir(run)).mode & 0o777, 0o777);
    run.finish({ exitCode: 0, failureKind: 'NONE', message: '' });
  });

  it('a checkpoint completed just before the exit is stored and reported before TERMINATED', async () => {
    const s = spec();
    manager.start(s);
    const run = await runtime.waitForRun(s.allocationId);
    run.state('RUNNING', 'ctr');
    writeCheckpoint(run, 'step-1', { 'model.bin': 'weights-1', 'nested/opt.bin': 'opt' }, { step: 1 });
    run.finish({ exitCode: 0, failureKind: 'NONE', message: '' });
    await waitFor(() => kinds(s.allocationId).includes('TERMINATED'), { what: 'TERMINATED' });
    assert.deepEqual(kinds(s.allocationId), ['PULLING', 'RUNNING', 'checkpoint', 'TERMINATED']);
    const [r] = reports();
    assert.equal(r.name, 'step-1');
    assert.equal(r.fileCount, 2);
    assert.equal(r.totalSize, 'weights-1'.length + 'opt'.length);
    assert.deepEqual(r.metadata, { step: 1 });
    const m = await readManifest(new SharedFsStorage({ hostPath: storeDir }), r.uuid);
    assert.equal(m.trialId, s.trialId);
    assert.deepEqual(m.files.map((f) => f.path), ['model.bin', 'nested/opt.bin']);
    assert.ok(agentLines(s.allocationId).some((l) => l.startsWith(`checkpoint step-1 stored as ${r.uuid}`)));
    // Everything stored: the allocation's files are gone from the agent.
    await waitFor(() => !fs.existsSync(path.join(workDir, 'allocations', s.allocationId)), { what: 'the allocation directory to be removed' });
  });

  it('after a re-registration the reports of stored checkpoints are sent again (a broken stream may have lost them), only for allocations the master expects', async () => {
    const s = spec();
    manager.start(s);
    const run = await runtime.waitForRun(s.allocationId);
    run.state('RUNNING', 'ctr');
    writeCheckpoint(run, 'step-1', { 'w.bin': 'one' });
    await manager.flushCheckpoints();
    const [first] = reports();
    assert.equal(first.name, 'step-1');
    manager.reconcile([s.allocationId]);
    await waitFor(() => reports().length === 2, { what: 'the report sent again' });
    assert.deepEqual(reports()[1], first, 'the same checkpoint (same uuid), not a new one');
    // Only what was stored: a second checkpoint adds one report, and each re-registration repeats both.
    writeCheckpoint(run, 'step-2', { 'w.bin': 'two' });
    await manager.flushCheckpoints();
    manager.reconcile([s.allocationId]);
    await waitFor(() => reports().length === 5, { what: 'two reports sent again' });
    assert.deepEqual(reports().map((r) => r.name), ['step-1', 'step-1', 'step-2', 'step-1', 'step-2']);
    run.finish({ exitCode: 0, failureKind: 'NONE', message: '' });
    await waitFor(() => kinds(s.allocationId).includes('TERMINATED'), { what: 'TERMINATED' });
    manager.reconcile([]);
    assert.equal(reports().length, 5, 'nothing is sent for an allocation the master no longer expects');
  });

  it('flushCheckpoints (spot notice) stores completed checkpoints while the container keeps running', async () => {
    const s = spec();
    manager.start(s);
    const run = await runtime.waitForRun(s.allocationId);
    run.state('RUNNING', 'ctr');
    writeCheckpoint(run, 'before-reclaim', { 'w.bin': 'x'.repeat(1000) });
    await manager.flushCheckpoints();
    assert.equal(reports().length, 1);
    assert.equal(reports()[0].name, 'before-reclaim');
    assert.equal(run.finished, false);
    run.finish({ exitCode: 0, failureKind: 'NONE', message: '' });
    await waitFor(() => kinds(s.allocationId).includes('TERMINATED'), { what: 'TERMINATED' });
    assert.equal(reports().length, 1, 'a stored checkpoint is not stored again at exit');
  });

  it('a directory without the marker is never stored', async () => {
    const s = spec();
    manager.start(s);
    const run = await runtime.waitForRun(s.allocationId);
    fs.mkdirSync(path.join(hostCheckpointDir(run), 'half'));
    fs.writeFileSync(path.join(hostCheckpointDir(run), 'half', 'w.bin'), 'partial');
    run.finish({ exitCode: 1, failureKind: 'EXIT_NONZERO', message: 'exit status 1' });
    await waitFor(() => kinds(s.allocationId).includes('TERMINATED'), { what: 'TERMINATED' });
    assert.deepEqual(reports(), []);
    assert.deepEqual(fs.readdirSync(storeDir), []);
  });

  it('a restart gets the latest checkpoint read-only at DET_LATEST_CHECKPOINT, and unchanged files are not stored twice', async () => {
    const first = spec();
    manager.start(first);
    const run1 = await runtime.waitForRun(first.allocationId);
    writeCheckpoint(run1, 'step-1', { 'model.bin': 'weights-1', 'vocab.txt': 'the vocabulary' });
    run1.finish({ exitCode: 3, failureKind: 'EXIT_NONZERO', message: 'exit status 3' });
    await waitFor(() => reports().length === 1 && kinds(first.allocationId).includes('TERMINATED'), { what: 'the first attempt to end' });
    const uuid = reports()[0].uuid;

    const second = spec({ taskId: first.taskId, allocationId: `${first.taskId}.1`, trialId: first.trialId, latestCheckpointUuid: uuid });
    manager.start(second);
    const run2 = await runtime.waitForRun(second.allocationId);
    assert.equal(run2.spec.env.DET_LATEST_CHECKPOINT, '/det/latest_checkpoint');
    const latest = run2.spec.mounts!.find((m) => m.containerPath === '/det/latest_checkpoint')!;
    assert.equal(latest.readOnly, true);
    assert.equal(fs.readFileSync(path.join(latest.hostPath, 'model.bin'), 'utf8'), 'weights-1');
    assert.equal(fs.readFileSync(path.join(latest.hostPath, 'vocab.txt'), 'utf8'), 'the vocabulary');
    assert.ok(agentLines(second.allocationId).some((l) => l.startsWith('restored checkpoint step-1')));

    writeCheckpoint(run2, 'step-2', { 'model.bin': 'weights-2', 'vocab.txt': 'the vocabulary' });
    run2.finish({ exitCode: 0, failureKind: 'NONE', message: '' });
    await waitFor(() => reports().length === 2, { what: 'the second checkpoint' });
    const m2 = await readManifest(new SharedFsStorage({ hostPath: storeDir }), reports()[1].uuid);
    const vocab = m2.files.find((f) => f.path === 'vocab.txt')!;
    assert.equal(vocab.key, `${uuid}/vocab.txt`, 'the unchanged file points at the first checkpoint');
    assert.equal(m2.files.find((f) => f.path === 'model.bin')!.key, `${reports()[1].uuid}/model.bin`);
  });

  it('after an agent restart: checkpoints stored before are reported again, not stored twice; one written meanwhile is stored (with dedupe against the restored one) before TERMINATED', async () => {
    // Attempt 0 stores step-0, so that attempt 1 starts from it.
    const first = spec();
    manager.start(first);
    const run0 = await runtime.waitForRun(first.allocationId);
    writeCheckpoint(run0, 'step-0', { 'model.bin': 'weights-0', 'vocab.txt': 'the vocabulary' });
    run0.finish({ exitCode: 1, failureKind: 'EXIT_NONZERO', message: 'exit status 1' });
    await waitFor(() => reports().length === 1 && kinds(first.allocationId).includes('TERMINATED'), { what: 'attempt 0 to end' });
    const uuid0 = reports()[0].uuid;

    // Attempt 1 under an agent run that is then SIGKILLed: prepared and saved as the manager does,
    // step-1 stored and reported, and then nothing more from that agent.
    const s = spec({ taskId: first.taskId, allocationId: `${first.taskId}.1`, trialId: first.trialId, latestCheckpointUuid: uuid0 });
    const earlier: CheckpointReport[] = [];
    const prepared = await prepareTask(s, files, () => undefined, async (c) => void earlier.push(c), new AbortController().signal);
    await prepared.save();
    const hostDir = path.join(prepared.dir, 'checkpoints');
    prepared.checkpoints.start();
    writeCheckpoint(hostDir, 'step-1', { 'model.bin': 'weights-1', 'vocab.txt': 'the vocabulary' });
    await prepared.checkpoints.finish();
    assert.deepEqual(earlier.map((c) => c.name), ['step-1']);
    // While no agent runs, the trial completes step-2.
    writeCheckpoint(hostDir, 'step-2', { 'model.bin': 'weights-2', 'vocab.txt': 'the vocabulary' });

    // The restarted agent finds the container, reports it, and resumes it once the master expects it.
    runtime.managed = [{ allocationId: s.allocationId, taskId: s.taskId, containerId: 'ctr-1', running: true, exitCode: null }];
    await manager.adopt('a');
    assert.deepEqual(
      manager.reports().filter((r) => r.allocationId === s.allocationId),
      [{ allocationId: s.allocationId, containerId: 'ctr-1', state: 'RUNNING', lastLogSequence: 0, exit: undefined }],
    );
    manager.reconcile([s.allocationId]);
    const run = await runtime.waitForRun(s.allocationId);
    assert.deepEqual(run.options, { adoptOnly: true });
    assert.deepEqual(run.spec, prepared.spec);
    run.finish({ exitCode: 0, failureKind: 'NONE', message: 'exited with code 0' });
    await waitFor(() => kinds(s.allocationId).includes('TERMINATED'), { what: 'TERMINATED of attempt 1' });

    assert.deepEqual(kinds(s.allocationId), ['checkpoint', 'checkpoint', 'TERMINATED']);
    const [again, step2] = reports().filter((c) => c.allocationId === s.allocationId);
    assert.deepEqual(again, earlier[0], 'step-1 is reported again as it was (the master ignores a repeat)');
    assert.equal(step2.name, 'step-2');
    const stored = fs.readdirSync(storeDir).sort();
    assert.deepEqual(stored, [uuid0, earlier[0].uuid, step2.uuid].sort(), 'step-1 was not stored a second time');
    const m2 = await readManifest(new SharedFsStorage({ hostPath: storeDir }), step2.uuid);
    assert.equal(m2.files.find((f) => f.path === 'vocab.txt')!.key, `${uuid0}/vocab.txt`, 'the restored checkpoint is still known for dedupe');
    await waitFor(() => !fs.existsSync(prepared.dir), { what: 'the allocation directory to be removed' });
  });

  it('a checkpoint that cannot be restored fails the start with the reason', async () => {
    const s = spec({ latestCheckpointUuid: '00000000-0000-4000-8000-000000000000' });
    manager.start(s);
    await waitFor(() => kinds(s.allocationId).includes('TERMINATED'), { what: 'TERMINATED' });
    const exit = sent.flatMap((m) => (m.kind === 'containerState' && m.state === 'TERMINATED' ? [m.exit] : []))[0]!;
    assert.equal(exit.failureKind, 'START_FAILED');
    assert.match(exit.message, /cannot restore checkpoint 00000000-0000-4000-8000-000000000000: .*(no manifest|does not exist)/);
    assert.equal(runtime.runs.length, 0, 'no container was started');
  });
});
