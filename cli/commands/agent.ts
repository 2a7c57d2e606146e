// det agent list | describe.
import type { Command } from 'commander';
import type { Context } from '../context';
import { formatAgo, formatMemory, formatTime, keyValues, slotSummary, table } from '../format';
import { agentView, type AgentView, type SlotView } from '../views';

/** Slots in use by an allocation. */
export function usedSlots(slots: SlotView[]): number {
  return slots.filter((s) => s.allocationId !== '' || s.trialId !== 0).length;
}

/** The agent table of `det agent list`. */
export function agentTable(agents: AgentView[], now: number): string {
  return table(
    ['Agent ID', 'Instance', 'Hostname', 'Resource Pool', 'State', 'Enabled', 'Slots', 'Used Slots', 'Version', 'Last Seen'],
    agents.map((a) => [
      a.id, a.instanceId ? `${a.instanceId} (${a.instanceType})` : '-', a.hostname, a.resourcePool, a.state, a.enabled,
      slotSummary(a.slots.map((s) => s.type)), usedSlots(a.slots), a.version, formatAgo(a.lastSeenMs, now),
    ]),
  );
}

/** The slot table of one or more agents. */
export function slotTable(slots: SlotView[]): string {
  return table(
    ['Agent ID', 'Slot ID', 'Type', 'Brand', 'UUID', 'Memory', 'Enabled', 'Allocation ID', 'Trial ID'],
    slots.map((s) => [s.agentId ?? '', s.id, s.type.toLowerCase(), s.brand, s.uuid, formatMemory(s.memoryMib), s.enabled, s.allocationId, s.trialId || '']),
  );
}

/** Registers `det agent` (alias `a`). */
export function registerAgent(program: Command, ctx: Context): void {
  const agent = program.command('agent').alias('a').description('manage agents');
  agent
    .command('list')
    .alias('ls')
    .description('list agents')
    .option('--resource-pool <name>', 'only agents of this pool')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean; resourcePool?: string }) => {
      const agents = (await ctx.client().listAgents(opts.resourcePool ?? '')).agents.map(agentView);
      if (opts.json) return ctx.json(agents);
      ctx.out(agentTable(agents, ctx.now()));
    });
  agent
    .command('describe')
    .description('describe one agent and its slots')
    .argument('<agent-id>', 'agent id')
    .option('--json', 'print JSON')
    .action(async (id: string, opts: { json?: boolean }) => {
      const res = await ctx.client().getAgent(id);
      if (!res.agent) throw new Error(`the master returned no agent for ${id}`);
      const a = agentView(res.agent);
      if (opts.json) return ctx.json(a);
      const labels = Object.entries(a.labels)
        .sort(([x], [y]) => x.localeCompare(y))
        .map(([k, v]) => `${k}=${v}`)
        .join(', ');
      ctx.out(
        keyValues([
          ['Agent ID', a.id],
          ['Hostname', a.hostname],
          ['Instance', a.instanceId ? `${a.instanceId} (${a.instanceType})` : '-'],
          ['Address', a.address],
          ['Resource Pool', a.resourcePool],
          ['State', a.state],
          ['Enabled', a.enabled ? 'true' : `false (${a.disabledReason || 'disabled'})`],
          ...(a.fencedAllocationIds.length ? [['Fenced', `${a.fencedAllocationIds.join(', ')} (stale containers being killed; no new work until they are gone)`] as [string, string]] : []),
          ['Version', a.version],
          ['Slots', slotSummary(a.slots.map((s) => s.type))],
          ['Used Slots', usedSlots(a.slots)],
          ['Labels', labels],
          ['Registered', formatTime(a.registeredAtMs)],
          ['Last Seen', formatAgo(a.lastSeenMs, ctx.now())],
        ]),
      );
      ctx.out();
      ctx.out(slotTable(a.slots.map((s) => ({ ...s, agentId: a.id }))));
    });
  agent
    .command('disable')
    .description('schedule nothing more on an agent; its running trials are stopped and requeued elsewhere unless --drain')
    .argument('<agent-id>', 'agent id')
    .option('--drain', 'let running trials finish instead of requeueing them')
    .action(async (id: string, opts: { drain?: boolean }) => {
      const res = await ctx.client().disableAgent(id, opts.drain === true);
      const busy = usedSlots(res.agent ? agentView(res.agent).slots : []);
      ctx.out(
        opts.drain
          ? `Disabled agent ${id} (draining: ${busy} slot${busy === 1 ? '' : 's'} in use will finish; nothing new is scheduled there)`
          : `Disabled agent ${id}${busy ? `: its ${busy} running slot${busy === 1 ? '' : 's'} get SIGTERM and are requeued elsewhere` : ''}`,
      );
    });
  agent
    .command('enable')
    .description('let the scheduler use a disabled agent again')
    .argument('<agent-id>', 'agent id')
    .action(async (id: string) => {
      await ctx.client().enableAgent(id);
      ctx.out(`Enabled agent ${id}`);
    });
}
