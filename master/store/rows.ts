// Record <-> row mapping and small SQL builders shared by both backends, so
// sqlite.ts and postgres.ts differ only in driver calls and dialect quirks.
import { DetError } from '../../common/errors';
import type {
  AgentRecord,
  AllocationRecord,
  CheckpointRecord,
  ExperimentPatch,
  ExperimentRecord,
  NewExperiment,
  NewTrial,
  StoreKind,
  TrialLogRecord,
  TrialPatch,
  TrialRecord,
  TrialState,
} from './store';

/** A row as a driver returns it, keyed by column name. */
export type Row = Record<string, unknown>;

/** States after which a trial never runs again. */
export const TERMINAL_TRIAL_STATES: readonly TrialState[] = ['COMPLETED', 'ERROR', 'CANCELED'];

/** The task id of a trial, fixed at creation. */
export function taskIdFor(experimentId: number, trialId: number): string {
  return `${experimentId}.${trialId}`;
}

// --- reading: pg returns BIGINT as string and BOOLEAN as boolean, SQLite returns
// numbers for both, so every read goes through these.

/** A numeric column as a JS number. */
export function num(v: unknown): number {
  const n = typeof v === 'number' ? v : Number(v as string | bigint);
  if (!Number.isFinite(n)) throw new DetError('DET_ERR_INTERNAL', `expected a number in the database, got ${String(v)}`);
  return n;
}

function numOrNull(v: unknown): number | null {
  return v === null || v === undefined ? null : num(v);
}

function bool(v: unknown): boolean {
  return v === true || v === 1 || v === 1n;
}

function json<T>(v: unknown): T {
  return JSON.parse(v as string) as T;
}

function str(v: unknown): string {
  return v as string;
}

function strOrNull<T extends string>(v: unknown): T | null {
  return v === null || v === undefined ? null : (v as T);
}

// --- writing

function boolValue(kind: StoreKind, b: boolean): unknown {
  // better-sqlite3 cannot bind booleans.
  return kind === 'sqlite' ? (b ? 1 : 0) : b;
}

/** Columns of a new experiment. */
export function experimentToRow(kind: StoreKind, e: NewExperiment): Row {
  return {
    name: e.name,
    state: e.state,
    config_yaml: e.configYaml,
    config: JSON.stringify(e.config),
    resource_pool: e.resourcePool,
    priority: e.priority,
    kill_requested: boolValue(kind, e.killRequested),
    created_at_ms: e.createdAtMs,
    ended_at_ms: e.endedAtMs,
  };
}

/** An experiment read back. */
export function experimentFromRow(r: Row): ExperimentRecord {
  return {
    id: num(r.id),
    name: str(r.name),
    state: str(r.state) as ExperimentRecord['state'],
    configYaml: str(r.config_yaml),
    config: json(r.config),
    resourcePool: str(r.resource_pool),
    priority: num(r.priority),
    killRequested: bool(r.kill_requested),
    createdAtMs: num(r.created_at_ms),
    endedAtMs: numOrNull(r.ended_at_ms),
  };
}

/** Columns to change for an experiment patch; fields left undefined are not touched. */
export function experimentPatchToRow(kind: StoreKind, p: ExperimentPatch): Row {
  return defined({
    state: p.state,
    kill_requested: p.killRequested === undefined ? undefined : boolValue(kind, p.killRequested),
    ended_at_ms: p.endedAtMs,
  });
}

/** Columns of a new trial; the task id is filled in once the trial id is known. */
export function trialToRow(t: NewTrial, experimentId: number, taskId: string): Row {
  return {
    experiment_id: experimentId,
    state: t.state,
    hparams: JSON.stringify(t.hparams),
    restarts: t.restarts,
    task_id: taskId,
    allocation_id: t.allocationId,
    agent_id: t.agentId,
    slot_ids: JSON.stringify(t.slotIds),
    exit_code: t.exitCode,
    message: t.message,
    created_at_ms: t.createdAtMs,
    ended_at_ms: t.endedAtMs,
  };
}

/** A trial read back. */
export function trialFromRow(r: Row): TrialRecord {
  return {
    id: num(r.id),
    experimentId: num(r.experiment_id),
    state: str(r.state) as TrialState,
    hparams: json(r.hparams),
    restarts: num(r.restarts),
    taskId: str(r.task_id),
    allocationId: strOrNull(r.allocation_id),
    agentId: strOrNull(r.agent_id),
    slotIds: json(r.slot_ids),
    exitCode: numOrNull(r.exit_code),
    message: str(r.message),
    createdAtMs: num(r.created_at_ms),
    endedAtMs: numOrNull(r.ended_at_ms),
  };
}

/** Columns to change for a trial patch; fields left undefined are not touched. */
export function trialPatchToRow(p: TrialPatch): Row {
  return defined({
    state: p.state,
    restarts: p.restarts,
    allocation_id: p.allocationId,
    agent_id: p.agentId,
    slot_ids: p.slotIds === undefined ? undefined : JSON.stringify(p.slotIds),
    exit_code: p.exitCode,
    message: p.message,
    ended_at_ms: p.endedAtMs,
  });
}

/** Columns of an allocation. */
export function allocationToRow(a: AllocationRecord): Row {
  return {
    id: a.id,
    trial_id: a.trialId,
    task_id: a.taskId,
    agent_id: a.agentId,
    slot_ids: JSON.stringify(a.slotIds),
    state: a.state,
    container_id: a.containerId,
    created_at_ms: a.createdAtMs,
    ended_at_ms: a.endedAtMs,
    exit_code: a.exitCode,
    failure_kind: a.failureKind,
    message: a.message,
  };
}

/** An allocation read back. */
export function allocationFromRow(r: Row): AllocationRecord {
  return {
    id: str(r.id),
    trialId: num(r.trial_id),
    taskId: str(r.task_id),
    agentId: str(r.agent_id),
    slotIds: json(r.slot_ids),
    state: str(r.state) as AllocationRecord['state'],
    containerId: str(r.container_id),
    createdAtMs: num(r.created_at_ms),
    endedAtMs: numOrNull(r.ended_at_ms),
    exitCode: numOrNull(r.exit_code),
    failureKind: strOrNull(r.failure_kind),
    message: str(r.message),
  };
}

/** Columns of an agent. */
export function agentToRow(kind: StoreKind, a: AgentRecord): Row {
  return {
    id: a.id,
    resource_pool: a.resourcePool,
    version: a.version,
    hostname: a.hostname,
    devices: JSON.stringify(a.devices),
    labels: JSON.stringify(a.labels),
    enabled: boolValue(kind, a.enabled),
    disabled_reason: a.disabledReason,
    disabled_slots: JSON.stringify(a.disabledSlots),
    registered_at_ms: a.registeredAtMs,
    last_seen_ms: a.lastSeenMs,
  };
}

/** An agent read back. */
export function agentFromRow(r: Row): AgentRecord {
  return {
    id: str(r.id),
    resourcePool: str(r.resource_pool),
    version: str(r.version),
    hostname: str(r.hostname),
    devices: json(r.devices),
    labels: json(r.labels),
    enabled: bool(r.enabled),
    disabledReason: str(r.disabled_reason),
    disabledSlots: json(r.disabled_slots),
    registeredAtMs: num(r.registered_at_ms),
    lastSeenMs: num(r.last_seen_ms),
  };
}

/** A log line read back. */
export function trialLogFromRow(r: Row): TrialLogRecord {
  return {
    trialId: num(r.trial_id),
    sequence: num(r.sequence),
    allocationId: str(r.allocation_id),
    timestampMs: num(r.timestamp_ms),
    stream: str(r.stream) as TrialLogRecord['stream'],
    text: str(r.text),
  };
}

/** Columns of a checkpoint. */
export function checkpointToRow(c: CheckpointRecord): Row {
  return {
    uuid: c.uuid,
    experiment_id: c.experimentId,
    trial_id: c.trialId,
    allocation_id: c.allocationId,
    name: c.name,
    state: c.state,
    created_at_ms: c.createdAtMs,
    reported_at_ms: c.reportedAtMs,
    total_size: c.totalSize,
    file_count: c.fileCount,
    metadata: JSON.stringify(c.metadata),
    storage: JSON.stringify(c.storage),
    location: c.location,
  };
}

/** A checkpoint read back. */
export function checkpointFromRow(r: Row): CheckpointRecord {
  return {
    uuid: str(r.uuid),
    experimentId: num(r.experiment_id),
    trialId: num(r.trial_id),
    allocationId: str(r.allocation_id),
    name: str(r.name),
    state: str(r.state) as CheckpointRecord['state'],
    createdAtMs: num(r.created_at_ms),
    reportedAtMs: num(r.reported_at_ms),
    totalSize: num(r.total_size),
    fileCount: num(r.file_count),
    metadata: json(r.metadata),
    storage: json(r.storage),
    location: str(r.location),
  };
}

// uuids compare byte-wise in both dialects (PostgreSQL would otherwise use the database's collation).
const uuidOrder = (kind: StoreKind) => (kind === 'postgres' ? 'uuid COLLATE "C"' : 'uuid');

/** ORDER BY of listCheckpoints: createdAtMs, then uuid. */
export function checkpointOrder(kind: StoreKind): string {
  return `ORDER BY created_at_ms, ${uuidOrder(kind)}`;
}

/** ORDER BY of latestCheckpoint: newest first by createdAtMs, then reportedAtMs (then uuid, so ties are stable). */
export function latestCheckpointOrder(kind: StoreKind): string {
  return `ORDER BY created_at_ms DESC, reported_at_ms DESC, ${uuidOrder(kind)} DESC`;
}

/** `WHERE ...` of listCheckpoints for a filter (empty for none), with its parameters. */
export function checkpointFilterSql(kind: StoreKind, f: { experimentId?: number; trialId?: number }): Sql {
  const conds: string[] = [];
  const params: unknown[] = [];
  if (f.experimentId !== undefined) {
    params.push(f.experimentId);
    conds.push(`experiment_id = ${param(kind, params.length)}`);
  }
  if (f.trialId !== undefined) {
    params.push(f.trialId);
    conds.push(`trial_id = ${param(kind, params.length)}`);
  }
  return { text: conds.length === 0 ? '' : `WHERE ${conds.join(' AND ')}`, params };
}

/**
 * Log text as both backends can store it: PostgreSQL rejects NUL in TEXT and
 * both would silently mangle lone UTF-16 surrogates, so containers printing
 * binary junk get U+FFFD instead of a rejected batch or a silent difference.
 */
export function cleanLogText(text: string): string {
  return text.replace(/\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

function defined(row: Row): Row {
  return Object.fromEntries(Object.entries(row).filter(([, v]) => v !== undefined));
}

// --- SQL builders. Column names come only from the mappers above, never from callers.

function param(kind: StoreKind, i: number): string {
  return kind === 'sqlite' ? '?' : `$${i}`;
}

/** A parameterised statement. */
export interface Sql {
  text: string;
  params: unknown[];
}

/** `INSERT ... RETURNING *`, or an upsert on `conflictKey` when given (both dialects share the syntax). */
export function insertSql(kind: StoreKind, table: string, row: Row, conflictKey?: string): Sql {
  const cols = Object.keys(row);
  let text = `INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((_, i) => param(kind, i + 1)).join(', ')})`;
  if (conflictKey !== undefined) {
    const updates = cols.filter((c) => c !== conflictKey).map((c) => `${c} = excluded.${c}`);
    text += ` ON CONFLICT (${conflictKey}) DO UPDATE SET ${updates.join(', ')}`;
  }
  return { text: `${text} RETURNING *`, params: Object.values(row) };
}

/** `INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key`: no row back means the key was already there. */
export function insertIfAbsentSql(kind: StoreKind, table: string, row: Row, key: string): Sql {
  const cols = Object.keys(row);
  return {
    text: `INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((_, i) => param(kind, i + 1)).join(', ')}) ON CONFLICT (${key}) DO NOTHING RETURNING ${key}`,
    params: Object.values(row),
  };
}

/**
 * The statements that remove an experiment and everything that references it, children first; run them in
 * one transaction. The last one deletes the experiment row itself: 0 affected rows means it did not exist.
 */
export function deleteExperimentSql(kind: StoreKind, id: number): Sql[] {
  const p = param(kind, 1);
  const trialsOf = `SELECT id FROM trials WHERE experiment_id = ${p}`;
  return [
    `DELETE FROM checkpoints WHERE experiment_id = ${p}`,
    `DELETE FROM trial_logs WHERE trial_id IN (${trialsOf})`,
    `DELETE FROM allocations WHERE trial_id IN (${trialsOf})`,
    `DELETE FROM trials WHERE experiment_id = ${p}`,
    `DELETE FROM experiments WHERE id = ${p}`,
  ].map((text) => ({ text, params: [id] }));
}

/** `UPDATE table SET ... WHERE id = ?`; `set` must not be empty. */
export function updateByIdSql(kind: StoreKind, table: string, set: Row, id: number): Sql {
  const cols = Object.keys(set);
  const assignments = cols.map((c, i) => `${c} = ${param(kind, i + 1)}`);
  return {
    text: `UPDATE ${table} SET ${assignments.join(', ')} WHERE id = ${param(kind, cols.length + 1)}`,
    params: [...Object.values(set), id],
  };
}

// --- errors shared by both backends

/** The error for any call after close(). */
export function storeClosed(kind: StoreKind): DetError {
  return new DetError('DET_ERR_SHUTTING_DOWN', `the ${kind} store is closed: the master is shutting down`);
}

/** The error for a patch or log append naming a missing experiment. */
export function experimentNotFound(id: number): DetError {
  return new DetError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${id} does not exist`);
}

/** The error for a checkpoint uuid that is not recorded. */
export function checkpointNotFound(uuid: string): DetError {
  return new DetError('DET_ERR_CHECKPOINT_NOT_FOUND', `checkpoint ${uuid} does not exist`);
}

/** The error for a checkpoint whose trial belongs to another experiment. */
export function checkpointTrialMismatch(c: CheckpointRecord, actualExperimentId: number): DetError {
  return new DetError(
    'DET_ERR_INVALID_ARGUMENT',
    `checkpoint ${c.uuid} names trial ${c.trialId} of experiment ${c.experimentId}, but trial ${c.trialId} belongs to experiment ${actualExperimentId}`,
  );
}

/** The error for a patch or log append naming a missing trial. */
export function trialNotFound(id: number): DetError {
  return new DetError('DET_ERR_TRIAL_NOT_FOUND', `trial ${id} does not exist`);
}
