// An in-memory Provider (type 'memory') for tests of the provisioner service: it
// records every list/launch/terminate call, hands out instance ids i-1, i-2, ...,
// fails launches of chosen instance types with a given LaunchError, and lets a
// test change what the "cloud" reports (an instance stopping or vanishing as if
// terminated from outside). Launches are idempotent by client token, as EC2's are.
import { LaunchError, type InstanceInfo, type InstanceState, type LaunchRequest, type Provider } from '../../master/provisioner/types';

/** One recorded launch call and how it ended. */
export interface LaunchCall {
  req: LaunchRequest;
  atMs: number;
  /** Ids returned (empty when the call failed). */
  ids: string[];
  /** The error thrown, when the call failed. */
  error: LaunchError | undefined;
}

/** One recorded terminate call. */
export interface TerminateCall {
  ids: string[];
  atMs: number;
}

/** A provider whose instances live in a Map; shared across service restarts like a real cloud. */
export class MemoryProvider implements Provider {
  readonly type = 'memory';
  /** Every launch call, in order (failed ones included). */
  readonly launches: LaunchCall[] = [];
  /** Every terminate call, in order. */
  readonly terminations: TerminateCall[] = [];
  /** Pools passed to list(), one entry per call. */
  readonly listCalls: string[] = [];
  /** Called at the start of every terminate(), before anything changes (to snapshot the cluster then). */
  beforeTerminate: ((ids: string[]) => void) | undefined;
  private readonly instances = new Map<string, InstanceInfo>();
  private readonly failures = new Map<string, { error: LaunchError; times: number }>();
  private readonly byToken = new Map<string, string[]>();
  private nextId = 1;

  async list(pool: string): Promise<InstanceInfo[]> {
    this.listCalls.push(pool);
    return [...this.instances.values()].filter((i) => i.pool === pool && i.state !== 'terminated').map((i) => ({ ...i }));
  }

  async launch(req: LaunchRequest): Promise<InstanceInfo[]> {
    const call: LaunchCall = { req: { ...req }, atMs: Date.now(), ids: [], error: undefined };
    this.launches.push(call);
    const known = this.byToken.get(req.clientToken);
    if (known) {
      call.ids = [...known];
      return known.map((id) => ({ ...this.instances.get(id)! }));
    }
    const failure = this.failures.get(req.instanceType);
    if (failure && failure.times > 0) {
      failure.times--;
      if (failure.times === 0) this.failures.delete(req.instanceType);
      call.error = failure.error;
      throw failure.error;
    }
    const out: InstanceInfo[] = [];
    for (let n = 0; n < req.count; n++) {
      const info: InstanceInfo = { id: `i-${this.nextId++}`, pool: req.pool, instanceType: req.instanceType, subnetId: req.subnetId, state: 'pending', launchedAtMs: Date.now(), spot: req.spot };
      this.instances.set(info.id, info);
      out.push({ ...info });
    }
    call.ids = out.map((i) => i.id);
    this.byToken.set(req.clientToken, call.ids);
    return out;
  }

  async terminate(ids: string[]): Promise<void> {
    this.beforeTerminate?.([...ids]);
    this.terminations.push({ ids: [...ids], atMs: Date.now() });
    for (const id of ids) {
      const i = this.instances.get(id);
      if (i) i.state = 'terminated';
    }
  }

  /** Makes launches of `instanceType` throw `error`, `times` times (default: until clearFailures). */
  failLaunches(instanceType: string, error: LaunchError, times = Infinity): void {
    this.failures.set(instanceType, { error, times });
  }

  /** Lets launches of `instanceType` (or of every type) succeed again. */
  clearFailures(instanceType?: string): void {
    if (instanceType === undefined) this.failures.clear();
    else this.failures.delete(instanceType);
  }

  /** Sets the state the provider reports for an instance (e.g. 'running', 'stopping'). */
  setState(id: string, state: InstanceState): void {
    const i = this.instances.get(id);
    if (!i) throw new Error(`memory provider: no instance ${id}`);
    i.state = state;
  }

  /** The instance disappears, as if terminated outside the provisioner (console, spot reclaim). */
  vanish(id: string): void {
    if (!this.instances.delete(id)) throw new Error(`memory provider: no instance ${id}`);
  }

  /** A copy of an instance as the provider sees it, or undefined. */
  instance(id: string): InstanceInfo | undefined {
    const i = this.instances.get(id);
    return i && { ...i };
  }

  /** Ids of instances launched successfully, in order. */
  launchedIds(): string[] {
    return this.launches.flatMap((c) => c.ids);
  }

  /** Ids passed to terminate(), in order. */
  terminatedIds(): string[] {
    return this.terminations.flatMap((c) => c.ids);
  }
}
