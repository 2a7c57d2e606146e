// det slot list.
import type { Command } from 'commander';
import { DetError } from '../../common/errors';
import type { Context } from '../context';
import { slotView, type SlotView } from '../views';
import { slotTable } from './agent';

/** Registers `det slot` (alias `s`). */
export function registerSlot(program: Command, ctx: Context): void {
  const slot = program.command('slot').alias('s').description('inspect slots');
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
}
