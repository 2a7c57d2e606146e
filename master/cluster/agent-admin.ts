// Whether work may be placed on an agent or a slot: `det agent|slot disable|enable` and the
// provisioner's cordons and retirements. Each verb changes the agent's entry, persists it, and
// tells the cluster core what follows (its allocations stopped and requeued, a scheduling pass,
// the pool's capacity changed). Every verb runs on the core's serial queue.
import { DetError } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { Store } from '../store/store';
import { agentRecord, type AgentEntry, type AgentTable } from './agents';

/** What the verbs need from the cluster core; `A` is its allocation type. */
export interface AgentAdminCore<A extends { id: string }> {
  readonly agents: AgentTable;
  readonly store: Pick<Store, 'putAgent'>;
  readonly log: Logger;
  /** Runs `fn` after every mutation queued before it. */
  serial<T>(fn: () => Promise<T>): Promise<T>;
  /** The allocations placed on an agent. */
  allocationsOn(agentId: string): A[];
  /** SIGTERM and the grace period, then requeued without counting a restart. */
  stopAllocations(entry: AgentEntry, allocations: A[], reason: string): void;
  requestSchedule(): void;
  /** The pool's demand or capacity may have changed. */
  changed(pool: string): void;
}

/** The agent and slot admin verbs of a cluster. */
export class AgentAdmin<A extends { id: string }> {
  /** Agents whose instance is being terminated: kept disabled even if they register late. */
  private readonly retiring = new Map<string, string>();

  constructor(private readonly core: AgentAdminCore<A>) {}

  /** Why an agent is being retired (it must stay disabled), if it is. */
  retiringReason(agentId: string): string | undefined {
    return this.retiring.get(agentId);
  }

  /** Enables or disables scheduling onto an agent (the provisioner disables before terminating). */
  setAgentEnabled(agentId: string, enabled: boolean, reason: string): Promise<void> {
    return this.core.serial(async () => {
      const a = this.agentOrThrow(agentId);
      if (a.enabled === enabled) return;
      await this.setEnabled(a, enabled, reason);
      if (enabled) this.core.requestSchedule();
      this.core.changed(a.pool);
    });
  }

  /**
   * `det agent disable`: nothing new is placed on the agent. Without `drain` its trials get SIGTERM
   * and their grace period and are requeued elsewhere (restart counts untouched); with `drain` they finish.
   */
  disableAgent(agentId: string, drain: boolean): Promise<AgentEntry> {
    return this.core.serial(async () => {
      const a = this.agentOrThrow(agentId);
      const allocations = this.core.allocationsOn(agentId);
      await this.setEnabled(a, false, `disabled by user${drain ? ' (draining)' : ''}`, { drain, allocations: allocations.length });
      if (!drain) this.core.stopAllocations(a, allocations, `agent ${agentId} was disabled; requeued`);
      this.core.changed(a.pool);
      return a;
    });
  }

  /** `det agent enable`: the scheduler may use the agent again (not one whose instance is being terminated). */
  enableAgent(agentId: string): Promise<AgentEntry> {
    return this.core.serial(async () => {
      const a = this.agentOrThrow(agentId);
      const retiring = this.retiring.get(agentId);
      if (retiring !== undefined) throw new DetError('DET_ERR_INVALID_ARGUMENT', `agent ${agentId} cannot be enabled: ${retiring}`);
      if (!a.enabled) {
        await this.setEnabled(a, true, '');
        this.core.requestSchedule();
        this.core.changed(a.pool);
      }
      return a;
    });
  }

  /** `det slot disable` / `enable`: like the agent verbs, for one slot. */
  setSlotEnabled(agentId: string, slotId: number, enabled: boolean, drain: boolean): Promise<AgentEntry> {
    return this.core.serial(async () => {
      const a = this.agentOrThrow(agentId);
      if (!a.devices.some((d) => d.id === slotId)) {
        throw new DetError('DET_ERR_INVALID_ARGUMENT', `agent ${agentId} has no slot ${slotId} (slots: ${a.devices.map((d) => d.id).join(', ') || 'none'})`);
      }
      if (enabled === !a.disabledSlots.has(slotId)) return a;
      if (enabled) a.disabledSlots.delete(slotId);
      else a.disabledSlots.add(slotId);
      await this.core.store.putAgent(agentRecord(a));
      this.core.log.info(enabled ? 'slot enabled' : 'slot disabled', { agent: agentId, slot: slotId, drain });
      const user = a.usedSlots.get(slotId);
      if (!enabled && !drain && user) {
        this.core.stopAllocations(a, this.core.allocationsOn(agentId).filter((x) => x.id === user), `slot ${slotId} of agent ${agentId} was disabled; requeued`);
      }
      if (enabled) this.core.requestSchedule();
      this.core.changed(a.pool);
      return a;
    });
  }

  /**
   * Atomically (on the serial queue): if the agent runs nothing, disable it for good — also if it
   * registers later — and return true, so its instance can be terminated; false if it is busy.
   */
  retireIfIdle(agentId: string, reason: string): Promise<boolean> {
    return this.core.serial(async () => {
      if (this.core.allocationsOn(agentId).length > 0) return false;
      this.retiring.set(agentId, reason);
      const a = this.core.agents.get(agentId);
      if (a?.enabled) await this.setEnabled(a, false, reason);
      return true;
    });
  }

  private agentOrThrow(agentId: string): AgentEntry {
    const a = this.core.agents.get(agentId);
    if (!a) throw new DetError('DET_ERR_AGENT_NOT_FOUND', `agent ${agentId} not found`);
    return a;
  }

  // Sets, persists and logs whether the agent takes work; the reason is kept while it is disabled.
  private async setEnabled(a: AgentEntry, enabled: boolean, reason: string, details: Record<string, unknown> = {}): Promise<void> {
    a.enabled = enabled;
    a.disabledReason = enabled ? '' : reason;
    await this.core.store.putAgent(agentRecord(a));
    this.core.log.info(enabled ? 'agent enabled' : 'agent disabled', { agent: a.id, ...(reason ? { reason } : {}), ...details });
  }
}
