// det resource-pool list.
import type { Command } from 'commander';
import type { Context } from '../context';
import { table } from '../format';

/** Registers `det resource-pool` (alias `rp`). */
export function registerResourcePool(program: Command, ctx: Context): void {
  const rp = program.command('resource-pool').alias('rp').description('inspect resource pools');
  rp.command('list')
    .alias('ls')
    .description('list resource pools with capacity and queue')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const pools = (await ctx.client().listResourcePools()).resourcePools.map((p) => ({ ...p }));
      if (opts.json) return ctx.json(pools);
      ctx.out(
        table(
          ['Name', 'Description', 'Agents', 'Slots Total', 'Slots Used', 'Queued Trials', 'Default'],
          pools.map((p) => [p.name, p.description, p.numAgents, p.slotsTotal, p.slotsUsed, p.queuedTasks, p.isDefault]),
        ),
      );
    });
}
