// det provisioner status.
import type { Command } from 'commander';
import type { ProvisionerPool__Output } from '../../common/proto-gen/determined/api/v1/ProvisionerPool';
import type { Context } from '../context';
import { formatAgo, formatDuration, formatTime, keyValues, table } from '../format';

/** The human view of one provisioned pool. */
export function provisionerText(p: ProvisionerPool__Output, now: number): string {
  const err = p.lastError;
  const lines = [
    keyValues([
      ['Resource Pool', p.resourcePool],
      ['Provider', p.provider],
      ['Instances', `${p.instances.length} (min ${p.minInstances}, max ${p.maxInstances})`],
      ['Pending Slots', p.pendingSlots],
      ['Instance Hours', p.instanceHours.toFixed(3)],
      ['Last Launch Error', err ? `${err.code}: ${err.message} (${err.kind}, ${err.instanceType}${err.subnetId ? ` in ${err.subnetId}` : ''}, ${formatAgo(err.atMs, now)})` : '-'],
      ['Next Launch Allowed', p.nextLaunchAllowedAtMs > now ? `${formatTime(p.nextLaunchAllowedAtMs)} (in ${formatDuration(p.nextLaunchAllowedAtMs - now)})` : 'now'],
    ]),
  ];
  if (p.instances.length > 0) {
    lines.push(
      table(
        ['Instance ID', 'Type', 'Subnet', 'State', 'Spot', 'Launched', 'Agent', 'Tasks', 'Idle For'],
        p.instances.map((i) => [
          i.id, i.instanceType, i.subnetId || '-', i.state, i.spot, formatAgo(i.launchedAtMs, now),
          i.agentConnected ? (i.cordoned ? 'connected (cordoned)' : i.disabled ? 'connected (disabled)' : 'connected') : 'not connected', i.runningTasks, i.idleSinceMs ? formatDuration(now - i.idleSinceMs) : '-',
        ]),
      ),
    );
  }
  return lines.join('\n');
}

/** Registers `det provisioner`. */
export function registerProvisioner(program: Command, ctx: Context): void {
  const prov = program.command('provisioner').description('inspect dynamic agents (instances the master launches)');
  prov
    .command('status')
    .description('per pool: instances, their agents, idle time, and the last launch error')
    .option('--resource-pool <name>', 'only this pool')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean; resourcePool?: string }) => {
      const pools = (await ctx.client().getProvisionerStatus(opts.resourcePool)).pools;
      if (opts.json) return ctx.json(pools);
      if (pools.length === 0) return ctx.out('No resource pool has a provider: agents are static (see docs/dynamic-agents.md).');
      ctx.out(pools.map((p) => provisionerText(p, ctx.now())).join('\n\n'));
    });
}
