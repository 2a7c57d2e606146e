// A fake ContainerRuntime for tests of the agent's session and container
// manager: every run() is handed to the test as a FakeRun whose states, log
// lines and exit the test drives; kill() and listManaged() are recorded.
import type { ContainerRuntime, ContainerSink, ManagedContainer, PullProgress, RunContext, RunOptions, RunSpec, RuntimeLogLine } from '../../agent/containers/runtime';
import type { ContainerState, ExitInfo, LogStream, TaskSpec } from '../../common/types';

/** One recorded kill() call. */
export interface KillCall {
  allocationId: string;
  signal: string;
  gracePeriodMs: number;
}

/** A run the test controls. */
export class FakeRun {
  /** Container id used for states emitted without one. */
  containerId = '';
  private settled = false;
  private resolveRun!: (exit: ExitInfo) => void;
  private rejectRun!: (err: unknown) => void;
  /** What run() returns to the manager. */
  readonly result: Promise<ExitInfo>;

  constructor(
    readonly spec: RunSpec,
    readonly ctx: RunContext,
    private readonly sink: ContainerSink,
    readonly signal: AbortSignal | undefined,
    /** The run's options (adoptOnly for a container adopted after an agent restart). */
    readonly options: RunOptions = {},
  ) {
    this.result = new Promise<ExitInfo>((resolve, reject) => {
      this.resolveRun = resolve;
      this.rejectRun = reject;
    });
  }

  /** Whether the run has finished (or failed). */
  get finished(): boolean {
    return this.settled;
  }

  /** Reports a state change (the container id sticks for later states). */
  state(state: Exclude<ContainerState, 'TERMINATED'>, containerId = this.containerId): void {
    this.containerId = containerId;
    this.sink.state(state, containerId);
  }

  /** Hands over lines (plain strings are stdout); resolves when the sink lets the runtime continue. */
  logs(...lines: (string | Partial<RuntimeLogLine>)[]): Promise<void> {
    const now = Date.now();
    const batch: RuntimeLogLine[] = lines.map((l) =>
      typeof l === 'string' ? { stream: 'stdout' as LogStream, text: l, timestampMs: now } : { stream: 'stdout', text: '', timestampMs: now, ...l },
    );
    return Promise.resolve(this.sink.logs(batch));
  }

  /** Reports pull progress. */
  pullProgress(p: PullProgress): void {
    this.sink.pullProgress(p);
  }

  /** Reports TERMINATED with `exit` and resolves run() with it, as a real runtime does. */
  finish(exit: ExitInfo, containerId = this.containerId): void {
    if (this.settled) throw new Error(`run of ${this.spec.allocationId} already finished`);
    this.settled = true;
    this.containerId = containerId;
    this.sink.state('TERMINATED', containerId, exit);
    this.resolveRun(exit);
  }

  /** Rejects run() without reporting anything (a runtime bug, or an abort). */
  fail(err: unknown): void {
    if (this.settled) throw new Error(`run of ${this.spec.allocationId} already finished`);
    this.settled = true;
    this.rejectRun(err);
  }
}

/** The fake runtime. */
export class FakeRuntime implements ContainerRuntime {
  /** Every run() call, in order. */
  readonly runs: FakeRun[] = [];
  /** Every kill() call, in order. */
  readonly kills: KillCall[] = [];
  /** What listManaged() returns. */
  managed: ManagedContainer[] = [];
  /** Agent ids listManaged() was called with. */
  readonly listManagedCalls: string[] = [];
  /** Called on kill() after recording it (e.g. to finish the run as KILLED). */
  onKill: ((call: KillCall, run: FakeRun | undefined) => void) | undefined;
  private readonly waiters: { allocationId: string; resolve: (r: FakeRun) => void }[] = [];

  async ping(): Promise<void> {}

  run(spec: RunSpec, ctx: RunContext, sink: ContainerSink, signal?: AbortSignal, opts: RunOptions = {}): Promise<ExitInfo> {
    const r = new FakeRun(structuredClone(spec), { ...ctx }, sink, signal, { ...opts });
    this.runs.push(r);
    for (const w of this.waiters.filter((w) => w.allocationId === spec.allocationId)) {
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.resolve(r);
    }
    return r.result;
  }

  async kill(allocationId: string, signal: string, gracePeriodMs: number): Promise<void> {
    const call = { allocationId, signal, gracePeriodMs };
    this.kills.push(call);
    this.onKill?.(call, this.latest(allocationId));
  }

  /** Allocation ids discard() was called with. */
  readonly discards: string[] = [];

  async discard(allocationId: string): Promise<void> {
    this.discards.push(allocationId);
    this.managed = this.managed.filter((c) => c.allocationId !== allocationId);
  }

  async listManaged(agentId: string): Promise<ManagedContainer[]> {
    this.listManagedCalls.push(agentId);
    return this.managed.map((c) => ({ ...c }));
  }

  /** The latest run of an allocation, if any. */
  latest(allocationId: string): FakeRun | undefined {
    for (let i = this.runs.length - 1; i >= 0; i--) if (this.runs[i].spec.allocationId === allocationId) return this.runs[i];
    return undefined;
  }

  /** Resolves with the allocation's run once run() has been called for it. */
  waitForRun(allocationId: string, timeoutMs = 5_000): Promise<FakeRun> {
    const existing = this.latest(allocationId);
    if (existing) return Promise.resolve(existing);
    return new Promise<FakeRun>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for the runtime to run allocation ${allocationId}`));
      }, timeoutMs);
      const waiter = {
        allocationId,
        resolve: (r: FakeRun) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      this.waiters.push(waiter);
    });
  }
}
