// All task containers of this agent: starts them on the master's request,
// numbers their log lines, remembers outcomes until the master has heard
// them, and kills what the master no longer expects.
import { errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { ContainerReport, ContainerState, ExitInfo, LogLine, TaskSpec } from '../../common/types';
import type { CheckpointSync } from '../checkpoints/sync';
import type { Outbox } from '../session/outbox';
import type { ContainerRuntime, RunContext, RuntimeLogLine } from './runtime';
import { prepareTask, type TaskFilesDeps } from './task-files';

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
  /** Aborts the preparation (data sync, checkpoint restore) when the task is killed before its container runs. */
  prep: AbortController;
  /** Set while the container may write checkpoints. */
  checkpoints: CheckpointSync | undefined;
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
    private readonly files: TaskFilesDeps,
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
    const t: Tracked = {
      spec, state: 'PULLING', containerId: '', exit: undefined, seq: 0, sentSeq: 0, reportedAtMs: 0, sentState: 'PULLING', sentExit: undefined, done: Promise.resolve(),
      prep: new AbortController(), checkpoints: undefined,
    };
    this.tracked.set(spec.allocationId, t);
    this.log.info('starting task container', { allocation: spec.allocationId, image: spec.image, devices: spec.deviceIds });
    t.done = this.execute(spec.allocationId, t);
  }

  private async execute(allocationId: string, t: Tracked): Promise<void> {
    let lastProgress = 0;
    const send = (state: ContainerState, exit?: ExitInfo) => {
      const delivered = this.outbox.send({ kind: 'containerState', allocationId, containerId: t.containerId, state, exit });
      void delivered.then(() => {
        t.sentState = state;
        if (exit) t.sentExit = exit;
        if (state === 'TERMINATED') t.reportedAtMs = Date.now();
      });
    };
    const logs = (lines: RuntimeLogLine[]) => {
      const numbered: LogLine[] = lines.map((l) => ({ ...l, sequence: ++t.seq }));
      const last = t.seq;
      return this.outbox.send({ kind: 'logs', allocationId, lines: numbered }).then(() => {
        t.sentSeq = Math.max(t.sentSeq, last);
      });
    };
    const say = (text: string) => void logs([{ stream: 'agent', text, timestampMs: Date.now() }]);
    // TERMINATED is held back until the checkpoints the container wrote are stored and reported.
    let finalExit: ExitInfo | undefined;
    const sink = {
      state: (state: ContainerState, containerId: string, exit?: ExitInfo) => {
        if (containerId) t.containerId = containerId;
        if (state === 'TERMINATED') {
          finalExit = exit;
          return;
        }
        if (state === t.state) return; // PULLING was reported before the task's files were prepared
        t.state = state;
        send(state);
      },
      logs,
      pullProgress: (p: { image: string; status: string; currentBytes: number; totalBytes: number }) => {
        const now = Date.now();
        if (now - lastProgress < PULL_PROGRESS_INTERVAL_MS) return;
        lastProgress = now;
        void this.outbox.send({ kind: 'pullProgress', allocationId, ...p });
      },
    };
    const terminate = (exit: ExitInfo) => {
      t.state = 'TERMINATED';
      t.exit = exit;
      send('TERMINATED', exit);
    };
    send('PULLING');
    let prepared;
    try {
      prepared = await prepareTask(t.spec, this.files, say, (c) => this.outbox.send({ kind: 'checkpoint', checkpoint: c }), AbortSignal.any([t.prep.signal, this.controller.signal]));
    } catch (err) {
      if (this.controller.signal.aborted) return;
      const killed = t.prep.signal.aborted;
      this.log.warn('task could not be prepared', { allocation: allocationId, err: errorMessage(err), killed });
      if (!killed) say(errorMessage(err));
      return terminate(killed ? { exitCode: -1, failureKind: 'KILLED', message: 'killed before the container started' } : { exitCode: -1, failureKind: 'START_FAILED', message: errorMessage(err) });
    }
    t.checkpoints = prepared.checkpoints;
    prepared.checkpoints.start();
    let exit: ExitInfo;
    try {
      exit = await this.runtime.run(prepared.spec, this.ctx, sink, this.controller.signal);
      this.log.info('task container finished', { allocation: allocationId, exit_code: exit.exitCode, failure: exit.failureKind });
    } catch (err) {
      if (this.controller.signal.aborted) return; // agent shutting down: the container is left for a later run
      // The runtime promises not to reject for task failures; if it does, report it rather than hang.
      this.log.error('runtime failed', { allocation: allocationId, err: errorMessage(err) });
      exit = { exitCode: -1, failureKind: 'AGENT_ERROR', message: errorMessage(err) };
    }
    const result = await prepared.checkpoints.finish();
    t.checkpoints = undefined;
    await prepared.release(result.failed.length > 0);
    terminate(finalExit ?? exit);
  }

  /** Stores every completed checkpoint of every running container now (spot interruption notice). */
  async flushCheckpoints(): Promise<void> {
    const syncs = [...this.tracked.values()].map((t) => t.checkpoints).filter((c): c is CheckpointSync => c !== undefined);
    await Promise.all(syncs.map((c) => c.flushNow().catch((err) => this.log.warn('checkpoint flush failed', { err: errorMessage(err) }))));
  }

  /** Stops an allocation's container (SIGTERM, then SIGKILL after the grace period). */
  async kill(allocationId: string, signal: string, gracePeriodMs: number): Promise<void> {
    const t = this.tracked.get(allocationId);
    this.log.info('killing task container', { allocation: allocationId, signal, grace_ms: gracePeriodMs, known: !!t });
    t?.prep.abort(new Error(`killed (${signal})`));
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
