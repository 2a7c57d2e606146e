// All task containers of this agent: starts them on the master's request,
// numbers their log lines, remembers outcomes until the master has heard
// them, and kills what the master no longer expects.
import { errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { ContainerReport, ContainerState, ExitInfo, LogLine, TaskSpec } from '../../common/types';
import type { Outbox } from '../session/outbox';
import type { ContainerRuntime, RunContext, RuntimeLogLine } from './runtime';

/** One allocation this agent runs or ran. */
interface Tracked {
  spec: TaskSpec;
  state: ContainerState;
  containerId: string;
  exit: ExitInfo | undefined;
  /** Last log sequence handed out. */
  seq: number;
  /** Last log sequence handed to a stream (what Register reports). */
  sentSeq: number;
  /** When TERMINATED was handed to a stream. */
  reportedAtMs: number;
  /** The last state (and exit) handed to a stream: what Register reports, so a reconnecting
   * master hears the outcome only after the log lines queued before it. */
  sentState: ContainerState;
  sentExit: ExitInfo | undefined;
  done: Promise<void>;
}

/** Minimum gap between forwarded pull-progress messages of one allocation. */
const PULL_PROGRESS_INTERVAL_MS = 500;

/** Runs and tracks task containers. */
export class ContainerManager {
  private readonly tracked = new Map<string, Tracked>();
  private ctx: RunContext;
  private readonly controller = new AbortController();

  constructor(
    private readonly runtime: ContainerRuntime,
    ctx: RunContext,
    private readonly outbox: Outbox,
    private readonly log: Logger,
  ) {
    this.ctx = ctx;
  }

  /** Sets the cluster id learned at registration (used in container labels). */
  setClusterId(clusterId: string): void {
    this.ctx = { ...this.ctx, clusterId };
  }

  /** Number of allocations not yet terminated. */
  get running(): number {
    let n = 0;
    for (const t of this.tracked.values()) if (t.state !== 'TERMINATED') n++;
    return n;
  }

  /** What to report in Register. */
  reports(): ContainerReport[] {
    return [...this.tracked.entries()].map(([allocationId, t]) => ({ allocationId, containerId: t.containerId, state: t.sentState, lastLogSequence: t.sentSeq, exit: t.sentExit }));
  }

  /** Starts an allocation; a repeated start of a known allocation is ignored. */
  start(spec: TaskSpec): void {
    if (this.tracked.has(spec.allocationId)) {
      this.log.warn('start for an allocation already known; ignored', { allocation: spec.allocationId });
      return;
    }
    const t: Tracked = { spec, state: 'PULLING', containerId: '', exit: undefined, seq: 0, sentSeq: 0, reportedAtMs: 0, sentState: 'PULLING', sentExit: undefined, done: Promise.resolve() };
    this.tracked.set(spec.allocationId, t);
    this.log.info('starting task container', { allocation: spec.allocationId, image: spec.image, devices: spec.deviceIds });
    t.done = this.execute(spec.allocationId, t);
  }

  private async execute(allocationId: string, t: Tracked): Promise<void> {
    let lastProgress = 0;
    const sink = {
      state: (state: ContainerState, containerId: string, exit?: ExitInfo) => {
        t.state = state;
        if (containerId) t.containerId = containerId;
        if (exit) t.exit = exit;
        const delivered = this.outbox.send({ kind: 'containerState', allocationId, containerId: t.containerId, state, exit });
        void delivered.then(() => {
          t.sentState = state;
          if (exit) t.sentExit = exit;
          if (state === 'TERMINATED') t.reportedAtMs = Date.now();
        });
      },
      logs: (lines: RuntimeLogLine[]) => {
        const numbered: LogLine[] = lines.map((l) => ({ ...l, sequence: ++t.seq }));
        const last = t.seq;
        return this.outbox.send({ kind: 'logs', allocationId, lines: numbered }).then(() => {
          t.sentSeq = Math.max(t.sentSeq, last);
        });
      },
      pullProgress: (p: { image: string; status: string; currentBytes: number; totalBytes: number }) => {
        const now = Date.now();
        if (now - lastProgress < PULL_PROGRESS_INTERVAL_MS) return;
        lastProgress = now;
        void this.outbox.send({ kind: 'pullProgress', allocationId, ...p });
      },
    };
    try {
      const exit = await this.runtime.run(t.spec, this.ctx, sink, this.controller.signal);
      this.log.info('task container finished', { allocation: allocationId, exit_code: exit.exitCode, failure: exit.failureKind });
    } catch (err) {
      if (this.controller.signal.aborted) return;
      // The runtime promises not to reject for task failures; if it does, report it rather than hang.
      this.log.error('runtime failed', { allocation: allocationId, err: errorMessage(err) });
      sink.state('TERMINATED', t.containerId, { exitCode: -1, failureKind: 'AGENT_ERROR', message: errorMessage(err) });
    }
  }

  /** Stops an allocation's container (SIGTERM, then SIGKILL after the grace period). */
  async kill(allocationId: string, signal: string, gracePeriodMs: number): Promise<void> {
    const t = this.tracked.get(allocationId);
    this.log.info('killing task container', { allocation: allocationId, signal, grace_ms: gracePeriodMs, known: !!t });
    try {
      await this.runtime.kill(allocationId, signal, gracePeriodMs);
    } catch (err) {
      this.log.warn('kill failed', { allocation: allocationId, err: errorMessage(err) });
    }
  }

  /** After registration: kill what the master does not expect; forget outcomes it has heard. */
  reconcile(expected: string[]): void {
    const keep = new Set(expected);
    for (const [id, t] of this.tracked) {
      if (keep.has(id)) continue;
      if (t.state === 'TERMINATED') this.tracked.delete(id);
      else void this.kill(id, 'SIGKILL', 0);
    }
  }

  /**
   * Drops terminated allocations whose outcome went out before `beforeMs`. Handing a message
   * to a stream does not prove the master read it, so outcomes are kept (and reported in
   * Register) until the master stops expecting them (reconcile) or for a long while.
   */
  pruneReported(beforeMs: number): void {
    for (const [id, t] of this.tracked) if (t.state === 'TERMINATED' && t.reportedAtMs > 0 && t.reportedAtMs < beforeMs) this.tracked.delete(id);
  }

  /** Removes task containers left over from an earlier run of this agent (found by labels), running or exited. */
  async removeLeftovers(agentId: string): Promise<void> {
    for (const c of await this.runtime.listManaged(agentId)) {
      if (this.tracked.has(c.allocationId)) continue;
      this.log.warn('removing task container left over from an earlier agent run', { allocation: c.allocationId, container: c.containerId.slice(0, 12), running: c.running });
      await this.runtime.discard(c.allocationId).catch((err) => this.log.warn('could not remove leftover container', { allocation: c.allocationId, err: errorMessage(err) }));
    }
  }

  /** Kills every running container (grace periods apply) and waits for them; used on shutdown. */
  async stopAll(): Promise<void> {
    const running = [...this.tracked.entries()].filter(([, t]) => t.state !== 'TERMINATED');
    await Promise.all(running.map(([id, t]) => this.kill(id, 'SIGTERM', t.spec.killGracePeriodMs)));
    await Promise.race([Promise.all(running.map(([, t]) => t.done)), new Promise((r) => setTimeout(r, 30_000).unref())]);
    this.controller.abort(new Error('agent shutting down'));
  }
}
