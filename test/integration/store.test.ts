// One contract suite for the master's Store, run against both backends: SQLite
// in a temp dir and the real PostgreSQL of the test environment (each test in a
// fresh schema of its own). Backend-only behaviour (data dir, unreachable
// server) is tested after the shared suite.
import { strict as assert } from 'node:assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Client, Pool } from 'pg';
import { DetError, type ErrorCode } from '../../common/errors';
import { openStore } from '../../master/store';
import { LATEST_SCHEMA_VERSION, MIGRATIONS, SCHEMA_MIGRATIONS_DDL } from '../../master/store/migrations';
import { openPostgresStore } from '../../master/store/postgres';
import { openSqliteStore } from '../../master/store/sqlite';
import type {
  AgentRecord,
  AllocationRecord,
  CheckpointRecord,
  NewExperiment,
  NewTrial,
  Store,
  StoreKind,
  TrialLogRecord,
  TrialState,
} from '../../master/store/store';
import { testEnv, waitFor } from '../support/env';

type Row = Record<string, unknown>;

/** One empty database for one test. */
interface Target {
  /** Opens a Store on this database (as a master would). */
  open(): Promise<Store>;
  /** Raw SQL on this database, bypassing the Store. */
  query(sql: string): Promise<Row[]>;
  /** Runs a script of several statements (no results), bypassing the Store. */
  exec(script: string): Promise<void>;
  /** Deletes the database. */
  drop(): Promise<void>;
}

/** A backend under test. */
interface Backend {
  kind: StoreKind;
  /** A new, empty database. */
  fresh(): Promise<Target>;
}

// --- fixtures

function newExperiment(over: Partial<NewExperiment> = {}): NewExperiment {
  return {
    name: 'mnist',
    state: 'ACTIVE',
    configYaml: 'name: mnist\nresources:\n  slots_per_trial: 2\n',
    config: { name: 'mnist', resources: { slots_per_trial: 2, pool: null }, tags: ['a', 'b'], nested: { deep: [1, 2.5, { x: true }] } },
    resourcePool: 'default',
    priority: 42,
    killRequested: false,
    createdAtMs: 1_700_000_000_123,
    endedAtMs: null,
    ...over,
  };
}

function newTrial(over: Partial<NewTrial> = {}): NewTrial {
  return {
    state: 'QUEUED',
    hparams: { lr: 0.001, layers: [64, 32], optimizer: { name: 'adam', beta: 0.9 } },
    restarts: 0,
    allocationId: null,
    agentId: null,
    slotIds: [],
    exitCode: null,
    message: '',
    createdAtMs: 1_700_000_000_456,
    endedAtMs: null,
    ...over,
  };
}

function allocation(trialId: number, taskId: string, over: Partial<AllocationRecord> = {}): AllocationRecord {
  return {
    id: `alloc-${trialId}-1`,
    trialId,
    taskId,
    agentId: 'agent-1',
    slotIds: [0, 3],
    state: 'ASSIGNED',
    containerId: '',
    createdAtMs: 1_700_000_001_000,
    endedAtMs: null,
    exitCode: null,
    failureKind: null,
    message: '',
    ...over,
  };
}

function agent(id: string, over: Partial<AgentRecord> = {}): AgentRecord {
  return {
    id,
    resourcePool: 'default',
    version: '0.1.0',
    hostname: `${id}.internal`,
    devices: [
      { id: 0, brand: 'NVIDIA H200', uuid: 'GPU-0', type: 'cuda', memoryMib: 143_771 },
      { id: 1, brand: 'NVIDIA H200', uuid: 'GPU-1', type: 'cuda', memoryMib: 143_771 },
    ],
    labels: { zone: 'us-east-1a', 'ai.det/spot': 'true' },
    enabled: true,
    disabledReason: '',
    disabledSlots: [],
    registeredAtMs: 1_700_000_002_000,
    lastSeenMs: 1_700_000_003_000,
    ...over,
  };
}

function line(text: string, over: Partial<Omit<TrialLogRecord, 'trialId' | 'sequence'>> = {}): Omit<TrialLogRecord, 'trialId' | 'sequence'> {
  return { allocationId: 'alloc-1', timestampMs: 1_700_000_004_000, stream: 'stdout', text, ...over };
}

function checkpoint(experimentId: number, trialId: number, uuid: string, over: Partial<CheckpointRecord> = {}): CheckpointRecord {
  return {
    uuid,
    experimentId,
    trialId,
    allocationId: `${experimentId}.${trialId}.1`,
    name: `step-${uuid}`,
    state: 'COMPLETED',
    createdAtMs: 1_700_000_005_000,
    reportedAtMs: 1_700_000_005_500,
    totalSize: 2 ** 40 + 7,
    fileCount: 3,
    metadata: { step: 100, loss: 0.25, tags: ['best', 'Ünï'], nested: { ok: true, none: null } },
    storage: { type: 's3', bucket: 'det-ckpts', prefix: 'team/a', region: 'eu-west-1', endpoint_url: 'http://127.0.0.1:4569', force_path_style: true },
    location: `s3://det-ckpts/team/a/${uuid}/.det-manifest.json`,
    ...over,
  };
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** Asserts that `p` rejects with a DetError of `code` and returns it. */
async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<DetError> {
  let caught: unknown;
  await assert.rejects(p, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof DetError, `expected a DetError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

// --- the shared contract

function storeContract(backend: Backend): void {
  describe(`Store contract (${backend.kind})`, () => {
    let target: Target;
    let opened: Store[];

    beforeEach(async () => {
      target = await backend.fresh();
      opened = [];
    });

    afterEach(async () => {
      for (const s of opened) await s.close();
      await target.drop();
    });

    async function open(): Promise<Store> {
      const s = await target.open();
      opened.push(s);
      return s;
    }

    /** An experiment with `n` QUEUED trials. */
    async function seed(s: Store, n = 2): Promise<{ experimentId: number; trialIds: number[] }> {
      const { experiment, trials } = await s.createExperiment(newExperiment(), range(1, n).map(() => newTrial()));
      return { experimentId: experiment.id, trialIds: trials.map((t) => t.id) };
    }

    it('reports its kind', async () => {
      assert.equal((await open()).kind, backend.kind);
    });

    it('applies migrations once, however often it is reopened', async () => {
      const first = await open();
      await first.close();
      const again = await open();
      await again.close();
      await open();
      const rows = await target.query('SELECT version, name FROM schema_migrations ORDER BY version');
      assert.deepEqual(
        rows.map((r) => ({ version: Number(r.version), name: r.name })),
        MIGRATIONS.map((m) => ({ version: m.version, name: m.name })),
      );
    });

    it('keeps the cluster id across reopen', async () => {
      const first = await open();
      const id = await first.clusterId();
      assert.match(id, /^[0-9a-f-]{36}$/);
      assert.equal(await first.clusterId(), id);
      await first.close();
      assert.equal(await (await open()).clusterId(), id);
    });

    it('lets two masters open a new database at once: one migration, one cluster id', async () => {
      const [a, b] = await Promise.all([target.open(), target.open()]);
      opened.push(a, b);
      assert.equal(await a.clusterId(), await b.clusterId());
      const rows = await target.query('SELECT version FROM schema_migrations');
      assert.equal(rows.length, MIGRATIONS.length);
    });

    it('round-trips an experiment and its trials with every field, deriving task ids', async () => {
      const s = await open();
      const exp = newExperiment({ state: 'STOPPING_CANCELED', killRequested: true, endedAtMs: 1_700_000_009_999, priority: -3 });
      const trialInputs = [
        newTrial(),
        newTrial({
          state: 'RUNNING',
          hparams: { lr: 1e-5, empty: {}, list: [], flag: false, nothing: null, big: 2 ** 52 },
          restarts: 2,
          allocationId: 'alloc-x',
          agentId: 'agent-7',
          slotIds: [4, 5, 6, 7],
          exitCode: 137,
          message: 'OOM killed; retrying',
          endedAtMs: 1_700_000_008_000,
        }),
      ];
      const created = await s.createExperiment(exp, trialInputs);

      assert.ok(Number.isInteger(created.experiment.id) && created.experiment.id > 0);
      assert.deepEqual(created.experiment, { id: created.experiment.id, ...exp });
      assert.deepEqual(await s.getExperiment(created.experiment.id), created.experiment);

      assert.equal(created.trials.length, 2);
      created.trials.forEach((t, i) => {
        assert.equal(typeof t.id, 'number');
        assert.deepEqual(t, { ...trialInputs[i], id: t.id, experimentId: created.experiment.id, taskId: `${created.experiment.id}.${t.id}` });
      });
      assert.notEqual(created.trials[0].id, created.trials[1].id);
      assert.deepEqual(await s.listTrials(created.experiment.id), created.trials);
      for (const t of created.trials) assert.deepEqual(await s.getTrial(t.id), t);

      // Reads come from the database, not from a cache: a reopened store agrees.
      await s.close();
      const reopened = await open();
      assert.deepEqual(await reopened.getExperiment(created.experiment.id), created.experiment);
      assert.deepEqual(await reopened.listTrials(created.experiment.id), created.trials);
    });

    it('creates an experiment without trials, and answers undefined or [] for unknown ids', async () => {
      const s = await open();
      const { experiment, trials } = await s.createExperiment(newExperiment(), []);
      assert.deepEqual(trials, []);
      assert.deepEqual(await s.listTrials(experiment.id), []);
      assert.equal(await s.getExperiment(experiment.id + 1000), undefined);
      assert.equal(await s.getTrial(12345), undefined);
      assert.equal(await s.getAllocation('nope'), undefined);
      assert.deepEqual(await s.listTrials(999), []);
    });

    it('lists experiments newest first', async () => {
      const s = await open();
      const ids: number[] = [];
      for (const name of ['first', 'second', 'third']) ids.push((await s.createExperiment(newExperiment({ name }), [])).experiment.id);
      const listed = await s.listExperiments();
      assert.deepEqual(listed.map((e) => e.name), ['third', 'second', 'first']);
      assert.deepEqual(listed.map((e) => e.id), [...ids].reverse());
    });

    it('updateExperiment changes only the given fields', async () => {
      const s = await open();
      const { experiment } = await s.createExperiment(newExperiment(), [newTrial()]);
      const other = (await s.createExperiment(newExperiment({ name: 'other' }), [])).experiment;

      await s.updateExperiment(experiment.id, { state: 'STOPPING_CANCELED' });
      assert.deepEqual(await s.getExperiment(experiment.id), { ...experiment, state: 'STOPPING_CANCELED' });

      await s.updateExperiment(experiment.id, { killRequested: true, endedAtMs: 1_700_000_100_000, state: 'CANCELED' });
      const ended = { ...experiment, state: 'CANCELED' as const, killRequested: true, endedAtMs: 1_700_000_100_000 };
      assert.deepEqual(await s.getExperiment(experiment.id), ended);

      // An explicit null clears; an empty patch changes nothing.
      await s.updateExperiment(experiment.id, { endedAtMs: null });
      await s.updateExperiment(experiment.id, {});
      assert.deepEqual(await s.getExperiment(experiment.id), { ...ended, endedAtMs: null });
      assert.deepEqual(await s.getExperiment(other.id), other);

      await rejectsWith(s.updateExperiment(other.id + 1000, { state: 'ERROR' }), 'DET_ERR_EXPERIMENT_NOT_FOUND');
      await rejectsWith(s.updateExperiment(other.id + 1000, {}), 'DET_ERR_EXPERIMENT_NOT_FOUND');
    });

    it('updateTrial changes only the given fields of that trial', async () => {
      const s = await open();
      const { trials } = await s.createExperiment(newExperiment(), [newTrial(), newTrial()]);
      const [t, sibling] = trials;

      await s.updateTrial(t.id, { state: 'ASSIGNED', allocationId: 'alloc-1', agentId: 'agent-1', slotIds: [2, 3] });
      const assigned = { ...t, state: 'ASSIGNED' as const, allocationId: 'alloc-1', agentId: 'agent-1', slotIds: [2, 3] };
      assert.deepEqual(await s.getTrial(t.id), assigned);

      await s.updateTrial(t.id, { state: 'ERROR', exitCode: 1, message: 'exit 1', restarts: 1, endedAtMs: 1_700_000_200_000 });
      const failed = { ...assigned, state: 'ERROR' as const, exitCode: 1, message: 'exit 1', restarts: 1, endedAtMs: 1_700_000_200_000 };
      assert.deepEqual(await s.getTrial(t.id), failed);

      await s.updateTrial(t.id, { state: 'QUEUED', allocationId: null, agentId: null, slotIds: [], exitCode: null, endedAtMs: null });
      await s.updateTrial(t.id, {});
      assert.deepEqual(await s.getTrial(t.id), { ...failed, state: 'QUEUED', allocationId: null, agentId: null, slotIds: [], exitCode: null, endedAtMs: null });
      assert.deepEqual(await s.getTrial(sibling.id), sibling);

      await rejectsWith(s.updateTrial(sibling.id + 1000, { state: 'RUNNING' }), 'DET_ERR_TRIAL_NOT_FOUND');
      await rejectsWith(s.updateTrial(sibling.id + 1000, {}), 'DET_ERR_TRIAL_NOT_FOUND');
    });

    it('listActiveTrials returns the non-terminal trials of all experiments, by id', async () => {
      const s = await open();
      const states: TrialState[] = ['QUEUED', 'ASSIGNED', 'PULLING', 'STARTING', 'RUNNING', 'COMPLETED', 'ERROR', 'CANCELED'];
      const a = await s.createExperiment(newExperiment(), states.map((state) => newTrial({ state })));
      const b = await s.createExperiment(newExperiment(), [newTrial({ state: 'COMPLETED' }), newTrial({ state: 'RUNNING' })]);
      assert.deepEqual(await s.listActiveTrials(), [...a.trials.slice(0, 5), b.trials[1]]);

      await s.updateTrial(a.trials[0].id, { state: 'CANCELED' });
      await s.updateTrial(a.trials[5].id, { state: 'QUEUED' });
      const active = await s.listActiveTrials();
      assert.deepEqual(active.map((t) => t.id), [a.trials[1].id, a.trials[2].id, a.trials[3].id, a.trials[4].id, a.trials[5].id, b.trials[1].id]);
    });

    it('putAllocation inserts, then replaces by id', async () => {
      const s = await open();
      const { trials } = await s.createExperiment(newExperiment(), [newTrial()]);
      const alloc = allocation(trials[0].id, trials[0].taskId);
      await s.putAllocation(alloc);
      assert.deepEqual(await s.getAllocation(alloc.id), alloc);

      const done: AllocationRecord = { ...alloc, state: 'TERMINATED', containerId: 'c0ffee', endedAtMs: 1_700_000_300_000, exitCode: 137, failureKind: 'KILLED', message: 'killed by user' };
      await s.putAllocation(done);
      assert.deepEqual(await s.getAllocation(alloc.id), done);

      const second = { ...alloc, id: 'alloc-2', state: 'RUNNING' as const, containerId: 'abc' };
      await s.putAllocation(second);
      assert.deepEqual(await s.getAllocation('alloc-2'), second);
      assert.deepEqual(await s.getAllocation(alloc.id), done);
    });

    it('putAgent inserts, then replaces by id; listAgents is by id', async () => {
      const s = await open();
      await s.putAgent(agent('b-agent'));
      await s.putAgent(agent('a-agent', { devices: [], labels: {}, enabled: false, disabledReason: 'disabled by user (det agent disable)', disabledSlots: [1, 3] }));
      assert.deepEqual(await s.listAgents(), [
        agent('a-agent', { devices: [], labels: {}, enabled: false, disabledReason: 'disabled by user (det agent disable)', disabledSlots: [1, 3] }),
        agent('b-agent'),
      ]);

      const seen = agent('b-agent', { lastSeenMs: 1_700_000_999_000, version: '0.2.0', enabled: false, labels: { zone: 'b' } });
      await s.putAgent(seen);
      assert.deepEqual((await s.listAgents())[1], seen);
      assert.equal((await s.listAgents()).length, 2);
    });

    it('keeps provisioner state per pool, replacing it on put', async () => {
      const s = await open();
      assert.equal(await s.getProvisionerState('gpu'), undefined);
      await s.putProvisionerState('gpu', '{"instances":[]}');
      await s.putProvisionerState('cpu', '{"v":"ünï"}');
      await s.putProvisionerState('gpu', '{"instances":[{"id":"i-1"}]}');
      assert.equal(await s.getProvisionerState('gpu'), '{"instances":[{"id":"i-1"}]}');
      assert.equal(await s.getProvisionerState('cpu'), '{"v":"ünï"}');
    });

    it('appendTrialLogs numbers lines 1..n without gaps, across calls and per trial', async () => {
      const s = await open();
      const { trialIds: [t1, t2] } = await seed(s);
      assert.equal(await s.lastTrialLogSequence(t1), 0);

      const a = await s.appendTrialLogs(t1, [line('a1'), line('a2', { stream: 'stderr' }), line('a3', { stream: 'agent' })]);
      assert.deepEqual(a, [
        { trialId: t1, sequence: 1, ...line('a1') },
        { trialId: t1, sequence: 2, ...line('a2', { stream: 'stderr' }) },
        { trialId: t1, sequence: 3, ...line('a3', { stream: 'agent' }) },
      ]);
      const b = await s.appendTrialLogs(t2, [line('b1'), line('b2')]);
      assert.deepEqual(b.map((r) => [r.trialId, r.sequence]), [[t2, 1], [t2, 2]]);
      const c = await s.appendTrialLogs(t1, [line('a4'), line('a5')]);
      assert.deepEqual(c.map((r) => r.sequence), [4, 5]);
      assert.deepEqual(await s.appendTrialLogs(t1, []), []);

      assert.equal(await s.lastTrialLogSequence(t1), 5);
      assert.equal(await s.lastTrialLogSequence(t2), 2);
      assert.deepEqual(await s.trialLogs(t1, 0, 100), [...a, ...c]);
      assert.deepEqual(await s.trialLogs(t2, 0, 100), b);

      // Numbering continues after a restart of the master.
      await s.close();
      const reopened = await open();
      assert.deepEqual((await reopened.appendTrialLogs(t2, [line('b3')])).map((r) => r.sequence), [3]);
    });

    it('keeps sequences gap-free under concurrent appends to two trials', async () => {
      const s = await open();
      const { trialIds: [t1, t2] } = await seed(s);
      const calls = range(1, 12).map((i) => {
        const trialId = i % 2 === 0 ? t1 : t2;
        return s.appendTrialLogs(trialId, range(1, 5).map((j) => line(`call ${i} line ${j}`)));
      });
      const results = await Promise.all(calls);

      results.forEach((batch, k) => {
        // Each call's lines are contiguous and in the order given.
        const seqs = batch.map((r) => r.sequence);
        assert.deepEqual(seqs, range(seqs[0], seqs[0] + 4));
        assert.deepEqual(batch.map((r) => r.text), range(1, 5).map((j) => `call ${k + 1} line ${j}`));
      });
      for (const trialId of [t1, t2]) {
        const stored = await s.trialLogs(trialId, 0, 1000);
        assert.deepEqual(stored.map((r) => r.sequence), range(1, 30));
        const returned = results.flat().filter((r) => r.trialId === trialId).sort((x, y) => x.sequence - y.sequence);
        assert.deepEqual(stored, returned);
        assert.equal(await s.lastTrialLogSequence(trialId), 30);
      }
    });

    it('pages trial logs with afterSequence and limit', async () => {
      const s = await open();
      const { trialIds: [t1, t2] } = await seed(s);
      await s.appendTrialLogs(t1, range(1, 10).map((i) => line(`line ${i}`)));
      await s.appendTrialLogs(t2, [line('other trial')]);

      const pages: number[][] = [];
      for (let after = 0; ; ) {
        const page = await s.trialLogs(t1, after, 4);
        if (page.length === 0) break;
        pages.push(page.map((r) => r.sequence));
        after = page[page.length - 1].sequence;
      }
      assert.deepEqual(pages, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]);
      assert.deepEqual((await s.trialLogs(t1, 7, 100)).map((r) => r.text), ['line 8', 'line 9', 'line 10']);
      assert.deepEqual(await s.trialLogs(t1, 10, 100), []);
      assert.deepEqual(await s.trialLogs(t1, 0, 0), []);
      assert.deepEqual(await s.trialLogs(t2 + 1000, 0, 10), []);
    });

    it('preserves unicode in names, configs, hparams, labels and log text', async () => {
      const s = await open();
      const fancy = 'Ünïcödé ✓ 日本語 עברית 👩‍👩‍👧 e\u0301 \t"quotes" \\back\\slash \'single\' {braces} , comma';
      const { experiment, trials } = await s.createExperiment(
        newExperiment({ name: fancy, configYaml: `name: "${fancy}"\n`, config: { [fancy]: fancy, arr: [fancy] } }),
        [newTrial({ hparams: { [fancy]: fancy }, message: fancy })],
      );
      assert.deepEqual((await s.getExperiment(experiment.id))!.name, fancy);
      assert.deepEqual((await s.getExperiment(experiment.id))!.config, { [fancy]: fancy, arr: [fancy] });
      assert.deepEqual(await s.getTrial(trials[0].id), trials[0]);
      assert.equal(trials[0].message, fancy);
      await s.putAgent(agent('a', { labels: { [fancy]: fancy }, hostname: fancy }));
      assert.deepEqual((await s.listAgents())[0].labels, { [fancy]: fancy });

      const texts = [fancy, '', ' ', 'x'.repeat(100_000), '\r\n', '🎉'];
      await s.appendTrialLogs(trials[0].id, texts.map((t) => line(t)));
      assert.deepEqual((await s.trialLogs(trials[0].id, 0, 100)).map((r) => r.text), texts);
    });

    it('stores log text with NUL or lone surrogates as U+FFFD instead of rejecting the batch', async () => {
      const s = await open();
      const { trialIds: [t1] } = await seed(s, 1);
      const stored = await s.appendTrialLogs(t1, [line('a\u0000b'), line('lone \uD83D end'), line('\uDE00'), line('ok 😀')]);
      const expected = ['a\uFFFDb', 'lone \uFFFD end', '\uFFFD', 'ok 😀'];
      assert.deepEqual(stored.map((r) => r.text), expected);
      assert.deepEqual((await s.trialLogs(t1, 0, 10)).map((r) => r.text), expected);
    });

    it('rejects log lines for a trial that does not exist, storing nothing', async () => {
      const s = await open();
      const { trialIds: [t1] } = await seed(s, 1);
      await rejectsWith(s.appendTrialLogs(t1 + 1000, [line('x')]), 'DET_ERR_TRIAL_NOT_FOUND');
      assert.equal(await s.lastTrialLogSequence(t1 + 1000), 0);
    });

    it('records checkpoints with every field; addCheckpoint is idempotent on uuid', async () => {
      const s = await open();
      const { experimentId, trialIds: [t1] } = await seed(s, 1);
      const a = checkpoint(experimentId, t1, 'ckpt-a');
      assert.equal(await s.addCheckpoint(a), true);
      assert.deepEqual(await s.getCheckpoint('ckpt-a'), a);

      // A second report of the same uuid (an agent resending after a reconnect) changes nothing.
      assert.equal(await s.addCheckpoint({ ...a, name: 'other', totalSize: 1, reportedAtMs: 1_800_000_000_000 }), false);
      assert.deepEqual(await s.getCheckpoint('ckpt-a'), a);

      const shared = checkpoint(experimentId, t1, 'ckpt-b', { storage: { type: 'shared_fs', host_path: '/mnt/ckpts' }, metadata: {}, totalSize: 0, fileCount: 0, location: '/mnt/ckpts/ckpt-b/.det-manifest.json' });
      assert.equal(await s.addCheckpoint(shared), true);
      assert.deepEqual(await s.getCheckpoint('ckpt-b'), shared);
      assert.equal(await s.getCheckpoint('nope'), undefined);

      await s.close();
      assert.deepEqual(await (await open()).listCheckpoints({ experimentId }), [a, shared]);
    });

    it('rejects a checkpoint of an unknown trial, or of a trial of another experiment', async () => {
      const s = await open();
      const one = await seed(s, 1);
      const two = await seed(s, 1);
      await rejectsWith(s.addCheckpoint(checkpoint(one.experimentId, two.trialIds[0] + 1000, 'c1')), 'DET_ERR_TRIAL_NOT_FOUND');
      const err = await rejectsWith(s.addCheckpoint(checkpoint(one.experimentId, two.trialIds[0], 'c2')), 'DET_ERR_INVALID_ARGUMENT');
      assert.match(err.message, new RegExp(`trial ${two.trialIds[0]} belongs to experiment ${two.experimentId}`));
      assert.deepEqual(await s.listCheckpoints({}), []);
    });

    it('lists checkpoints by experiment and trial, ordered by createdAtMs then uuid', async () => {
      const s = await open();
      const { experimentId: e1, trialIds: [t1, t2] } = await seed(s, 2);
      const { experimentId: e2, trialIds: [t3] } = await seed(s, 1);
      const c = [
        checkpoint(e1, t1, 'c-3', { createdAtMs: 3000 }),
        checkpoint(e1, t2, 'c-1', { createdAtMs: 1000 }),
        checkpoint(e1, t1, 'c-2b', { createdAtMs: 2000 }),
        checkpoint(e1, t1, 'c-2a', { createdAtMs: 2000 }),
        checkpoint(e2, t3, 'c-0', { createdAtMs: 500 }),
        // Same time: byte order of the uuid on both backends, whatever PostgreSQL's collation.
        checkpoint(e2, t3, 'B-0', { createdAtMs: 500 }),
      ];
      for (const x of c) await s.addCheckpoint(x);
      const uuids = (rs: CheckpointRecord[]) => rs.map((r) => r.uuid);
      assert.deepEqual(uuids(await s.listCheckpoints({ experimentId: e1 })), ['c-1', 'c-2a', 'c-2b', 'c-3']);
      assert.deepEqual(uuids(await s.listCheckpoints({ trialId: t1 })), ['c-2a', 'c-2b', 'c-3']);
      assert.deepEqual(uuids(await s.listCheckpoints({ experimentId: e1, trialId: t2 })), ['c-1']);
      assert.deepEqual(uuids(await s.listCheckpoints({ experimentId: e2, trialId: t1 })), []);
      assert.deepEqual(uuids(await s.listCheckpoints({ experimentId: e2 })), ['B-0', 'c-0']);
      assert.deepEqual(uuids(await s.listCheckpoints({})), ['B-0', 'c-0', 'c-1', 'c-2a', 'c-2b', 'c-3']);
      assert.deepEqual(await s.listCheckpoints({ experimentId: e2 + 1000 }), []);
    });

    it('latestCheckpoint is the newest COMPLETED one of the trial (createdAtMs, then reportedAtMs)', async () => {
      const s = await open();
      const { experimentId, trialIds: [t1, t2] } = await seed(s, 2);
      assert.equal(await s.latestCheckpoint(t1), undefined);
      await s.addCheckpoint(checkpoint(experimentId, t1, 'old', { createdAtMs: 1000, reportedAtMs: 9000 }));
      await s.addCheckpoint(checkpoint(experimentId, t1, 'tie-early', { createdAtMs: 2000, reportedAtMs: 2100 }));
      await s.addCheckpoint(checkpoint(experimentId, t1, 'tie-late', { createdAtMs: 2000, reportedAtMs: 2200 }));
      await s.addCheckpoint(checkpoint(experimentId, t2, 'other-trial', { createdAtMs: 5000 }));
      assert.equal((await s.latestCheckpoint(t1))?.uuid, 'tie-late');
      await s.addCheckpoint(checkpoint(experimentId, t1, 'deleted-newest', { createdAtMs: 3000, state: 'DELETED' }));
      assert.equal((await s.latestCheckpoint(t1))?.uuid, 'tie-late');
      await s.setCheckpointState('tie-late', 'DELETED');
      assert.equal((await s.latestCheckpoint(t1))?.uuid, 'tie-early');
      assert.equal((await s.latestCheckpoint(t2))?.uuid, 'other-trial');
    });

    it('setCheckpointState changes only that checkpoint; an unknown uuid is NOT_FOUND', async () => {
      const s = await open();
      const { experimentId, trialIds: [t1] } = await seed(s, 1);
      const a = checkpoint(experimentId, t1, 'a');
      const b = checkpoint(experimentId, t1, 'b');
      await s.addCheckpoint(a);
      await s.addCheckpoint(b);
      await s.setCheckpointState('a', 'DELETED');
      await s.setCheckpointState('a', 'DELETED');
      assert.deepEqual(await s.listCheckpoints({ experimentId }), [{ ...a, state: 'DELETED' }, b]);
      const err = await rejectsWith(s.setCheckpointState('missing', 'DELETED'), 'DET_ERR_CHECKPOINT_NOT_FOUND');
      assert.match(err.message, /checkpoint missing does not exist/);
    });

    it('deleteExperiment removes the experiment and all its rows in one go, leaving other experiments alone', async () => {
      const s = await open();
      const doomed = await s.createExperiment(newExperiment({ state: 'COMPLETED' }), [newTrial(), newTrial()]);
      const kept = await s.createExperiment(newExperiment({ name: 'kept' }), [newTrial()]);
      const fill = async (e: typeof doomed, tag: string) => {
        for (const t of e.trials) {
          await s.putAllocation(allocation(t.id, t.taskId, { id: `${tag}-alloc-${t.id}` }));
          await s.appendTrialLogs(t.id, [line(`${tag} 1`), line(`${tag} 2`)]);
          await s.addCheckpoint(checkpoint(e.experiment.id, t.id, `${tag}-ckpt-${t.id}`));
        }
      };
      await fill(doomed, 'doomed');
      await fill(kept, 'kept');
      const keptBefore = {
        experiment: await s.getExperiment(kept.experiment.id),
        trials: await s.listTrials(kept.experiment.id),
        alloc: await s.getAllocation(`kept-alloc-${kept.trials[0].id}`),
        logs: await s.trialLogs(kept.trials[0].id, 0, 100),
        checkpoints: await s.listCheckpoints({ experimentId: kept.experiment.id }),
      };

      await s.deleteExperiment(doomed.experiment.id);

      assert.equal(await s.getExperiment(doomed.experiment.id), undefined);
      assert.deepEqual(await s.listTrials(doomed.experiment.id), []);
      assert.deepEqual(await s.listCheckpoints({ experimentId: doomed.experiment.id }), []);
      for (const t of doomed.trials) {
        assert.equal(await s.getTrial(t.id), undefined);
        assert.equal(await s.getAllocation(`doomed-alloc-${t.id}`), undefined);
        assert.deepEqual(await s.trialLogs(t.id, 0, 100), []);
        assert.equal(await s.getCheckpoint(`doomed-ckpt-${t.id}`), undefined);
      }
      // Straight from the tables too, not only through the Store's queries.
      const doomedTrials = doomed.trials.map((t) => t.id).join(', ');
      for (const [table, where] of [
        ['experiments', `id = ${doomed.experiment.id}`],
        ['trials', `experiment_id = ${doomed.experiment.id}`],
        ['allocations', `trial_id IN (${doomedTrials})`],
        ['trial_logs', `trial_id IN (${doomedTrials})`],
        ['checkpoints', `experiment_id = ${doomed.experiment.id}`],
      ]) {
        assert.equal(Number((await target.query(`SELECT count(*) AS n FROM ${table} WHERE ${where}`))[0].n), 0, table);
      }
      assert.deepEqual(
        {
          experiment: await s.getExperiment(kept.experiment.id),
          trials: await s.listTrials(kept.experiment.id),
          alloc: await s.getAllocation(`kept-alloc-${kept.trials[0].id}`),
          logs: await s.trialLogs(kept.trials[0].id, 0, 100),
          checkpoints: await s.listCheckpoints({ experimentId: kept.experiment.id }),
        },
        keptBefore,
      );

      await rejectsWith(s.deleteExperiment(doomed.experiment.id), 'DET_ERR_EXPERIMENT_NOT_FOUND');
      // Ids of deleted experiments and trials are never handed out again.
      const next = await s.createExperiment(newExperiment(), [newTrial()]);
      assert.ok(next.experiment.id > doomed.experiment.id && next.experiment.id > kept.experiment.id);
      assert.ok(next.trials[0].id > Math.max(...doomed.trials.map((t) => t.id), kept.trials[0].id));
    });

    it('applies migration 3 (checkpoints) over a version 2 database, keeping its rows', async () => {
      await target.exec(SCHEMA_MIGRATIONS_DDL[backend.kind]);
      for (const m of MIGRATIONS.filter((m) => m.version <= 2)) {
        await target.exec(m[backend.kind]);
        await target.exec(`INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (${m.version}, '${m.name}', 0)`);
      }
      await target.exec(
        `INSERT INTO experiments (name, state, config_yaml, config, resource_pool, priority, kill_requested, created_at_ms)
         VALUES ('old', 'COMPLETED', 'name: old', '{}', 'default', 1, ${backend.kind === 'sqlite' ? 0 : 'false'}, 1000)`,
      );
      const expId = Number((await target.query('SELECT id FROM experiments'))[0].id);
      await target.exec(
        `INSERT INTO trials (experiment_id, state, hparams, restarts, task_id, slot_ids, message, created_at_ms)
         VALUES (${expId}, 'COMPLETED', '{}', 0, '${expId}.1', '[]', '', 1000)`,
      );
      const trialId = Number((await target.query('SELECT id FROM trials'))[0].id);
      await assert.rejects(target.query('SELECT * FROM checkpoints'));

      const s = await open();
      const versions = await target.query('SELECT version FROM schema_migrations ORDER BY version');
      assert.deepEqual(versions.map((r) => Number(r.version)), MIGRATIONS.map((m) => m.version));
      assert.equal((await s.getExperiment(expId))?.name, 'old');
      const c = checkpoint(expId, trialId, 'after-upgrade');
      assert.equal(await s.addCheckpoint(c), true);
      assert.deepEqual(await s.listCheckpoints({ trialId }), [c]);
      await s.deleteExperiment(expId);
      assert.deepEqual(await s.listExperiments(), []);
    });

    it('closes twice harmlessly; calls after close reject', async () => {
      const s = await open();
      await s.close();
      await s.close();
      await rejectsWith(s.listExperiments(), 'DET_ERR_SHUTTING_DOWN');
      await rejectsWith(s.appendTrialLogs(1, [line('late')]), 'DET_ERR_SHUTTING_DOWN');
      await rejectsWith(s.lastTrialLogSequence(1), 'DET_ERR_SHUTTING_DOWN');
    });

    it('refuses a database migrated by a newer master', async () => {
      const s = await open();
      await s.close();
      const future = LATEST_SCHEMA_VERSION + 1;
      await target.query(`INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (${future}, 'from the future', 0)`);
      const err = await rejectsWith(target.open(), 'DET_ERR_DB_MIGRATION');
      assert.match(err.message, new RegExp(`schema version ${future} but this master knows only up to ${LATEST_SCHEMA_VERSION}`));
      assert.match(err.message, /Upgrade this master/);
    });

    it('rolls back a failing migration and reports it', async () => {
      // A foreign table in the way of the initial schema.
      await target.query('CREATE TABLE experiments (foreign_column TEXT)');
      const err = await rejectsWith(target.open(), 'DET_ERR_DB_MIGRATION');
      assert.match(err.message, new RegExp(`migration ${MIGRATIONS[0].version} \\(${MIGRATIONS[0].name}\\) failed`));
      assert.deepEqual(await target.query('SELECT version FROM schema_migrations'), []);

      // Nothing of the failed migration was left behind: once the clash is gone it applies cleanly.
      await target.query('DROP TABLE experiments');
      const s = await open();
      await s.createExperiment(newExperiment(), [newTrial()]);
      assert.equal((await s.listExperiments()).length, 1);
    });
  });
}

// --- backends

function sqliteBackend(root: () => string): Backend {
  let n = 0;
  return {
    kind: 'sqlite',
    async fresh() {
      // A directory that does not exist yet: opening must create it.
      const dir = path.join(root(), `db-${++n}`, 'nested');
      const file = path.join(dir, 'det.db');
      return {
        open: () => openStore(file),
        async query(sql) {
          mkdirSync(dir, { recursive: true });
          const db = new Database(file);
          try {
            const stmt = db.prepare(sql);
            if (stmt.reader) return stmt.all() as Row[];
            stmt.run();
            return [];
          } finally {
            db.close();
          }
        },
        async exec(script) {
          mkdirSync(dir, { recursive: true });
          const db = new Database(file);
          try {
            db.exec(script);
          } finally {
            db.close();
          }
        },
        async drop() {
          rmSync(path.dirname(dir), { recursive: true, force: true });
        },
      };
    },
  };
}

/** `url` with the given search_path, so each test gets its own schema in the shared test database. */
function withSearchPath(url: string, schema: string): string {
  const u = new URL(url);
  u.searchParams.set('options', `-c search_path=${schema}`);
  return u.toString();
}

function postgresBackend(admin: () => Pool, baseUrl: () => string): Backend {
  let n = 0;
  return {
    kind: 'postgres',
    async fresh() {
      const schema = `det_store_test_${process.pid}_${++n}`;
      await admin().query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin().query(`CREATE SCHEMA ${schema}`);
      const url = withSearchPath(baseUrl(), schema);
      return {
        open: () => openStore(url),
        async query(sql) {
          const c = new Client({ connectionString: url });
          await c.connect();
          try {
            return (await c.query(sql)).rows as Row[];
          } finally {
            await c.end();
          }
        },
        async exec(script) {
          const c = new Client({ connectionString: url });
          await c.connect();
          try {
            await c.query(script);
          } finally {
            await c.end();
          }
        },
        async drop() {
          await admin().query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
        },
      };
    },
  };
}

describe('master store', () => {
  describe('SQLite', () => {
    let root = '';
    before(() => {
      root = mkdtempSync(path.join(tmpdir(), 'det-store-test-'));
    });
    after(() => {
      rmSync(root, { recursive: true, force: true });
    });

    storeContract(sqliteBackend(() => root));

    it('uses WAL journaling in the file the caller names', async () => {
      const file = path.join(root, 'wal', 'a', 'b', 'master.db');
      const s = await openSqliteStore(file);
      await s.close();
      const db = new Database(file);
      try {
        assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
      } finally {
        db.close();
      }
    });

    it('rejects a data dir that cannot be created with DET_ERR_DATA_DIR', async () => {
      // chmod does not stop root, a regular file in the path does.
      const blocker = path.join(root, 'not-a-dir');
      writeFileSync(blocker, 'x');
      const dir = path.join(blocker, 'data');
      const err = await rejectsWith(openStore(path.join(dir, 'det.db')), 'DET_ERR_DATA_DIR');
      assert.ok(err.message.startsWith(`data dir ${dir} is not writable: `), err.message);
      assert.match(err.message, /Choose another with --data-dir or fix its permissions$/);
    });
  });

  describe('PostgreSQL', () => {
    let pgUrl = '';
    let admin: Pool | undefined;
    before(() => {
      pgUrl = testEnv().pgUrl;
      admin = new Pool({ connectionString: pgUrl, max: 2 });
      admin.on('error', () => undefined);
    });
    after(async () => {
      await admin?.end();
    });

    storeContract(postgresBackend(() => admin!, () => pgUrl));

    it('opens postgresql:// URLs as PostgreSQL', async () => {
      const schema = `det_store_test_${process.pid}_scheme`;
      await admin!.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE; CREATE SCHEMA ${schema}`);
      try {
        const url = withSearchPath(pgUrl, schema).replace(/^postgres(ql)?:/, 'postgresql:');
        const s = await openStore(url);
        assert.equal(s.kind, 'postgres');
        await s.close();
      } finally {
        await admin!.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      }
    });

    it('fails fast with DET_ERR_DB_UNREACHABLE when nothing listens, never showing the password', async () => {
      const password = 'pw-Secret:with/odd@chars%';
      const url = `postgres://det:${encodeURIComponent(password)}@127.0.0.1:1/det_test`;
      const started = Date.now();
      const err = await rejectsWith(openStore(url), 'DET_ERR_DB_UNREACHABLE');
      // A refused connection must not wait for the connect timeout.
      assert.ok(Date.now() - started < 4000, `took ${Date.now() - started} ms`);
      assert.ok(err.message.startsWith('cannot connect to PostgreSQL at 127.0.0.1:1/det_test: '), err.message);
      assert.match(err.message, /ECONNREFUSED/);
      assert.match(err.message, /Is it running and is the URL right\?$/);
      for (const secret of [password, encodeURIComponent(password), 'pw-Secret']) assert.ok(!err.message.includes(secret), err.message);
      assert.ok(err.retryable);
    });

    it('survives the server dropping its connections', async () => {
      const schema = `det_store_test_${process.pid}_dropped`;
      const app = `det-store-test-${process.pid}`;
      await admin!.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE; CREATE SCHEMA ${schema}`);
      const url = new URL(withSearchPath(pgUrl, schema));
      // Our own application_name, so only this store's sessions are terminated.
      url.searchParams.set('application_name', app);
      const poolErrors: Error[] = [];
      const s = await openPostgresStore(url.toString(), { onPoolError: (err) => poolErrors.push(err) });
      try {
        const t1 = (await s.createExperiment(newExperiment(), [newTrial()])).trials[0].id;
        await s.appendTrialLogs(t1, [line('before')]);
        const killed = await admin!.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app]);
        assert.ok(killed.rowCount! > 0, 'no session of the store was found to terminate');
        await waitFor(() => poolErrors.length > 0, { timeoutMs: 10_000, what: 'the pool to notice the dropped connections' });
        // The process is still alive and the pool reconnects for the next calls.
        await s.appendTrialLogs(t1, [line('after')]);
        assert.deepEqual((await s.trialLogs(t1, 0, 10)).map((r) => [r.sequence, r.text]), [[1, 'before'], [2, 'after']]);
      } finally {
        await s.close();
        await admin!.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      }
    });

    it('gives up on a server that never answers after the connect timeout', async () => {
      const sockets: net.Socket[] = [];
      const silent = net.createServer((sock) => sockets.push(sock));
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const { port } = silent.address() as net.AddressInfo;
      try {
        const err = await rejectsWith(openPostgresStore(`postgres://det:hunter2@127.0.0.1:${port}/det_test`, { connectTimeoutMs: 300 }), 'DET_ERR_DB_UNREACHABLE');
        assert.ok(err.message.startsWith(`cannot connect to PostgreSQL at 127.0.0.1:${port}/det_test: `), err.message);
        assert.ok(!err.message.includes('hunter2'), err.message);
      } finally {
        for (const sock of sockets) sock.destroy();
        await new Promise((resolve) => silent.close(resolve));
      }
    });
  });
});
