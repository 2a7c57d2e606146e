// det slot list.
import type { Command } from 'commander';
import { parseCount } from '../args';
import { DetError } from '../../common/errors';
import type { Context } from '../context';
import { slotView, type SlotView } from '../views';
import { slotTable } from './agent';

/** Registers `det slot` (alias `s`). */
export function registerSlot(program: Command, ctx: Context): void {
  const slot = program.command('slot').alias('s').description('inspect, disable and enable slots');
  slot
    .command('list')
    .alias('ls')
    .description('list the slots of every agent, or of one')
    .option('--agent <agent-id>', 'only this agent')
    .option('--json', 'print JSON')
    .action(async (opts: { agent?: string; json?: boolean }) => {
      const client = ctx.client();
      const agentIds = opts.agent !== undefined ? [opts.agent] : (await client.listAgents()).agents.map((a) => a.id);
      const perAgent = await Promise.all(
        agentIds.map(async (agentId) => {
          try {
            return (await client.listSlots(agentId)).slots.map((s) => slotView(s, agentId));
          } catch (err) {
            // An agent that vanished between the two calls has no slots to show.
            if (opts.agent === undefined && err instanceof DetError && err.code === 'DET_ERR_AGENT_NOT_FOUND') return [];
            throw err;
          }
        }),
      );
      const slots: SlotView[] = perAgent.flat();
      if (opts.json) return ctx.json(slots);
      ctx.out(slotTable(slots));
    });
  slot
    .command('disable')
    .description('schedule nothing more on a slot; the trial on it is stopped and requeued unless --drain')
    .argument('<agent-id>', 'agent id')
    .argument('<slot-id>', 'slot id', parseCount)
    .option('--drain', 'let the running trial finish instead of requeueing it')
    .action(async (agentId: string, slotId: number, opts: { drain?: boolean }) => {
      const res = await ctx.client().disableSlot(agentId, slotId, opts.drain === true);
      const busy = res.slot?.allocationId;
      ctx.out(`Disabled slot ${slotId} of agent ${agentId}${busy ? (opts.drain ? ` (draining: ${busy} will finish)` : `: ${busy} gets SIGTERM and is requeued`) : ''}`);
    });
  slot
    .command('enable')
    .description('let the scheduler use a disabled slot again')
    .argument('<agent-id>', 'agent id')
    .argument('<slot-id>', 'slot id', parseCount)
    .action(async (agentId: string, slotId: number) => {
      await ctx.client().enableSlot(agentId, slotId);
      ctx.out(`Enabled slot ${slotId} of agent ${agentId}`);
    });
}
