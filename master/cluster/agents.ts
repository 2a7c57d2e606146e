// The master's in-memory view of agents: devices, slot use, connection.
import type { Device, MasterToAgent, Registration } from '../../common/types';
import type { AgentCapacity } from '../scheduler/scheduler';
import type { AgentRecord } from '../store/store';

/** The cluster's handle on an agent's open stream. */
export interface AgentChannel {
  /** Queues a message; false when the stream is gone. */
  send(msg: MasterToAgent): boolean;
  /** Ends the stream (the agent will reconnect). */
  close(reason: string): void;
  /** Remote address, for display. */
  readonly address: string;
}

/** One agent as the master tracks it. */
export interface AgentEntry {
  id: string;
  pool: string;
  version: string;
  hostname: string;
  labels: Record<string, string>;
  devices: Device[];
  enabled: boolean;
  channel: AgentChannel | undefined;
  registeredAtMs: number;
  lastSeenMs: number;
  /** slot id -> allocation id. */
  usedSlots: Map<number, string>;
  /** Fires when a disconnected agent's grace period ends. */
  graceTimer: NodeJS.Timeout | undefined;
  /** Cloud instance of a provisioned agent ('' for static agents). */
  instanceId: string;
  instanceType: string;
  /** Since when it has had no allocation; null while busy or disconnected. */
  idleSinceMs: number | null;
  /** Since when it has been disconnected; null while connected. */
  disconnectedSinceMs: number | null;
  /** Why it was disabled (provisioner, spot notice, user), for display. */
  disabledReason: string;
  /** Slots the scheduler must not use (det slot disable). */
  disabledSlots: Set<number>;
  /**
   * Allocations the agent still runs that the master gave up on (requeued after the reconnect
   * grace period): nothing new is placed on the agent until it reports them terminated.
   */
  fenced: Set<string>;
}

/** Agents by id. */
export class AgentTable {
  private readonly agents = new Map<string, AgentEntry>();

  get(id: string): AgentEntry | undefined {
    return this.agents.get(id);
  }
  all(): AgentEntry[] {
    return [...this.agents.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }
  connectedCount(): number {
    let n = 0;
    for (const a of this.agents.values()) if (a.channel) n++;
    return n;
  }

  /** Records a (re)registration; slot use is kept across reconnects. */
  upsert(reg: Registration, channel: AgentChannel, nowMs: number): AgentEntry {
    const prev = this.agents.get(reg.agentId);
    if (prev?.graceTimer) clearTimeout(prev.graceTimer);
    const entry: AgentEntry = {
      id: reg.agentId,
      pool: reg.resourcePool,
      version: reg.version,
      hostname: reg.hostname,
      labels: reg.labels,
      devices: reg.devices,
      enabled: prev?.enabled ?? true,
      channel,
      registeredAtMs: nowMs,
      lastSeenMs: nowMs,
      usedSlots: prev?.usedSlots ?? new Map(),
      graceTimer: undefined,
      instanceId: reg.instanceId,
      instanceType: reg.instanceType,
      idleSinceMs: prev?.idleSinceMs ?? nowMs,
      disconnectedSinceMs: null,
      disabledReason: prev?.disabledReason ?? '',
      disabledSlots: prev?.disabledSlots ?? new Set(),
      fenced: new Set(),
    };
    this.agents.set(entry.id, entry);
    return entry;
  }

  /** Restores an agent known from the store (not connected). */
  restore(rec: AgentRecord, nowMs: number): AgentEntry {
    const entry: AgentEntry = {
      ...rec, pool: rec.resourcePool, channel: undefined, usedSlots: new Map(), graceTimer: undefined,
      instanceId: rec.labels['det:instance-id'] ?? '', instanceType: rec.labels['det:instance-type'] ?? '', idleSinceMs: null,
      // The stored last-seen time is stale after a crash: the disconnected clock starts now, when the master does.
      disconnectedSinceMs: nowMs, disabledSlots: new Set(rec.disabledSlots), fenced: new Set(),
    };
    this.agents.set(entry.id, entry);
    return entry;
  }

  /** Capacity snapshot for the scheduler; `zeroSlotTasks` counts running zero-slot tasks per agent. */
  capacity(zeroSlotTasks: ReadonlyMap<string, number> = new Map()): AgentCapacity[] {
    return this.all().map((a) => {
      const slotIds = a.devices.map((d) => d.id).filter((s) => !a.disabledSlots.has(s));
      return {
        id: a.id, pool: a.pool, schedulable: a.channel !== undefined && a.enabled && a.fenced.size === 0, slotIds, freeSlotIds: slotIds.filter((s) => !a.usedSlots.has(s)),
        zeroSlotTasks: zeroSlotTasks.get(a.id) ?? 0,
      };
    });
  }
}

/** The store record of an agent entry. */
export function agentRecord(a: AgentEntry): AgentRecord {
  // The instance id and type travel in labels so a restarted master can match agents to instances.
  const labels = a.instanceId ? { ...a.labels, 'det:instance-id': a.instanceId, 'det:instance-type': a.instanceType } : a.labels;
  return {
    id: a.id, resourcePool: a.pool, version: a.version, hostname: a.hostname, devices: a.devices, labels, enabled: a.enabled, disabledReason: a.disabledReason,
    disabledSlots: [...a.disabledSlots].sort((x, y) => x - y), registeredAtMs: a.registeredAtMs, lastSeenMs: a.lastSeenMs,
  };
}
