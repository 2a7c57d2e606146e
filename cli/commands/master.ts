// det master info.
import type { Command } from 'commander';
import type { Context } from '../context';
import { formatDuration, formatTime, keyValues } from '../format';
import { masterView } from '../views';

/** Registers `det master`. */
export function registerMaster(program: Command, ctx: Context): void {
  const master = program.command('master').description('describe the master');
  master
    .command('info')
    .description('show the master version, ids, database, TLS, agents and uptime')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const view = masterView(await ctx.client().getMaster(), ctx.now());
      if (opts.json) return ctx.json(view);
      ctx.out(
        keyValues([
          ['Version', view.version],
          ['Master ID', view.masterId],
          ['Cluster ID', view.clusterId],
          ['Cluster Name', view.clusterName],
          ['Database', view.database],
          ['TLS', view.tls],
          ['Connected Agents', view.connectedAgents],
          ['Started', formatTime(view.startedAtMs)],
          ['Uptime', view.startedAtMs ? formatDuration(view.uptimeMs) : ''],
        ]),
      );
    });
}
