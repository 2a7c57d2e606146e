// Runs the scale decider for every pool that has a provider: builds snapshots
// from the cluster, applies plans through the provider, and persists what it
// tracks (instances, launch-error memory, instance-hours) so a restarted
// master keeps its timers and instances. Event-driven (cluster 'changed'
// events) plus a periodic pass for timers.
import { randomUUID } from 'node:crypto';
import { errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { ProvisionerPool } from '../../common/proto-gen/determined/api/v1/ProvisionerPool';
import type { ProvisionerStatusSource } from '../api/service';
import type { Cluster } from '../cluster/cluster';
import type { Store } from '../store/store';
import { decide } from './decider';
import { emptyLaunchMemory, onLaunchFailure, onLaunchSuccess } from './launch-errors';
import { LaunchError, type InstanceInfo, type InstanceView, type LaunchMemory, type PoolScaling, type Provider, type ScalePlan } from './types';

/** A pool the service provisions. */
export interface ProvisionedPool {
  scaling: PoolScaling;
  provider: Provider;
}

/** An instance the service launched, with its accounting. */
interface TrackedInstance extends InstanceInfo {
  /** Instance-hours are counted up to here. */
  accountedUntilMs: number;
  /** The provider's list has shown it at least once. */
  listed?: boolean;
}

/** What is persisted per pool. */
interface PoolState {
  instances: TrackedInstance[];
  memory: LaunchMemory;
  instanceHours: number;
  /** Seed of the next launch's client token. */
  launches: number;
  /** Token prefix, stable per pool across restarts. */
  tokenPrefix: string;
  /** Instances disabled by consolidation (cordoned). */
  cordoned: string[];
  /** Since when each instance's tasks could all have moved elsewhere (consolidation's hysteresis). */
  underusedSince: Record<string, number>;
}

/** How long a launched instance may be missing from the provider's list before it counts as gone. */
const LIST_LAG_GRACE_MS = 2 * 60_000;

/** How often the periodic pass runs (idle/starting timers, provider refresh). */
export const DEFAULT_TICK_MS = 10_000;

interface PoolRuntime {
  name: string;
  scaling: PoolScaling;
  provider: Provider;
  state: PoolState;
  running: Promise<void> | undefined;
  again: boolean;
  listedAtMs: number;
  /** Instances this service asked to terminate (never adopted again). */
  terminating: Set<string>;
}

/** The provisioner of all provisioned pools. */
export class ProvisionerService implements ProvisionerStatusSource {
  private readonly pools = new Map<string, PoolRuntime>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly onChanged = (pool: string) => this.requestPass(pool);

  constructor(
    private readonly cluster: Cluster,
    private readonly store: Store,
    pools: Map<string, ProvisionedPool>,
    private readonly log: Logger,
    private readonly tickMs = DEFAULT_TICK_MS,
  ) {
    for (const [name, p] of pools) {
      this.pools.set(name, { name, scaling: p.scaling, provider: p.provider, running: undefined, again: false, listedAtMs: 0, terminating: new Set(), state: freshState() });
    }
  }

  /** Loads persisted state, reconciles with the providers, and starts reacting. */
  async start(): Promise<void> {
    for (const p of this.pools.values()) {
      const saved = await this.store.getProvisionerState(p.name);
      if (saved) p.state = { ...freshState(), ...(JSON.parse(saved) as PoolState) };
      try {
        await this.refresh(p);
      } catch (err) {
        // The provider may be briefly unavailable (credentials not ready, API error): the periodic pass retries.
        this.log.error('cannot list the provider\'s instances; retrying on the next pass', { pool: p.name, err: errorMessage(err) });
      }
      this.log.info('provisioner started', { pool: p.name, provider: p.provider.type, instances: p.state.instances.length, min: p.scaling.minInstances, max: p.scaling.maxInstances });
    }
    this.cluster.events.on('changed', this.onChanged);
    this.timer = setInterval(() => {
      for (const name of this.pools.keys()) this.requestPass(name);
    }, this.tickMs);
    this.timer.unref();
    for (const name of this.pools.keys()) this.requestPass(name);
  }

  /** Stops reacting; waits for passes in flight. Instances keep running. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.cluster.events.off('changed', this.onChanged);
    await Promise.all([...this.pools.values()].map((p) => p.running));
  }

  /** Runs a pass for a pool now, or right after the one in flight. */
  requestPass(pool: string): void {
    const p = this.pools.get(pool);
    if (!p || this.stopped) return;
    if (p.running) {
      p.again = true;
      return;
    }
    p.running = (async () => {
      do {
        p.again = false;
        try {
          await this.pass(p);
        } catch (err) {
          this.log.error('provisioner pass failed', { pool, err: errorMessage(err) });
        }
      } while (p.again && !this.stopped);
      p.running = undefined;
    })();
  }

  /** Waits until no pass is running for the pool (tests). */
  async idle(pool: string): Promise<void> {
    while (this.pools.get(pool)?.running) await this.pools.get(pool)!.running;
  }

  /** Syncs tracked instances with what the provider reports. */
  private async refresh(p: PoolRuntime): Promise<void> {
    const now = Date.now();
    const listed = new Map((await p.provider.list(p.name)).map((i) => [i.id, i]));
    const kept: TrackedInstance[] = [];
    for (const t of p.state.instances) {
      const l = listed.get(t.id);
      if (!l) {
        // A provider's list can lag behind a launch (EC2 is eventually consistent): keep new instances a while.
        if (!t.listed && now - t.launchedAtMs < LIST_LAG_GRACE_MS) {
          kept.push(t);
          continue;
        }
        this.account(p, t, now);
        this.log.info('instance gone', { pool: p.name, instance: t.id });
        continue;
      }
      kept.push({ ...t, state: l.state, listed: true });
      listed.delete(t.id);
    }
    // Instances of ours the state does not know (e.g. launched just before a crash): track them,
    // unless they are already on their way out (e.g. terminated by this service a moment ago).
    for (const l of listed.values()) {
      if (l.state === 'shutting-down' || l.state === 'terminated' || p.terminating.has(l.id)) continue;
      this.log.warn('tracking an instance of this pool found at the provider', { pool: p.name, instance: l.id });
      kept.push({ ...l, accountedUntilMs: now, listed: true });
    }
    p.state.instances = kept;
    p.listedAtMs = now;
  }

  private account(p: PoolRuntime, t: TrackedInstance, untilMs: number): void {
    if (untilMs > t.accountedUntilMs) p.state.instanceHours += (untilMs - t.accountedUntilMs) / 3_600_000;
    t.accountedUntilMs = Math.max(t.accountedUntilMs, untilMs);
  }

  private view(p: PoolRuntime, t: TrackedInstance): InstanceView {
    const agent = this.cluster.agents.get(t.id);
    const offering = p.scaling.instanceTypes.find((o) => o.instanceType === t.instanceType);
    const slots = agent ? agent.devices.length : offering?.slots ?? 0;
    const free = agent ? agent.devices.filter((d) => !agent.usedSlots.has(d.id) && !agent.disabledSlots.has(d.id)).length : slots;
    // A cordon lifted by someone else (det agent enable) is no cordon any more.
    const cordoned = agent !== undefined && !agent.enabled && p.state.cordoned.includes(t.id);
    const tasks = this.cluster.tasksOn(t.id);
    return {
      id: t.id,
      instanceType: t.instanceType,
      subnetId: t.subnetId,
      state: t.state,
      launchedAtMs: t.launchedAtMs,
      agentEverConnected: agent !== undefined,
      agentConnected: agent?.channel !== undefined,
      disconnectedSinceMs: agent && !agent.channel ? agent.disconnectedSinceMs : null,
      agentDisabled: agent ? !agent.enabled : false,
      runningTasks: tasks.length,
      idleSinceMs: agent?.channel ? agent.idleSinceMs : null,
      slots,
      freeSlots: agent && !agent.enabled && !cordoned ? 0 : free,
      tasks,
      cordoned,
      underusedSinceMs: p.state.underusedSince[t.id] ?? null,
    };
  }

  private async pass(p: PoolRuntime): Promise<void> {
    if (Date.now() - p.listedAtMs >= this.tickMs) await this.refresh(p);
    const now = Date.now();
    for (const t of p.state.instances) this.account(p, t, now);
    const views = p.state.instances.map((t) => this.view(p, t));
    p.state.cordoned = views.filter((v) => v.cordoned).map((v) => v.id);
    const plan = decide({ nowMs: now, pool: p.scaling, instances: views, pending: this.cluster.pendingTasks(p.name), memory: p.state.memory });

    for (const u of plan.unschedulable) await this.cluster.setUnschedulable(Number(u.taskId), u.reason);
    for (const d of plan.disable) {
      if (this.cluster.agents.get(d.id)) await this.cluster.admin.setAgentEnabled(d.id, false, d.reason);
    }
    await this.applyConsolidation(p, plan, now);
    for (const t of plan.terminate) {
      // Disable and re-check in one step on the cluster's queue: a node running a task is never terminated.
      if (!(await this.cluster.admin.retireIfIdle(t.id, `instance terminated: ${t.reason}`))) {
        this.log.warn('not terminating a busy instance', { pool: p.name, instance: t.id, reason: t.reason });
        continue;
      }
      this.log.info('terminating instance', { pool: p.name, instance: t.id, reason: t.reason });
      p.terminating.add(t.id);
      try {
        await p.provider.terminate([t.id]);
      } catch (err) {
        // Keep going: one instance that cannot be terminated must not stop launches for queued work.
        p.terminating.delete(t.id);
        this.log.error('terminate failed; retrying on the next pass', { pool: p.name, instance: t.id, err: errorMessage(err) });
        continue;
      }
      const tracked = p.state.instances.find((i) => i.id === t.id);
      if (tracked) {
        this.account(p, tracked, Date.now());
        p.state.instances = p.state.instances.filter((i) => i.id !== t.id);
      }
    }
    let retry = false;
    for (const l of plan.launch) {
      const offering = { instanceType: l.instanceType, subnetId: l.subnetId, spot: l.spot };
      const clientToken = `${p.state.tokenPrefix}-${p.state.launches++}`;
      // The counter is stored before the call, so a crash never makes the next launch reuse this token.
      await this.store.putProvisionerState(p.name, JSON.stringify(p.state));
      try {
        this.log.info('launching instances', { pool: p.name, count: l.count, type: l.instanceType, subnet: l.subnetId || undefined, spot: l.spot });
        const launched = await p.provider.launch({ pool: p.name, ...offering, count: l.count, clientToken });
        const at = Date.now();
        // A client token reused after a crash returns instances already adopted from the provider's list.
        const known = new Set(p.state.instances.map((i) => i.id));
        p.state.instances.push(...launched.filter((i) => !known.has(i.id)).map((i) => ({ ...i, accountedUntilMs: at })));
        p.state.memory = onLaunchSuccess(p.state.memory, offering, at);
      } catch (err) {
        const e = err instanceof LaunchError ? err : new LaunchError('other', 'Error', errorMessage(err));
        p.state.memory = onLaunchFailure(p.state.memory, { kind: e.kind, code: e.code, message: e.message }, offering, Date.now());
        this.log.warn('launch failed', { pool: p.name, type: l.instanceType, subnet: l.subnetId || undefined, spot: l.spot, kind: e.kind, code: e.code, error: e.message });
        // Capacity errors fall back to the next offering at once; the memory prevents storms.
        if (e.kind === 'capacity') retry = true;
        break;
      }
    }
    await this.store.putProvisionerState(p.name, JSON.stringify(p.state));
    if (retry) p.again = true;
    this.log.debug('provisioner pass', { pool: p.name, pending: this.cluster.pendingTasks(p.name).length, instances: p.state.instances.length, launches: plan.launch.length, terminations: plan.terminate.length });
  }

  /** Cordons, lifted cordons, moves, and the underused timers (see consolidation.ts). */
  private async applyConsolidation(p: PoolRuntime, plan: ScalePlan, now: number): Promise<void> {
    for (const c of plan.cordon) {
      if (!this.cluster.agents.get(c.id)) continue;
      this.log.info('cordoning an instance for consolidation', { pool: p.name, instance: c.id, reason: c.reason });
      await this.cluster.admin.setAgentEnabled(c.id, false, c.reason);
      p.state.cordoned.push(c.id);
    }
    for (const u of plan.uncordon) {
      p.state.cordoned = p.state.cordoned.filter((id) => id !== u.id);
      if (!this.cluster.agents.get(u.id)) continue;
      this.log.info('lifting a consolidation cordon', { pool: p.name, instance: u.id, reason: u.reason });
      await this.cluster.admin.setAgentEnabled(u.id, true, u.reason);
    }
    for (const m of plan.move) await this.cluster.moveAllocation(m.taskId, m.reason);
    const underused: Record<string, number> = {};
    for (const id of plan.underused) underused[id] = p.state.underusedSince[id] ?? now;
    p.state.underusedSince = underused;
  }

  /** Status for `det provisioner status`. */
  async status(pool: string | undefined): Promise<ProvisionerPool[]> {
    const now = Date.now();
    return [...this.pools.values()]
      .filter((p) => !pool || p.name === pool)
      .map((p) => {
        const demand = this.cluster.pendingTasks(p.name).reduce((n, t) => n + t.slots, 0);
        const err = p.state.memory.lastError;
        const hours = p.state.instanceHours + p.state.instances.reduce((h, t) => h + Math.max(0, now - t.accountedUntilMs) / 3_600_000, 0);
        return {
          resourcePool: p.name,
          provider: p.provider.type,
          minInstances: p.scaling.minInstances,
          maxInstances: p.scaling.maxInstances,
          instances: p.state.instances.map((t) => {
            const v = this.view(p, t);
            return {
              id: t.id, instanceType: t.instanceType, subnetId: t.subnetId, state: t.state, launchedAtMs: t.launchedAtMs, agentConnected: v.agentConnected,
              runningTasks: v.runningTasks, idleSinceMs: v.idleSinceMs ?? 0, spot: t.spot, disabled: v.agentDisabled, cordoned: v.cordoned === true,
            };
          }),
          lastError: err ? { atMs: err.atMs, kind: err.kind, code: err.code, message: err.message, instanceType: err.instanceType, subnetId: err.subnetId } : null,
          nextLaunchAllowedAtMs: nextLaunchAllowedAt(p.scaling, p.state.memory, now),
          pendingSlots: demand,
          instanceHours: hours,
        };
      });
  }
}

/** When a launch may happen next: after the backoff, and — if every offering is out of capacity — when the first is retried. 0 = now. */
export function nextLaunchAllowedAt(scaling: PoolScaling, memory: LaunchMemory, now: number): number {
  const markets = scaling.spot ? (scaling.spotOnly ? [true] : [true, false]) : [false];
  let earliestRetry = Infinity;
  for (const o of scaling.instanceTypes) {
    for (const subnetId of scaling.subnetIds) {
      for (const spot of markets) {
        const failed = memory.failedOfferings.find((f) => f.instanceType === o.instanceType && f.subnetId === subnetId && f.spot === spot && f.untilMs > now);
        if (!failed) return memory.nextLaunchAtMs > now ? memory.nextLaunchAtMs : 0;
        earliestRetry = Math.min(earliestRetry, failed.untilMs);
      }
    }
  }
  return Math.max(memory.nextLaunchAtMs, earliestRetry);
}

function freshState(): PoolState {
  return { instances: [], memory: emptyLaunchMemory(), instanceHours: 0, launches: 0, tokenPrefix: randomUUID().slice(0, 18), cordoned: [], underusedSince: {} };
}
