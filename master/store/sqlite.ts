// The Store on a local SQLite file (better-sqlite3): the default for a single
// master. The driver is synchronous, so each call runs to completion before the
// next starts and transactions never interleave inside this process.
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { DetError, errorMessage } from '../../common/errors';
import { checkSchemaNotNewer, migrationFailed, pendingMigrations, SCHEMA_MIGRATIONS_DDL } from './migrations';
import {
  agentFromRow,
  agentToRow,
  allocationFromRow,
  allocationToRow,
  checkpointOrder,
  checkpointFilterSql,
  checkpointFromRow,
  checkpointNotFound,
  checkpointToRow,
  checkpointTrialMismatch,
  cleanLogText,
  deleteExperimentSql,
  experimentFromRow,
  experimentNotFound,
  experimentPatchToRow,
  experimentToRow,
  insertIfAbsentSql,
  insertSql,
  latestCheckpointOrder,
  num,
  Row,
  Sql,
  storeClosed,
  taskIdFor,
  TERMINAL_TRIAL_STATES,
  trialFromRow,
  trialLogFromRow,
  trialNotFound,
  trialPatchToRow,
  trialToRow,
  updateByIdSql,
} from './rows';
import type {
  AgentRecord,
  AllocationRecord,
  CheckpointFilter,
  CheckpointRecord,
  CheckpointState,
  ExperimentPatch,
  ExperimentRecord,
  NewExperiment,
  NewTrial,
  Store,
  TrialLogRecord,
  TrialPatch,
  TrialRecord,
} from './store';

/** How long a writer waits for another process's lock before failing. */
const BUSY_TIMEOUT_MS = 5000;

const TERMINAL_STATES_SQL = TERMINAL_TRIAL_STATES.map((s) => `'${s}'`).join(', ');

/** The Store on a SQLite file. */
export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const;
  private readonly stmts = new Map<string, Database.Statement>();
  private closed = false;

  /** Use openSqliteStore. */
  constructor(
    private readonly db: Database.Database,
    /** The database file as given by the caller. */
    readonly file: string,
  ) {}

  async clusterId(): Promise<string> {
    return this.guard(() => this.stmt('SELECT cluster_id FROM cluster WHERE id = 1').pluck().get() as string);
  }

  async createExperiment(exp: NewExperiment, trials: NewTrial[]): Promise<{ experiment: ExperimentRecord; trials: TrialRecord[] }> {
    return this.guard(() =>
      this.db.transaction(() => {
        const experiment = experimentFromRow(this.get(insertSql('sqlite', 'experiments', experimentToRow('sqlite', exp)))!);
        const stored = trials.map((t) => {
          // The task id embeds the trial id, known only after the insert.
          const id = num(this.get(insertSql('sqlite', 'trials', trialToRow(t, experiment.id, '')))!.id);
          const row = this.stmt('UPDATE trials SET task_id = ? WHERE id = ? RETURNING *').get(taskIdFor(experiment.id, id), id);
          return trialFromRow(row as Row);
        });
        return { experiment, trials: stored };
      })(),
    );
  }

  async getExperiment(id: number): Promise<ExperimentRecord | undefined> {
    return this.guard(() => {
      const row = this.stmt('SELECT * FROM experiments WHERE id = ?').get(id) as Row | undefined;
      return row && experimentFromRow(row);
    });
  }

  async listExperiments(): Promise<ExperimentRecord[]> {
    return this.guard(() => (this.stmt('SELECT * FROM experiments ORDER BY id DESC').all() as Row[]).map(experimentFromRow));
  }

  async updateExperiment(id: number, patch: ExperimentPatch): Promise<void> {
    return this.guard(() => this.update('experiments', experimentPatchToRow('sqlite', patch), id, experimentNotFound));
  }

  async getTrial(id: number): Promise<TrialRecord | undefined> {
    return this.guard(() => {
      const row = this.stmt('SELECT * FROM trials WHERE id = ?').get(id) as Row | undefined;
      return row && trialFromRow(row);
    });
  }

  async listTrials(experimentId: number): Promise<TrialRecord[]> {
    return this.guard(() => (this.stmt('SELECT * FROM trials WHERE experiment_id = ? ORDER BY id').all(experimentId) as Row[]).map(trialFromRow));
  }

  async listActiveTrials(): Promise<TrialRecord[]> {
    return this.guard(() =>
      (this.stmt(`SELECT * FROM trials WHERE state NOT IN (${TERMINAL_STATES_SQL}) ORDER BY id`).all() as Row[]).map(trialFromRow),
    );
  }

  async updateTrial(id: number, patch: TrialPatch): Promise<void> {
    return this.guard(() => this.update('trials', trialPatchToRow(patch), id, trialNotFound));
  }

  async putAllocation(alloc: AllocationRecord): Promise<void> {
    return this.guard(() => void this.get(insertSql('sqlite', 'allocations', allocationToRow(alloc), 'id')));
  }

  async getAllocation(id: string): Promise<AllocationRecord | undefined> {
    return this.guard(() => {
      const row = this.stmt('SELECT * FROM allocations WHERE id = ?').get(id) as Row | undefined;
      return row && allocationFromRow(row);
    });
  }

  async putAgent(agent: AgentRecord): Promise<void> {
    return this.guard(() => void this.get(insertSql('sqlite', 'agents', agentToRow('sqlite', agent), 'id')));
  }

  async getProvisionerState(pool: string): Promise<string | undefined> {
    return this.guard(() => (this.stmt('SELECT state FROM provisioner_state WHERE pool = ?').get(pool) as { state: string } | undefined)?.state);
  }

  async putProvisionerState(pool: string, state: string): Promise<void> {
    return this.guard(
      () =>
        void this.stmt('INSERT INTO provisioner_state (pool, state, updated_at_ms) VALUES (?, ?, ?) ON CONFLICT (pool) DO UPDATE SET state = excluded.state, updated_at_ms = excluded.updated_at_ms').run(pool, state, Date.now()),
    );
  }

  async listAgents(): Promise<AgentRecord[]> {
    return this.guard(() => (this.stmt('SELECT * FROM agents ORDER BY id').all() as Row[]).map(agentFromRow));
  }

  async appendTrialLogs(trialId: number, lines: Omit<TrialLogRecord, 'trialId' | 'sequence'>[]): Promise<TrialLogRecord[]> {
    return this.guard(() =>
      // IMMEDIATE takes the write lock before reading max(sequence), so another
      // process sharing the file cannot pick the same numbers.
      this.db
        .transaction(() => {
          if (this.stmt('SELECT 1 FROM trials WHERE id = ?').get(trialId) === undefined) throw trialNotFound(trialId);
          let sequence = this.lastSequence(trialId);
          const insert = this.stmt(
            'INSERT INTO trial_logs (trial_id, sequence, allocation_id, timestamp_ms, stream, text) VALUES (?, ?, ?, ?, ?, ?)',
          );
          return lines.map((l): TrialLogRecord => {
            const rec = { trialId, sequence: ++sequence, allocationId: l.allocationId, timestampMs: l.timestampMs, stream: l.stream, text: cleanLogText(l.text) };
            insert.run(rec.trialId, rec.sequence, rec.allocationId, rec.timestampMs, rec.stream, rec.text);
            return rec;
          });
        })
        .immediate(),
    );
  }

  async trialLogs(trialId: number, afterSequence: number, limit: number): Promise<TrialLogRecord[]> {
    return this.guard(() => {
      const rows = this.stmt('SELECT * FROM trial_logs WHERE trial_id = ? AND sequence > ? ORDER BY sequence LIMIT ?').all(
        trialId,
        afterSequence,
        Math.max(0, limit),
      ) as Row[];
      return rows.map(trialLogFromRow);
    });
  }

  async lastTrialLogSequence(trialId: number): Promise<number> {
    return this.guard(() => this.lastSequence(trialId));
  }

  async addCheckpoint(rec: CheckpointRecord): Promise<boolean> {
    return this.guard(() =>
      this.db.transaction(() => {
        const trial = this.stmt('SELECT experiment_id FROM trials WHERE id = ?').get(rec.trialId) as Row | undefined;
        if (trial === undefined) throw trialNotFound(rec.trialId);
        if (num(trial.experiment_id) !== rec.experimentId) throw checkpointTrialMismatch(rec, num(trial.experiment_id));
        return this.get(insertIfAbsentSql('sqlite', 'checkpoints', checkpointToRow(rec), 'uuid')) !== undefined;
      })(),
    );
  }

  async getCheckpoint(uuid: string): Promise<CheckpointRecord | undefined> {
    return this.guard(() => {
      const row = this.stmt('SELECT * FROM checkpoints WHERE uuid = ?').get(uuid) as Row | undefined;
      return row && checkpointFromRow(row);
    });
  }

  async listCheckpoints(filter: CheckpointFilter): Promise<CheckpointRecord[]> {
    return this.guard(() => {
      const where = checkpointFilterSql('sqlite', filter);
      return (this.stmt(`SELECT * FROM checkpoints ${where.text} ${checkpointOrder('sqlite')}`).all(...where.params) as Row[]).map(checkpointFromRow);
    });
  }

  async latestCheckpoint(trialId: number): Promise<CheckpointRecord | undefined> {
    return this.guard(() => {
      const row = this.stmt(`SELECT * FROM checkpoints WHERE trial_id = ? AND state = 'COMPLETED' ${latestCheckpointOrder('sqlite')} LIMIT 1`).get(trialId) as Row | undefined;
      return row && checkpointFromRow(row);
    });
  }

  async setCheckpointState(uuid: string, state: CheckpointState): Promise<void> {
    return this.guard(() => {
      if (this.stmt('UPDATE checkpoints SET state = ? WHERE uuid = ?').run(state, uuid).changes === 0) throw checkpointNotFound(uuid);
    });
  }

  async deleteExperiment(id: number): Promise<void> {
    return this.guard(() =>
      this.db.transaction(() => {
        let last = 0;
        for (const sql of deleteExperimentSql('sqlite', id)) last = this.stmt(sql.text).run(...sql.params).changes;
        // Throwing rolls back the (empty) deletes above.
        if (last === 0) throw experimentNotFound(id);
      })(),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stmts.clear();
    this.db.close();
  }

  private lastSequence(trialId: number): number {
    return num(this.stmt('SELECT coalesce(max(sequence), 0) FROM trial_logs WHERE trial_id = ?').pluck().get(trialId));
  }

  private update(table: string, set: Row, id: number, notFound: (id: number) => DetError): void {
    let found: boolean;
    if (Object.keys(set).length === 0) {
      found = this.stmt(`SELECT 1 FROM ${table} WHERE id = ?`).get(id) !== undefined;
    } else {
      const sql = updateByIdSql('sqlite', table, set, id);
      found = this.stmt(sql.text).run(...sql.params).changes > 0;
    }
    if (!found) throw notFound(id);
  }

  private get(sql: Sql): Row | undefined {
    return this.stmt(sql.text).get(...sql.params) as Row | undefined;
  }

  /** A prepared statement, compiled once per distinct SQL text. */
  private stmt(text: string): Database.Statement {
    let s = this.stmts.get(text);
    if (s === undefined) {
      s = this.db.prepare(text);
      this.stmts.set(text, s);
    }
    return s;
  }

  /** Runs a call unless closed, turning driver errors into DetErrors. */
  private async guard<T>(fn: () => T): Promise<T> {
    if (this.closed) throw storeClosed('sqlite');
    try {
      return fn();
    } catch (err) {
      throw sqliteError(err, this.file);
    }
  }
}

/** Opens (creating if needed) the SQLite database at `file` and migrates it. */
export async function openSqliteStore(file: string): Promise<SqliteStore> {
  const inMemory = file === ':memory:';
  if (!inMemory) {
    const dir = path.dirname(path.resolve(file));
    try {
      fs.mkdirSync(dir, { recursive: true });
      fs.accessSync(dir, fs.constants.W_OK);
    } catch (err) {
      throw dataDirError(dir, err);
    }
  }
  let db: Database.Database;
  try {
    db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
  } catch (err) {
    throw sqliteError(err, file);
  }
  try {
    // WAL lets readers run while a writer commits; NORMAL is durable across
    // process crashes in WAL mode and only risks the last commits on power loss.
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    db.pragma('foreign_keys = ON');
    migrate(db, file);
    db.prepare('INSERT INTO cluster (id, cluster_id) VALUES (1, ?) ON CONFLICT (id) DO NOTHING').run(randomUUID());
  } catch (err) {
    db.close();
    throw sqliteError(err, file);
  }
  return new SqliteStore(db, file);
}

function migrate(db: Database.Database, file: string): void {
  db.exec(SCHEMA_MIGRATIONS_DDL.sqlite);
  checkSchemaNotNewer(db.prepare('SELECT coalesce(max(version), 0) FROM schema_migrations').pluck().get() as number, file);
  const applied = new Set(db.prepare('SELECT version FROM schema_migrations').pluck().all() as number[]);
  const alreadyApplied = db.prepare('SELECT 1 FROM schema_migrations WHERE version = ?');
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)');
  for (const m of pendingMigrations(applied)) {
    try {
      db.transaction(() => {
        // Another process on the same file may have applied it since we looked.
        if (alreadyApplied.get(m.version) !== undefined) return;
        db.exec(m.sqlite);
        record.run(m.version, m.name, Date.now());
      }).immediate();
    } catch (err) {
      throw environmentError(err, file) ?? migrationFailed(m, file, err);
    }
  }
}

/** The error for a data directory that cannot hold the database. */
function dataDirError(dir: string, err: unknown): DetError {
  return new DetError(
    'DET_ERR_DATA_DIR',
    `data dir ${dir} is not writable: ${errorMessage(err)}. Choose another with --data-dir or fix its permissions`,
    { cause: err },
  );
}

/** Maps errors caused by the file system or other processes, not by our SQL; undefined otherwise. */
function environmentError(err: unknown, file: string): DetError | undefined {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string') return undefined;
  if (/^SQLITE_(BUSY|LOCKED)/.test(code)) {
    return new DetError(
      'DET_ERR_DB_UNREACHABLE',
      `database ${file} stayed locked by another process for ${BUSY_TIMEOUT_MS} ms: is another master using the same data dir?`,
      { cause: err },
    );
  }
  if (/^SQLITE_(CANTOPEN|READONLY|IOERR|FULL|PERM)/.test(code) || /^E(ACCES|PERM|ROFS|NOSPC|NOTDIR)$/.test(code)) {
    return dataDirError(path.dirname(path.resolve(file)), err);
  }
  if (/^SQLITE_(NOTADB|CORRUPT)/.test(code)) {
    return new DetError('DET_ERR_DB_UNREACHABLE', `${file} is not a usable SQLite database: ${errorMessage(err)}. Restore it from a backup or choose another --data-dir`, {
      cause: err,
    });
  }
  return undefined;
}

/** Any error from a SQLite call as a DetError. */
function sqliteError(err: unknown, file: string): DetError {
  if (err instanceof DetError) return err;
  return environmentError(err, file) ?? new DetError('DET_ERR_INTERNAL', `SQLite error on ${file}: ${errorMessage(err)}`, { cause: err });
}
