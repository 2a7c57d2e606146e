// The cluster core: owns trials in flight, agents and the queue, applies the
// trial state machine's decisions and the scheduler's plans, and writes every
// change through to the store. All mutations run one at a time on a serial
// queue, so the store, the in-memory view and what agents are told agree.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { DetError, errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { AgentToMaster, CheckpointReport, CheckpointStorageSpec, ExitInfo, MasterToAgent, RegisteredInfo, Registration } from '../../common/types';
import { heartbeatTiming } from '../agents/heartbeat';
import { parseExperimentConfig, withDefaultCheckpointStorage, type ExperimentConfig } from '../experiment/config';
import { generateTrials } from '../experiment/searcher';
import { DEFAULT_POOL_POLICY, schedule, type PendingTask, type PoolPolicy, type RunningTask } from '../scheduler/scheduler';
import type { ExperimentRecord, Store, TrialRecord, TrialState } from '../store/store';
import { deriveExperimentState } from '../task/experiment-state';
import { holdsAllocation, isTerminal, transition, type TrialEvent } from '../task/trial-machine';
import { AgentAdmin } from './agent-admin';
import { AgentTable, agentRecord, type AgentChannel, type AgentEntry } from './agents';
import { LogHub } from './log-hub';
import { buildTaskSpec } from './task-spec';
import type { TaskView } from '../provisioner/types';

/** Settings the cluster needs from the master config. */
export interface ClusterOptions {
  /** `scheduler` defaults to best fit, no preemption, 100 zero-slot tasks per agent. */
  resourcePools: { name: string; description: string; scheduler?: PoolPolicy }[];
  defaultResourcePool: string;
  agentReconnectGraceMs: number;
  /** checkpoint_storage of experiments that name none. */
  checkpointStorage: CheckpointStorageSpec;
}

/** A trial the master is driving (not terminal). */
interface LiveTrial {
  rec: TrialRecord;
  exp: LiveExperiment;
  killRequested: boolean;
  /** Number of allocations made so far; the next allocation id's suffix. */
  attempts: number;
  /** Why the last attempt ended (restart, requeue), kept in front of any waiting reason until reassigned. */
  note: string;
  /** Set by the provisioner when no instance type of the pool can ever fit the trial; wins over the scheduler's reason. */
  unschedulable: string | undefined;
}

/** An experiment with unfinished trials. */
interface LiveExperiment {
  rec: ExperimentRecord;
  config: ExperimentConfig;
  trialStates: Map<number, TrialState>;
}

/** An allocation in flight. */
interface LiveAllocation {
  id: string;
  trialId: number;
  agentId: string;
  slotIds: number[];
  containerId: string;
  /** Highest agent-side log sequence stored, to drop resent lines. */
  lastAgentLogSeq: number;
  /** False for allocations recovered after a master restart, until their agent reports. */
  logSeqKnown: boolean;
  /** When the trial's latest checkpoint was stored (this run or the one it resumed from); null: none known. */
  lastCheckpointAtMs: number | null;
}

/** The master's brain. Create with Cluster.open(). */
export class Cluster {
  readonly masterId = randomUUID();
  readonly logs = new LogHub();
  readonly agents = new AgentTable();
  private readonly trials = new Map<number, LiveTrial>();
  private readonly experiments = new Map<number, LiveExperiment>();
  private readonly allocations = new Map<string, LiveAllocation>();
  private readonly queue = new Map<number, PendingTask>();
  /** Recently released allocations, so log lines that arrive after the exit is known are still stored. */
  private readonly released = new Map<string, LiveAllocation>();
  /** Emits 'changed' (pool name) whenever demand or capacity of a pool may have changed. */
  readonly events = new EventEmitter();
  /** Allocations being stopped through no fault of their trial (spot reclaim): requeued without a restart. */
  private readonly preempting = new Map<string, string>();
  private chain: Promise<unknown> = Promise.resolve();
  private schedulePending = false;
  private closed = false;

  /** `det agent|slot disable|enable`, the provisioner's cordons and retirements (agent-admin.ts). */
  readonly admin: AgentAdmin<LiveAllocation>;

  private constructor(
    readonly store: Store,
    readonly clusterId: string,
    private readonly opts: ClusterOptions,
    private readonly log: Logger,
  ) {
    this.admin = new AgentAdmin<LiveAllocation>({
      agents: this.agents,
      store,
      log,
      serial: (fn) => this.serial(fn),
      allocationsOn: (agentId) => this.allocationsOn(agentId),
      stopAllocations: (entry, allocs, reason) => this.stopAllocations(entry, allocs, reason),
      requestSchedule: () => this.requestSchedule(),
      changed: (pool) => this.changed(pool),
    });
  }

  /** Loads unfinished work from the store and returns a running cluster. */
  static async open(store: Store, opts: ClusterOptions, log: Logger): Promise<Cluster> {
    const cluster = new Cluster(store, await store.clusterId(), opts, log);
    await cluster.recover();
    return cluster;
  }

  /** Pool names in config order. */
  get poolNames(): string[] {
    return this.opts.resourcePools.map((p) => p.name);
  }
  /** Pool definitions. */
  get resourcePools(): { name: string; description: string }[] {
    return this.opts.resourcePools;
  }
  /** The pool used when an experiment names none. */
  get defaultPool(): string {
    return this.opts.defaultResourcePool;
  }

  /** Trials waiting for slots in a pool. */
  queuedIn(pool: string): number {
    let n = 0;
    for (const t of this.queue.values()) if (t.pool === pool) n++;
    return n;
  }

  /** Queued tasks of a pool, oldest first (for the provisioner). */
  pendingTasks(pool: string): { id: string; slots: number }[] {
    return [...this.queue.values()].filter((t) => t.pool === pool).sort((a, b) => a.seq - b.seq).map((t) => ({ id: t.id, slots: t.slots }));
  }

  /** Allocations currently placed on an agent. */
  private allocationsOn(agentId: string): LiveAllocation[] {
    return [...this.allocations.values()].filter((a) => a.agentId === agentId);
  }

  /** Number of allocations currently placed on an agent. */
  runningTasksOn(agentId: string): number {
    return this.allocationsOn(agentId).length;
  }

  /** The allocations on an agent as consolidation sees them (master/provisioner/consolidation.ts). */
  tasksOn(agentId: string): TaskView[] {
    return this.allocationsOn(agentId).map((a) => ({
      id: a.id,
      slots: a.slotIds.length,
      lastCheckpointAtMs: a.lastCheckpointAtMs,
      stopping: this.preempting.has(a.id) || this.trials.get(a.trialId)?.killRequested === true,
    }));
  }

  /**
   * Stops an allocation so that its trial resumes elsewhere from its latest checkpoint: SIGTERM
   * and the kill grace period, then requeued without counting a restart. False when it is gone.
   */
  moveAllocation(allocationId: string, reason: string): Promise<boolean> {
    return this.serial(async () => {
      const alloc = this.allocations.get(allocationId);
      const agent = alloc && this.agents.get(alloc.agentId);
      if (!alloc || !agent) return false;
      this.log.info('moving a trial', { trial: alloc.trialId, allocation: alloc.id, agent: agent.id, reason });
      this.stopAllocations(agent, [alloc], reason);
      return true;
    });
  }

  private changed(pool: string): void {
    this.events.emit('changed', pool);
  }

  /** Records that a queued trial cannot run in its pool at all (no instance type is big enough). */
  setUnschedulable(trialId: number, reason: string): Promise<void> {
    return this.serial(async () => {
      const t = this.trials.get(trialId);
      if (!t || t.rec.state !== 'QUEUED') return;
      t.unschedulable = reason;
      await this.setMessage(t, reason);
    });
  }

  /** Allocation id -> trial id for allocations on an agent's slots. */
  trialOfAllocation(allocationId: string): number | undefined {
    return this.allocations.get(allocationId)?.trialId;
  }

  /** Whether a trial is still live (not terminal). */
  isLive(trialId: number): boolean {
    return this.trials.has(trialId);
  }

  /** Runs `fn` after every previously queued mutation. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(() => {
      if (this.closed) throw new DetError('DET_ERR_SHUTTING_DOWN', 'the master is shutting down');
      return fn();
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Ends every agent stream (agents reconnect to the next master); used on shutdown. */
  disconnectAgents(reason: string): void {
    for (const a of this.agents.all()) a.channel?.close(reason);
  }

  /** Stops timers; pending mutations finish first. */
  async close(): Promise<void> {
    await this.chain;
    this.closed = true;
    for (const a of this.agents.all()) if (a.graceTimer) clearTimeout(a.graceTimer);
  }

  // ---- experiments -------------------------------------------------------

  /** Validates a config, stores the experiment and its trials, and queues them. */
  createExperiment(submittedYaml: string): Promise<{ experiment: ExperimentRecord; trials: TrialRecord[] }> {
    parseExperimentConfig(submittedYaml); // problems are reported against what the user wrote
    const configYaml = withDefaultCheckpointStorage(submittedYaml, this.opts.checkpointStorage);
    const config = parseExperimentConfig(configYaml);
    const pool = config.resources.resourcePool ?? this.opts.defaultResourcePool;
    if (!this.poolNames.includes(pool)) {
      throw new DetError('DET_ERR_RESOURCE_POOL_UNKNOWN', `experiment config is invalid (1 problem):\n  - resources.resource_pool: unknown resource pool '${pool}' (this cluster has: ${this.poolNames.join(', ')})`);
    }
    const hparams = generateTrials(config);
    return this.serial(async () => {
      const now = Date.now();
      const created = await this.store.createExperiment(
        { name: config.name, state: 'ACTIVE', configYaml, config, resourcePool: pool, priority: config.resources.priority, killRequested: false, createdAtMs: now, endedAtMs: null },
        hparams.map((hp) => ({ state: 'QUEUED' as const, hparams: hp, restarts: 0, allocationId: null, agentId: null, slotIds: [], exitCode: null, message: '', createdAtMs: now, endedAtMs: null })),
      );
      const exp: LiveExperiment = { rec: created.experiment, config, trialStates: new Map(created.trials.map((t) => [t.id, t.state])) };
      this.experiments.set(exp.rec.id, exp);
      for (const rec of created.trials) {
        this.trials.set(rec.id, { rec, exp, killRequested: false, attempts: 0, note: '', unschedulable: undefined });
        this.enqueue(rec.id);
      }
      this.log.info('experiment created', { experiment: exp.rec.id, name: config.name, trials: created.trials.length, pool });
      this.requestSchedule();
      return created;
    });
  }

  /** Cancels every unfinished trial of an experiment. */
  killExperiment(id: number): Promise<ExperimentRecord> {
    return this.serial(async () => {
      const stored = await this.store.getExperiment(id);
      if (!stored) throw new DetError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${id} not found`);
      const exp = this.experiments.get(id);
      if (!exp) return stored;
      if (!exp.rec.killRequested) {
        exp.rec.killRequested = true;
        await this.store.updateExperiment(id, { killRequested: true });
        this.log.info('experiment kill requested', { experiment: id });
      }
      for (const t of [...this.trials.values()].filter((t) => t.exp === exp)) await this.apply(t, { type: 'kill' });
      await this.refreshExperiment(exp);
      return (await this.store.getExperiment(id))!;
    });
  }

  // ---- agents ------------------------------------------------------------

  /**
   * Accepts a registration: returns the Registered answer and the commands to send after it
   * (kills of reattached allocations whose trial was killed meanwhile), or throws a DetError.
   */
  registerAgent(reg: Registration, channel: AgentChannel): Promise<{ registered: RegisteredInfo; commands: MasterToAgent[] }> {
    return this.serial(async () => {
      if (!this.poolNames.includes(reg.resourcePool)) {
        throw new DetError('DET_ERR_RESOURCE_POOL_UNKNOWN', `resource pool '${reg.resourcePool}' does not exist on this master (pools: ${this.poolNames.join(', ')})`);
      }
      const existing = this.agents.get(reg.agentId);
      if (existing?.channel && existing.channel !== channel) {
        throw new DetError('DET_ERR_AGENT_ID_IN_USE', `agent id '${reg.agentId}' is already connected from ${existing.channel.address}; give each agent a unique agent_id`);
      }
      const entry = this.agents.upsert(reg, channel, Date.now());
      const retiring = this.admin.retiringReason(entry.id);
      if (retiring !== undefined) {
        entry.enabled = false;
        entry.disabledReason = retiring;
      }
      await this.store.putAgent(agentRecord(entry));

      // Reconcile: keep what we expect and the agent still has; the rest is lost or must die.
      const reported = new Map(reg.containers.map((c) => [c.allocationId, c]));
      const expected: string[] = [];
      const commands: MasterToAgent[] = [];
      for (const alloc of this.allocationsOn(entry.id)) {
        const report = reported.get(alloc.id);
        const trial = this.trials.get(alloc.trialId)!;
        if (!report) {
          // Still ASSIGNED: the agent never said it had the allocation (its start was lost with a
          // master that stopped, or with the agent's stream): nothing of the trial ran, so no restart counts.
          const neverStarted = trial.rec.state === 'ASSIGNED';
          const reason = neverStarted
            ? `allocation ${alloc.id} never reached agent ${entry.id}`
            : `container of allocation ${alloc.id} is gone from agent ${entry.id}`;
          await this.apply(trial, { type: 'lost', reason, countsAsRestart: !neverStarted });
          continue;
        }
        expected.push(alloc.id);
        if (report.containerId) alloc.containerId = report.containerId;
        // After a master restart the stored lines' agent sequences are unknown: the agent never
        // resends what it sent, so everything up to its last sent line counts as delivered.
        if (!alloc.logSeqKnown) alloc.lastAgentLogSeq = Math.max(alloc.lastAgentLogSeq, report.lastLogSequence);
        alloc.logSeqKnown = true;
        if (report.state === 'TERMINATED') {
          await this.apply(trial, this.exitEvent(alloc.id, report.exit));
        } else {
          await this.apply(trial, { type: 'progress', state: report.state });
          if (trial.killRequested || this.preempting.has(alloc.id)) commands.push({ kind: 'kill', allocationId: alloc.id, signal: 'SIGTERM', gracePeriodMs: trial.exp.config.killGracePeriodMs });
        }
      }
      // Fencing: containers the master gave up on (requeued after the grace period) still run there;
      // the agent kills them on Registered, and nothing new goes there until it reports them gone.
      const expectedSet = new Set(expected);
      for (const c of reg.containers) if (c.state !== 'TERMINATED' && !expectedSet.has(c.allocationId)) entry.fenced.add(c.allocationId);
      if (entry.fenced.size > 0) this.log.warn('agent still runs containers of requeued allocations; no new work until they are gone', { agent: entry.id, allocations: [...entry.fenced] });
      entry.idleSinceMs = this.runningTasksOn(entry.id) === 0 ? entry.idleSinceMs ?? Date.now() : null;
      this.changed(entry.pool);
      const timing = heartbeatTiming(this.agents.all().length);
      this.log.info('agent registered', { agent: entry.id, pool: entry.pool, slots: entry.devices.length, address: channel.address, reattached: expected.length });
      this.requestSchedule();
      return { registered: { masterId: this.masterId, clusterId: this.clusterId, heartbeatTtlMs: timing.ttlMs, heartbeatIntervalMs: timing.intervalMs, expectedAllocationIds: expected }, commands };
    });
  }

  /** Handles one message from a registered agent. */
  agentMessage(agentId: string, channel: AgentChannel, msg: AgentToMaster): Promise<void> {
    return this.serial(async () => {
      const entry = this.agents.get(agentId);
      if (!entry || entry.channel !== channel) return; // stale stream
      entry.lastSeenMs = Date.now();
      switch (msg.kind) {
        case 'heartbeat':
        case 'register':
          return;
        case 'pullProgress':
          return;
        case 'spotInterruption':
          return this.interrupt(entry, `spot instance ${entry.instanceId || entry.id} is being reclaimed (${msg.action} at ${new Date(msg.actionTimeMs).toISOString()})`);
        case 'logs':
          return this.storeLogs(msg.allocationId, agentId, msg.lines);
        case 'checkpoint':
          return this.recordCheckpoint(agentId, msg.checkpoint);
        case 'containerState': {
          const alloc = this.allocations.get(msg.allocationId);
          if (!alloc || alloc.agentId !== agentId) {
            if (msg.state !== 'TERMINATED') {
              this.log.warn('agent runs an allocation the master does not expect; killing it', { agent: agentId, allocation: msg.allocationId });
              entry.fenced.add(msg.allocationId);
              channel.send({ kind: 'kill', allocationId: msg.allocationId, signal: 'SIGKILL', gracePeriodMs: 0 });
            } else if (entry.fenced.delete(msg.allocationId) && entry.fenced.size === 0) {
              this.log.info('stale containers are gone; the agent gets work again', { agent: agentId });
              this.requestSchedule();
            }
            return;
          }
          if (msg.containerId) alloc.containerId = msg.containerId;
          const trial = this.trials.get(alloc.trialId)!;
          const event: TrialEvent = msg.state !== 'TERMINATED' ? { type: 'progress', state: msg.state } : this.exitEvent(alloc.id, msg.exit);
          await this.apply(trial, event);
          return;
        }
      }
    });
  }

  /** The agent's stream ended (closed, broken or TTL missed). */
  agentDisconnected(agentId: string, channel: AgentChannel, reason: string): Promise<void> {
    return this.serial(async () => {
      const entry = this.agents.get(agentId);
      if (!entry || entry.channel !== channel) return;
      entry.channel = undefined;
      entry.disconnectedSinceMs = Date.now();
      entry.idleSinceMs = null;
      await this.store.putAgent(agentRecord(entry));
      this.changed(entry.pool);
      const running = this.runningTasksOn(agentId);
      this.log.warn('agent disconnected', { agent: agentId, reason, allocations: running, grace_ms: this.opts.agentReconnectGraceMs });
      this.startGrace(entry);
    });
  }

  /**
   * The trial event for an allocation's exit. A stopped (preempted, moved, interrupted) allocation
   * is requeued without a restart whatever its exit code: a trial that checkpoints on SIGTERM and
   * exits 0 was stopped, not finished.
   */
  private exitEvent(allocationId: string, exit: ExitInfo | undefined): TrialEvent {
    const preempted = this.preempting.get(allocationId);
    if (preempted !== undefined) return { type: 'lost', reason: preempted, countsAsRestart: false };
    return { type: 'exited', exit: exit ?? unknownExit() };
  }

  /** The agent's node is going away: schedule nothing there and stop its trials so they requeue elsewhere. */
  private async interrupt(entry: AgentEntry, reason: string): Promise<void> {
    this.log.warn('agent interrupted: requeueing its trials', { agent: entry.id, reason });
    if (entry.enabled) {
      entry.enabled = false;
      entry.disabledReason = reason;
      await this.store.putAgent(agentRecord(entry));
    }
    this.stopAllocations(entry, this.allocationsOn(entry.id), reason);
    this.changed(entry.pool);
  }

  /** SIGTERM (with the trial's grace period) to allocations whose trials are requeued without counting a restart. */
  private stopAllocations(entry: AgentEntry, allocs: LiveAllocation[], reason: string): void {
    for (const alloc of allocs) {
      if (this.preempting.has(alloc.id)) continue;
      this.preempting.set(alloc.id, reason);
      const trial = this.trials.get(alloc.trialId)!;
      entry.channel?.send({ kind: 'kill', allocationId: alloc.id, signal: 'SIGTERM', gracePeriodMs: trial.exp.config.killGracePeriodMs });
    }
  }

  private startGrace(entry: AgentEntry): void {
    if (entry.graceTimer) clearTimeout(entry.graceTimer);
    entry.graceTimer = setTimeout(() => {
      entry.graceTimer = undefined;
      void this.serial(async () => {
        if (entry.channel) return;
        for (const alloc of this.allocationsOn(entry.id)) {
          const preempted = this.preempting.get(alloc.id);
          const reason = preempted ?? `agent ${entry.id} did not reconnect within ${Math.round(this.opts.agentReconnectGraceMs / 1000)}s`;
          await this.apply(this.trials.get(alloc.trialId)!, { type: 'lost', reason, countsAsRestart: preempted === undefined });
        }
      }).catch((err) => this.log.error('reconnect grace handling failed', { agent: entry.id, err }));
    }, this.opts.agentReconnectGraceMs);
    entry.graceTimer.unref();
  }

  // ---- core --------------------------------------------------------------

  private enqueue(trialId: number): void {
    const t = this.trials.get(trialId)!;
    this.queue.set(trialId, { id: String(trialId), pool: t.exp.rec.resourcePool, slots: t.exp.config.resources.slotsPerTrial, priority: t.exp.rec.priority, seq: trialId });
    this.changed(t.exp.rec.resourcePool);
  }

  /** Applies one trial event: state machine, effects, persistence, experiment state. */
  private async apply(trial: LiveTrial, event: TrialEvent): Promise<void> {
    const before = trial.rec.state;
    const r = transition({ state: before, restarts: trial.rec.restarts, maxRestarts: trial.exp.config.maxRestarts, killRequested: trial.killRequested, exitCode: trial.rec.exitCode, message: trial.rec.message }, event);
    if (r.ignored) {
      this.log.debug('trial event ignored', { trial: trial.rec.id, event: event.type, why: r.ignored });
      return;
    }
    trial.killRequested = r.next.killRequested;
    const allocId = trial.rec.allocationId;
    for (const effect of r.effects) {
      switch (effect.type) {
        case 'kill-container': {
          const alloc = allocId ? this.allocations.get(allocId) : undefined;
          const agent = alloc ? this.agents.get(alloc.agentId) : undefined;
          agent?.channel?.send({ kind: 'kill', allocationId: alloc!.id, signal: 'SIGTERM', gracePeriodMs: trial.exp.config.killGracePeriodMs });
          break;
        }
        case 'release-slots':
          if (allocId) await this.releaseAllocation(allocId, event.type === 'exited' ? event.exit : undefined, event.type === 'lost' ? event.reason : undefined);
          break;
        case 'enqueue':
          this.enqueue(trial.rec.id);
          break;
        case 'dequeue':
          this.queue.delete(trial.rec.id);
          break;
        case 'start-container':
          break; // done by assign(), which already holds the agent and slots
      }
    }
    Object.assign(trial.rec, { state: r.next.state, restarts: r.next.restarts, exitCode: r.next.exitCode, message: r.next.message });
    trial.note = r.next.state === 'QUEUED' ? r.next.message : '';
    const terminal = isTerminal(r.next.state);
    if (terminal) trial.rec.endedAtMs = Date.now();
    await this.store.updateTrial(trial.rec.id, { state: trial.rec.state, restarts: trial.rec.restarts, exitCode: trial.rec.exitCode, message: trial.rec.message, endedAtMs: trial.rec.endedAtMs });
    this.log.info('trial state', { trial: trial.rec.id, from: before, to: r.next.state, ...(r.next.message ? { message: r.next.message } : {}) });
    trial.exp.trialStates.set(trial.rec.id, r.next.state);
    if (terminal) {
      this.trials.delete(trial.rec.id);
      this.queue.delete(trial.rec.id);
      this.logs.end(trial.rec.id);
    }
    if (before !== r.next.state) await this.refreshExperiment(trial.exp);
    if (r.effects.some((e) => e.type === 'release-slots' || e.type === 'enqueue')) this.requestSchedule();
  }

  private async releaseAllocation(allocId: string, exit: ExitInfo | undefined, lostReason: string | undefined): Promise<void> {
    const alloc = this.allocations.get(allocId);
    if (!alloc) return;
    this.allocations.delete(allocId);
    this.released.set(allocId, alloc);
    if (this.released.size > RELEASED_MEMORY) this.released.delete(this.released.keys().next().value!);
    const agent = this.agents.get(alloc.agentId);
    for (const s of alloc.slotIds) if (agent?.usedSlots.get(s) === allocId) agent.usedSlots.delete(s);
    this.preempting.delete(allocId);
    if (agent) {
      if (agent.channel && this.runningTasksOn(agent.id) === 0) agent.idleSinceMs = Date.now();
      this.changed(agent.pool);
    }
    const stored = await this.store.getAllocation(allocId);
    if (stored) {
      await this.store.putAllocation({
        ...stored,
        state: 'TERMINATED',
        containerId: alloc.containerId,
        endedAtMs: Date.now(),
        exitCode: exit?.exitCode ?? null,
        failureKind: exit?.failureKind ?? (lostReason ? 'AGENT_ERROR' : null),
        message: exit?.message ?? lostReason ?? '',
      });
    }
  }

  private async refreshExperiment(exp: LiveExperiment): Promise<void> {
    const state = deriveExperimentState([...exp.trialStates.values()], exp.rec.killRequested);
    if (state === exp.rec.state) return;
    exp.rec.state = state;
    const ended = state === 'COMPLETED' || state === 'CANCELED' || state === 'ERROR';
    exp.rec.endedAtMs = ended ? Date.now() : null;
    await this.store.updateExperiment(exp.rec.id, { state, endedAtMs: exp.rec.endedAtMs });
    this.log.info('experiment state', { experiment: exp.rec.id, state });
    if (ended) this.experiments.delete(exp.rec.id);
  }

  /** Coalesces scheduling requests into one pass on the serial queue (event-driven, no polling). */
  requestSchedule(): void {
    if (this.schedulePending || this.closed) return;
    this.schedulePending = true;
    void this.serial(async () => {
      this.schedulePending = false;
      await this.schedulePass();
    }).catch((err) => {
      this.schedulePending = false;
      if (!this.closed) this.log.error('scheduling pass failed', { err });
    });
  }

  private async schedulePass(): Promise<void> {
    if (this.queue.size === 0) return;
    const running: RunningTask[] = [];
    const zeroSlot = new Map<string, number>();
    for (const alloc of this.allocations.values()) {
      const trial = this.trials.get(alloc.trialId);
      if (!trial) continue;
      if (alloc.slotIds.length === 0) zeroSlot.set(alloc.agentId, (zeroSlot.get(alloc.agentId) ?? 0) + 1);
      running.push({
        id: String(alloc.trialId), pool: trial.exp.rec.resourcePool, agentId: alloc.agentId, slotIds: alloc.slotIds, priority: trial.exp.rec.priority,
        seq: alloc.trialId, preemptible: true, preempting: this.preempting.has(alloc.id),
      });
    }
    const policies = new Map(this.opts.resourcePools.map((p) => [p.name, p.scheduler ?? DEFAULT_POOL_POLICY]));
    const plan = schedule([...this.queue.values()], this.agents.capacity(zeroSlot), { running, policies });
    for (const p of plan.preemptions) {
      const victim = this.trials.get(Number(p.taskId));
      const alloc = victim?.rec.allocationId ? this.allocations.get(victim.rec.allocationId) : undefined;
      const agent = this.agents.get(p.agentId);
      const winner = this.trials.get(Number(p.forTaskId));
      if (!victim || !alloc || !agent || !winner) continue;
      this.log.info('preempting a trial for a higher-priority one', { trial: victim.rec.id, for_trial: winner.rec.id, agent: p.agentId });
      this.stopAllocations(agent, [alloc], `preempted by trial ${winner.rec.id} (priority ${winner.exp.rec.priority}); requeued`);
    }
    for (const a of plan.assignments) await this.assign(Number(a.taskId), a.agentId, a.slotIds);
    for (const [taskId, reason] of plan.waiting) {
      const trial = this.trials.get(Number(taskId));
      if (trial) await this.setMessage(trial, trial.unschedulable ?? reason);
    }
  }

  /** Stores a queued trial's message: the last attempt's note, then why it waits. */
  private async setMessage(trial: LiveTrial, waiting: string): Promise<void> {
    const message = trial.note ? `${trial.note}; ${waiting}` : waiting;
    if (trial.rec.message === message) return;
    trial.rec.message = message;
    await this.store.updateTrial(trial.rec.id, { message });
  }

  private async assign(trialId: number, agentId: string, slotIds: number[]): Promise<void> {
    const trial = this.trials.get(trialId)!;
    const agent = this.agents.get(agentId)!;
    const allocationId = `${trial.rec.taskId}.${trial.attempts}`;
    const now = Date.now();
    try {
      await this.store.putAllocation({ id: allocationId, trialId, taskId: trial.rec.taskId, agentId, slotIds, state: 'ASSIGNED', containerId: '', createdAtMs: now, endedAtMs: null, exitCode: null, failureKind: null, message: '' });
      await this.store.updateTrial(trialId, { allocationId, agentId, slotIds });
    } catch (err) {
      // Nothing is changed in memory until the store has the allocation: the trial stays queued.
      this.log.error('cannot store an allocation; the trial stays queued', { trial: trialId, agent: agentId, err: errorMessage(err) });
      return;
    }
    this.queue.delete(trialId);
    trial.attempts++;
    const alloc: LiveAllocation = { id: allocationId, trialId, agentId, slotIds, containerId: '', lastAgentLogSeq: 0, logSeqKnown: true, lastCheckpointAtMs: null };
    this.allocations.set(allocationId, alloc);
    for (const s of slotIds) agent.usedSlots.set(s, allocationId);
    agent.idleSinceMs = null;
    Object.assign(trial.rec, { allocationId, agentId, slotIds });
    await this.apply(trial, { type: 'assigned' });
    if (trial.rec.state !== 'ASSIGNED') return; // e.g. canceled by a pending kill
    const deviceType = agent.devices.find((d) => slotIds.includes(d.id))?.type ?? 'cpu';
    const latest = await this.store.latestCheckpoint(trialId).catch((err) => {
      this.log.error('cannot look up the latest checkpoint; the trial starts without it', { trial: trialId, err: errorMessage(err) });
      return undefined;
    });
    if (latest && alloc.lastCheckpointAtMs === null) alloc.lastCheckpointAtMs = latest.reportedAtMs;
    const spec = buildTaskSpec({
      clusterId: this.clusterId, experimentId: trial.exp.rec.id, trialId, taskId: trial.rec.taskId, allocationId, agentId, slotIds, deviceType,
      hparams: trial.rec.hparams, restarts: trial.rec.restarts, config: trial.exp.config,
      checkpointStorage: trial.exp.config.checkpointStorage ?? this.opts.checkpointStorage, latestCheckpointUuid: latest?.uuid ?? '',
    });
    if (!agent.channel?.send({ kind: 'start', spec })) {
      // The stream went away before the start could be sent: not the trial's fault.
      await this.apply(trial, { type: 'lost', reason: `agent ${agentId} disconnected before the start was sent`, countsAsRestart: false });
    }
  }


  /** Records a checkpoint an agent stored; a repeated report (after a reconnect) is harmless. */
  private async recordCheckpoint(agentId: string, c: CheckpointReport): Promise<void> {
    const alloc = this.allocations.get(c.allocationId) ?? this.released.get(c.allocationId);
    if (!alloc || alloc.agentId !== agentId) {
      this.log.warn('checkpoint reported for an allocation this agent does not run; ignored', { agent: agentId, allocation: c.allocationId, checkpoint: c.uuid });
      return;
    }
    const trial = this.trials.get(alloc.trialId);
    const trialRec = trial?.rec ?? (await this.store.getTrial(alloc.trialId));
    if (!trialRec) return;
    const exp = trial?.exp.config ?? parseExperimentConfig((await this.store.getExperiment(trialRec.experimentId))!.configYaml);
    const added = await this.store.addCheckpoint({
      uuid: c.uuid, experimentId: trialRec.experimentId, trialId: trialRec.id, allocationId: c.allocationId, name: c.name, state: 'COMPLETED',
      createdAtMs: c.createdAtMs, reportedAtMs: Date.now(), totalSize: c.totalSize, fileCount: c.fileCount, metadata: c.metadata,
      storage: exp.checkpointStorage ?? this.opts.checkpointStorage, location: c.location,
    });
    // A repeated report (after a reconnect) is no new checkpoint.
    if (added && this.allocations.get(c.allocationId) === alloc) alloc.lastCheckpointAtMs = Date.now();
    if (added) this.log.info('checkpoint stored', { trial: trialRec.id, checkpoint: c.uuid, name: c.name, bytes: c.totalSize, files: c.fileCount });
  }

  private async storeLogs(allocationId: string, agentId: string, lines: { sequence: number; timestampMs: number; stream: 'stdout' | 'stderr' | 'agent'; text: string }[]): Promise<void> {
    const alloc = this.allocations.get(allocationId) ?? this.released.get(allocationId);
    if (!alloc || alloc.agentId !== agentId) return;
    const fresh = lines.filter((l) => l.sequence > alloc.lastAgentLogSeq);
    if (fresh.length === 0) return;
    alloc.lastAgentLogSeq = fresh[fresh.length - 1].sequence;
    const records = await this.store.appendTrialLogs(alloc.trialId, fresh.map((l) => ({ allocationId, timestampMs: l.timestampMs, stream: l.stream, text: l.text })));
    this.logs.publish(alloc.trialId, records);
  }

  /** Rebuilds in-memory state from the store after a start. */
  private async recover(): Promise<void> {
    const now = Date.now();
    for (const rec of await this.store.listAgents()) this.agents.restore(rec, now);
    const active = await this.store.listActiveTrials();
    for (const rec of active) {
      let exp = this.experiments.get(rec.experimentId);
      if (!exp) {
        const erec = (await this.store.getExperiment(rec.experimentId))!;
        const config = parseExperimentConfig(erec.configYaml);
        const all = await this.store.listTrials(erec.id);
        exp = { rec: erec, config, trialStates: new Map(all.map((t) => [t.id, t.state])) };
        this.experiments.set(erec.id, exp);
      }
      const attempts = rec.allocationId ? Number(rec.allocationId.split('.').pop()) + 1 : 0;
      const trial: LiveTrial = { rec, exp, killRequested: exp.rec.killRequested, attempts, note: '', unschedulable: undefined };
      this.trials.set(rec.id, trial);
      if (holdsAllocation(rec.state) && rec.allocationId && rec.agentId) {
        const stored = await this.store.getAllocation(rec.allocationId);
        // Consolidation needs the latest checkpoint's time; unknown (never moved) if the store cannot say.
        const latest = await this.store.latestCheckpoint(rec.id).catch(() => undefined);
        this.allocations.set(rec.allocationId, {
          id: rec.allocationId, trialId: rec.id, agentId: rec.agentId, slotIds: rec.slotIds, containerId: stored?.containerId ?? '', lastAgentLogSeq: 0, logSeqKnown: false,
          lastCheckpointAtMs: latest?.reportedAtMs ?? null,
        });
        const agent = this.agents.get(rec.agentId);
        if (agent) for (const s of rec.slotIds) agent.usedSlots.set(s, rec.allocationId);
      } else if (rec.state === 'QUEUED') {
        this.enqueue(rec.id);
      }
    }
    // Agents holding allocations get the reconnect grace period to come back.
    for (const agent of this.agents.all()) if (this.runningTasksOn(agent.id) > 0) this.startGrace(agent);
    if (active.length > 0) this.log.info('recovered unfinished work from the store', { trials: active.length, allocations: this.allocations.size });
    this.requestSchedule();
  }
}

/** How many released allocations are remembered for late log lines. */
const RELEASED_MEMORY = 1000;

function unknownExit(): ExitInfo {
  return { exitCode: -1, failureKind: 'AGENT_ERROR', message: 'agent reported termination without an exit status' };
}
