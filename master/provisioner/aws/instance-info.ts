// EC2's description of an instance, as the provisioner sees it.
import type { Instance } from '@aws-sdk/client-ec2';
import type { InstanceInfo, InstanceState } from '../types';

const STATES: ReadonlySet<string> = new Set<InstanceState>(['pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated']);
// EC2 state codes: the low byte is the state; the high byte is internal.
const BY_CODE: Record<number, InstanceState> = { 0: 'pending', 16: 'running', 32: 'shutting-down', 48: 'terminated', 64: 'stopping', 80: 'stopped' };

/** Instance states the provider lists (everything but terminated). */
export const LIVE_STATES: InstanceState[] = ['pending', 'running', 'stopping', 'stopped', 'shutting-down'];

/** The provisioner's state for an EC2 instance state (by name, else by code; unknown = pending). */
export function toInstanceState(state: Instance['State']): InstanceState {
  const name = state?.Name;
  if (name !== undefined && STATES.has(name)) return name as InstanceState;
  const code = state?.Code;
  return (code !== undefined ? BY_CODE[code & 0xff] : undefined) ?? 'pending';
}

/** InstanceInfo for an EC2 instance of `pool`; `fallback` fills what RunInstances may leave out. */
export function toInstanceInfo(
  inst: Instance,
  pool: string,
  fallback: { instanceType?: string; subnetId?: string; spot?: boolean; nowMs?: number } = {},
): InstanceInfo {
  const launched = inst.LaunchTime instanceof Date ? inst.LaunchTime.getTime() : inst.LaunchTime ? Date.parse(String(inst.LaunchTime)) : NaN;
  return {
    id: inst.InstanceId ?? '',
    pool,
    instanceType: inst.InstanceType ?? fallback.instanceType ?? '',
    subnetId: inst.SubnetId ?? fallback.subnetId ?? '',
    state: toInstanceState(inst.State),
    launchedAtMs: Number.isFinite(launched) ? launched : (fallback.nowMs ?? Date.now()),
    spot: inst.InstanceLifecycle === 'spot' || (inst.InstanceLifecycle === undefined && (fallback.spot ?? false)),
  };
}
