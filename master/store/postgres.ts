// The Store on PostgreSQL (pg.Pool): for masters that need a database outside
// the instance. Same shape as sqlite.ts; the differences are async transactions
// on a checked-out client and row locks where SQLite relies on its single writer.
import { randomUUID } from 'node:crypto';
import { Pool, PoolClient, QueryResult } from 'pg';
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

/** Tuning for openPostgresStore; every field has a default. */
export interface PostgresStoreOptions {
  /** Give up connecting after this long (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Most connections held at once (default 10). */
  poolSize?: number;
  /** Called when an idle pooled connection fails (default: one line on stderr); the pool replaces it. */
  onPoolError?: (err: Error) => void;
}

/** Session advisory lock key held while migrating ("det_mig" in ASCII), so two masters never migrate at once. */
const MIGRATION_LOCK_KEY = 0x6465745f6d6967;

/** Connection-level failures: the server is gone, not our SQL. */
const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
]);

const TERMINAL_STATES_SQL = TERMINAL_TRIAL_STATES.map((s) => `'${s}'`).join(', ');

/** Anything that can run a query: the pool or a client inside a transaction. */
type Queryable = Pick<PoolClient, 'query'>;

/** The Store on PostgreSQL. */
export class PostgresStore implements Store {
  readonly kind = 'postgres' as const;
  private closing: Promise<void> | undefined;

  /** Use openPostgresStore. */
  constructor(
    private readonly pool: Pool,
    /** host:port/db, safe to log: it never carries credentials. */
    readonly where: string,
  ) {}

  async clusterId(): Promise<string> {
    const { rows } = await this.query('clusterId', 'SELECT cluster_id FROM cluster WHERE id = 1');
    return rows[0].cluster_id as string;
  }

  async createExperiment(exp: NewExperiment, trials: NewTrial[]): Promise<{ experiment: ExperimentRecord; trials: TrialRecord[] }> {
    return this.tx('createExperiment', async (c) => {
      const experiment = experimentFromRow(await one(c, insertSql('postgres', 'experiments', experimentToRow('postgres', exp))));
      const stored: TrialRecord[] = [];
      for (const t of trials) {
        // The task id embeds the trial id, known only after the insert.
        const id = num((await one(c, insertSql('postgres', 'trials', trialToRow(t, experiment.id, '')))).id);
        const text = 'UPDATE trials SET task_id = $1 WHERE id = $2 RETURNING *';
        stored.push(trialFromRow(await one(c, { text, params: [taskIdFor(experiment.id, id), id] })));
      }
      return { experiment, trials: stored };
    });
  }

  async getExperiment(id: number): Promise<ExperimentRecord | undefined> {
    const { rows } = await this.query('getExperiment', 'SELECT * FROM experiments WHERE id = $1', [id]);
    return rows[0] && experimentFromRow(rows[0]);
  }

  async listExperiments(): Promise<ExperimentRecord[]> {
    const { rows } = await this.query('listExperiments', 'SELECT * FROM experiments ORDER BY id DESC');
    return rows.map(experimentFromRow);
  }

  async updateExperiment(id: number, patch: ExperimentPatch): Promise<void> {
    await this.update('updateExperiment', 'experiments', experimentPatchToRow('postgres', patch), id, experimentNotFound);
  }

  async getTrial(id: number): Promise<TrialRecord | undefined> {
    const { rows } = await this.query('getTrial', 'SELECT * FROM trials WHERE id = $1', [id]);
    return rows[0] && trialFromRow(rows[0]);
  }

  async listTrials(experimentId: number): Promise<TrialRecord[]> {
    const { rows } = await this.query('listTrials', 'SELECT * FROM trials WHERE experiment_id = $1 ORDER BY id', [experimentId]);
    return rows.map(trialFromRow);
  }

  async listActiveTrials(): Promise<TrialRecord[]> {
    const { rows } = await this.query('listActiveTrials', `SELECT * FROM trials WHERE state NOT IN (${TERMINAL_STATES_SQL}) ORDER BY id`);
    return rows.map(trialFromRow);
  }

  async updateTrial(id: number, patch: TrialPatch): Promise<void> {
    await this.update('updateTrial', 'trials', trialPatchToRow(patch), id, trialNotFound);
  }

  async putAllocation(alloc: AllocationRecord): Promise<void> {
    const sql = insertSql('postgres', 'allocations', allocationToRow(alloc), 'id');
    await this.query('putAllocation', sql.text, sql.params);
  }

  async getAllocation(id: string): Promise<AllocationRecord | undefined> {
    const { rows } = await this.query('getAllocation', 'SELECT * FROM allocations WHERE id = $1', [id]);
    return rows[0] && allocationFromRow(rows[0]);
  }

  async putAgent(agent: AgentRecord): Promise<void> {
    const sql = insertSql('postgres', 'agents', agentToRow('postgres', agent), 'id');
    await this.query('putAgent', sql.text, sql.params);
  }

  async getProvisionerState(pool: string): Promise<string | undefined> {
    const { rows } = await this.query('getProvisionerState', 'SELECT state FROM provisioner_state WHERE pool = $1', [pool]);
    return rows[0]?.state as string | undefined;
  }

  async putProvisionerState(pool: string, state: string): Promise<void> {
    await this.query(
      'putProvisionerState',
      'INSERT INTO provisioner_state (pool, state, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT (pool) DO UPDATE SET state = EXCLUDED.state, updated_at_ms = EXCLUDED.updated_at_ms',
      [pool, state, Date.now()],
    );
  }

  async listAgents(): Promise<AgentRecord[]> {
    const { rows } = await this.query('listAgents', 'SELECT * FROM agents ORDER BY id');
    return rows.map(agentFromRow);
  }

  async appendTrialLogs(trialId: number, lines: Omit<TrialLogRecord, 'trialId' | 'sequence'>[]): Promise<TrialLogRecord[]> {
    return this.tx('appendTrialLogs', async (c) => {
      // Locking the trial row serialises appenders of one trial across all
      // masters and connections; under READ COMMITTED the max() below then sees
      // every earlier append. NO KEY UPDATE does not block foreign-key checks.
      const locked = await c.query('SELECT id FROM trials WHERE id = $1 FOR NO KEY UPDATE', [trialId]);
      if (locked.rowCount === 0) throw trialNotFound(trialId);
      const last = await lastSequence(c, trialId);
      const records = lines.map(
        (l, i): TrialLogRecord => ({ trialId, sequence: last + i + 1, allocationId: l.allocationId, timestampMs: l.timestampMs, stream: l.stream, text: cleanLogText(l.text) }),
      );
      if (records.length > 0) {
        // One statement for any batch size: arrays, not one parameter per value.
        await c.query(
          `INSERT INTO trial_logs (trial_id, sequence, allocation_id, timestamp_ms, stream, text)
           SELECT $1, $2::bigint + u.ord, u.allocation_id, u.timestamp_ms, u.stream, u.text
           FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[]) WITH ORDINALITY AS u(allocation_id, timestamp_ms, stream, text, ord)`,
          [trialId, last, records.map((r) => r.allocationId), records.map((r) => r.timestampMs), records.map((r) => r.stream), records.map((r) => r.text)],
        );
      }
      return records;
    });
  }

  async trialLogs(trialId: number, afterSequence: number, limit: number): Promise<TrialLogRecord[]> {
    const { rows } = await this.query(
      'trialLogs',
      'SELECT * FROM trial_logs WHERE trial_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3',
      [trialId, afterSequence, Math.max(0, limit)],
    );
    return rows.map(trialLogFromRow);
  }

  async lastTrialLogSequence(trialId: number): Promise<number> {
    this.live();
    try {
      return await lastSequence(this.pool, trialId);
    } catch (err) {
      throw pgError(err, this.where, 'lastTrialLogSequence');
    }
  }

  async addCheckpoint(rec: CheckpointRecord): Promise<boolean> {
    return this.tx('addCheckpoint', async (c) => {
      // KEY SHARE keeps the trial (and so its experiment) from being deleted until we commit.
      const trial = await c.query<Row>('SELECT experiment_id FROM trials WHERE id = $1 FOR KEY SHARE', [rec.trialId]);
      if (trial.rowCount === 0) throw trialNotFound(rec.trialId);
      const experimentId = num(trial.rows[0].experiment_id);
      if (experimentId !== rec.experimentId) throw checkpointTrialMismatch(rec, experimentId);
      const sql = insertIfAbsentSql('postgres', 'checkpoints', checkpointToRow(rec), 'uuid');
      return ((await c.query(sql.text, sql.params)).rowCount ?? 0) > 0;
    });
  }

  async getCheckpoint(uuid: string): Promise<CheckpointRecord | undefined> {
    const { rows } = await this.query('getCheckpoint', 'SELECT * FROM checkpoints WHERE uuid = $1', [uuid]);
    return rows[0] && checkpointFromRow(rows[0]);
  }

  async listCheckpoints(filter: CheckpointFilter): Promise<CheckpointRecord[]> {
    const where = checkpointFilterSql('postgres', filter);
    const { rows } = await this.query('listCheckpoints', `SELECT * FROM checkpoints ${where.text} ${checkpointOrder('postgres')}`, where.params);
    return rows.map(checkpointFromRow);
  }

  async latestCheckpoint(trialId: number): Promise<CheckpointRecord | undefined> {
    const { rows } = await this.query(
      'latestCheckpoint',
      `SELECT * FROM checkpoints WHERE trial_id = $1 AND state = 'COMPLETED' ${latestCheckpointOrder('postgres')} LIMIT 1`,
      [trialId],
    );
    return rows[0] && checkpointFromRow(rows[0]);
  }

  async setCheckpointState(uuid: string, state: CheckpointState): Promise<void> {
    const result = await this.query('setCheckpointState', 'UPDATE checkpoints SET state = $1 WHERE uuid = $2', [state, uuid]);
    if (result.rowCount === 0) throw checkpointNotFound(uuid);
  }

  async deleteExperiment(id: number): Promise<void> {
    await this.tx('deleteExperiment', async (c) => {
      let last = 0;
      for (const sql of deleteExperimentSql('postgres', id)) last = (await c.query(sql.text, sql.params)).rowCount ?? 0;
      // Throwing rolls back the deletes above.
      if (last === 0) throw experimentNotFound(id);
    });
  }

  async close(): Promise<void> {
    this.closing ??= this.pool.end();
    await this.closing;
  }

  private async update(op: string, table: string, set: Row, id: number, notFound: (id: number) => DetError): Promise<void> {
    const sql = Object.keys(set).length === 0 ? { text: `SELECT 1 FROM ${table} WHERE id = $1`, params: [id] } : updateByIdSql('postgres', table, set, id);
    const result = await this.query(op, sql.text, sql.params);
    if (result.rowCount === 0) throw notFound(id);
  }

  private live(): void {
    if (this.closing !== undefined) throw storeClosed('postgres');
  }

  /** One statement on any pooled connection. */
  private async query(op: string, text: string, params: unknown[] = []): Promise<QueryResult<Row>> {
    this.live();
    try {
      return await this.pool.query<Row>(text, params);
    } catch (err) {
      throw pgError(err, this.where, op);
    }
  }

  /** Runs `fn` in a transaction on one connection; rolls back on any error. */
  private async tx<T>(op: string, fn: (c: PoolClient) => Promise<T>): Promise<T> {
    this.live();
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw pgError(err, this.where, op);
    }
    // A checked-out client has no pool listener; without ours a dropped
    // connection would be an unhandled 'error' event and kill the process.
    let broken: Error | undefined;
    const onError = (err: Error): void => {
      broken = err;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch((rollbackErr: Error) => {
        broken ??= rollbackErr;
      });
      throw pgError(err, this.where, op);
    } finally {
      client.off('error', onError);
      // A broken connection is destroyed rather than handed to the next caller.
      client.release(broken);
    }
  }
}

/** Connects to PostgreSQL at `url`, migrates the schema under an advisory lock, and returns the store. */
export async function openPostgresStore(url: string, options: PostgresStoreOptions = {}): Promise<PostgresStore> {
  const where = describePostgresUrl(url);
  let pool: Pool;
  try {
    pool = new Pool({
      connectionString: url,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 5000,
      max: options.poolSize ?? 10,
      keepAlive: true,
      application_name: 'det-master',
    });
  } catch (err) {
    throw new DetError('DET_ERR_DB_UNREACHABLE', redact(`invalid PostgreSQL URL for ${where}: ${errorMessage(err)}`, url), { cause: err });
  }
  const onPoolError = options.onPoolError ?? ((err: Error) => process.stderr.write(`det-master: idle PostgreSQL connection to ${where} failed: ${redact(err.message, url)}\n`));
  pool.on('error', onPoolError);

  let client: PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw new DetError(
      'DET_ERR_DB_UNREACHABLE',
      redact(`cannot connect to PostgreSQL at ${where}: ${reasonOf(err)}. Is it running and is the URL right?`, url),
      { cause: err },
    );
  }
  let broken: Error | undefined;
  const onError = (err: Error): void => {
    broken = err;
  };
  client.on('error', onError);
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    try {
      await migrate(client, where);
      await client.query('INSERT INTO cluster (id, cluster_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING', [randomUUID()]);
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch((err: Error) => {
        // Destroying the session below releases the lock instead.
        broken ??= err;
      });
    }
  } catch (err) {
    client.off('error', onError);
    client.release(true);
    await pool.end().catch(() => undefined);
    throw pgError(err, where, 'migrate');
  }
  client.off('error', onError);
  client.release(broken);
  return new PostgresStore(pool, where);
}

/** Applies pending migrations, each in its own transaction; the caller holds the migration lock. */
async function migrate(c: PoolClient, where: string): Promise<void> {
  await c.query(SCHEMA_MIGRATIONS_DDL.postgres);
  const { rows } = await c.query<Row>('SELECT version FROM schema_migrations');
  const applied = new Set(rows.map((r) => num(r.version)));
  checkSchemaNotNewer(Math.max(0, ...applied), where);
  for (const m of pendingMigrations(applied)) {
    try {
      await c.query('BEGIN');
      await c.query(m.postgres);
      await c.query('INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)', [m.version, m.name, Date.now()]);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw connectionError(err, where, 'migrate') ?? migrationFailed(m, where, err);
    }
  }
}

async function one(c: Queryable, sql: Sql): Promise<Row> {
  return (await c.query<Row>(sql.text, sql.params)).rows[0];
}

async function lastSequence(c: Queryable, trialId: number): Promise<number> {
  const { rows } = await c.query<Row>('SELECT coalesce(max(sequence), 0) AS last FROM trial_logs WHERE trial_id = $1', [trialId]);
  return num(rows[0].last);
}

/** `host:port/db` of a PostgreSQL URL: what to show users, never the credentials. */
export function describePostgresUrl(url: string): string {
  try {
    const u = new URL(url);
    const host = u.hostname || u.searchParams.get('host') || 'localhost';
    const port = u.port || u.searchParams.get('port') || '5432';
    const db = decodeURIComponent(u.pathname.replace(/^\//, '')) || decodeURIComponent(u.username) || 'postgres';
    return `${host}:${port}/${db}`;
  } catch {
    return '(unparseable PostgreSQL URL)';
  }
}

/** Removes the URL's password from a message, in case a driver echoes it back. */
function redact(message: string, url: string): string {
  let password = '';
  try {
    password = new URL(url).password;
  } catch {
    return message;
  }
  if (password === '') return message;
  for (const form of new Set([password, safeDecode(password)])) {
    if (form !== '') message = message.split(form).join('***');
  }
  return message;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** A readable reason; a refused localhost connection is an AggregateError with an empty message. */
function reasonOf(err: unknown): string {
  const e = err as { message?: string; code?: string; errors?: unknown[] };
  if (e.message) return e.message;
  if (Array.isArray(e.errors) && e.errors.length > 0) return e.errors.map(reasonOf).join('; ');
  return e.code ?? String(err);
}

/** A DB_UNREACHABLE error when `err` means the connection failed; undefined for SQL errors. */
function connectionError(err: unknown, where: string, op: string): DetError | undefined {
  const code = (err as { code?: unknown }).code;
  const message = reasonOf(err);
  const lost =
    (typeof code === 'string' && (CONNECTION_ERROR_CODES.has(code) || code.startsWith('08'))) ||
    /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message);
  if (!lost) return undefined;
  return new DetError('DET_ERR_DB_UNREACHABLE', `lost the connection to PostgreSQL at ${where} during ${op}: ${message}. Is it running?`, { cause: err });
}

/** Any error from a pg call as a DetError. */
function pgError(err: unknown, where: string, op: string): DetError {
  if (err instanceof DetError) return err;
  return connectionError(err, where, op) ?? new DetError('DET_ERR_INTERNAL', `PostgreSQL error at ${where} during ${op}: ${errorMessage(err)}`, { cause: err });
}
