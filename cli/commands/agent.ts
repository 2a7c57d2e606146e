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
          ['Enabled', a.enabled],
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
}
