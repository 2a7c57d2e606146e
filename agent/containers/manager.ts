// All task containers of this agent: starts them on the master's request,
// numbers their log lines, remembers outcomes until the master has heard
// them, kills what the master no longer expects, and adopts the containers an
// earlier run of the agent left running.
//
// Agent restart (the process was SIGKILLed while its containers ran):
//  - When an allocation starts, once its files are prepared, <work_dir>/allocations/<id>/spec.json
//    records what a restarted agent needs (the prepared RunSpec, mounts and env included, and the
//    restored checkpoint's manifest; task-files.ts). It goes with the allocation's directory.
//  - adopt(), before the first Register: every container listManaged() finds whose allocation has
//    a spec.json is tracked as RUNNING (the last state the earlier run can have sent; an exit
//    while the agent was down is reported after the container's remaining lines, not in Register,
//    so the master never ends a trial before its log is complete). The others are removed.
//  - reconcile(), on Registered: adopted allocations the master expects are resumed without being
//    prepared again: the runtime adopts the container (never pulls or creates it), hands over its
//    output, waits for it and reports its real exit; a new CheckpointSync stores checkpoints
//    written meanwhile (those stored before are reported again, not stored twice) before
//    TERMINATED. Adopted allocations the master does not expect are removed and reported
//    TERMINATED (KILLED), which lifts the master's fence on the agent.
//
// Log sequence numbers survive the restart (log-sequence.ts):
//  - The runtime hands over a container's stdout/stderr from its first line on every run, an
//    adopted container's included, in the order of Docker's log and split the same way each time.
//  - A container line's sequence is its position k in that output plus the number of agent lines
//    (stream 'agent': pulls, data sync, checkpoints) emitted before it; an agent line's sequence is
//    its position p (container lines before it) plus the number of agent lines up to it. Lines
//    are numbered 1, 2, 3... in the order they are sent.
//  - Agent lines' positions are appended to log-agent-lines, and the number of container lines
//    numbered is written to log-counters, synchronously, before the lines are handed to the outbox.
//  - A restarted agent reads both, so every replayed container line gets its old sequence and the
//    master (which keeps the highest sequence it stored per allocation) drops the ones it has.
//    Nothing is skipped on the agent's side: a line handed to a stream before the SIGKILL may not
//    have reached the master, and resending is harmless. New agent lines (e.g. checkpoint uploads)
//    are held back until the replay has passed every container line the earlier run numbered, so
//    they never shift a sequence the master has seen.
//  - Register reports the highest sequence known to have been handed to a stream (also in
//    log-counters, updated with each batch): a master that restarted too counts those as stored.
//  - Limit: positions are counted in Docker's log of the container. A log that lost lines (the
//    daemon's log rotation, max-size/max-file) shifts them, and lines after the loss may be
//    dropped as already seen after an agent restart.
import { errorMessage } from '../../common/errors';
import type { Logger } from '../../common/log';
import type { CheckpointReport, ContainerReport, ContainerState, ExitInfo, LogLine, TaskSpec } from '../../common/types';
import type { CheckpointSync } from '../checkpoints/sync';
import type { Outbox } from '../session/outbox';
import { FileLogSequenceStore, LogSequencer } from './log-sequence';
import type { ContainerRuntime, RunContext, RuntimeLogLine } from './runtime';
import { allocationDir, loadSavedTask, prepareTask, releaseTaskFiles, resumeTask, type PreparedTask, type SavedTask, type TaskFilesDeps } from './task-files';

/** One allocation this agent runs or ran. */
interface Tracked {
  spec: TaskSpec;
  state: ContainerState;
  containerId: string;
  exit: ExitInfo | undefined;
  /** Numbers the allocation's log lines. */
  seqs: LogSequencer;
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
  /** Found after an agent restart and not resumed yet: what spec.json held. */
  adopted: SavedTask | undefined;
  /** The master's kill, if one came (repeated once an adopted container's run has begun). */
  killRequest: { signal: string; gracePeriodMs: number } | undefined;
  /** Checkpoints reported for the allocation: sent again after a re-registration (a broken stream may have lost them). */
  reported: CheckpointReport[];
}

/** Minimum gap between forwarded pull-progress messages of one allocation. */
const PULL_PROGRESS_INTERVAL_MS = 500;

// States before TERMINATED, in the only order they may be reported.
const STATE_ORDER: Record<Exclude<ContainerState, 'TERMINATED'>, number> = { PULLING: 0, STARTING: 1, RUNNING: 2 };

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
    const t = this.track(spec, 'PULLING', '', new LogSequencer(), undefined);
    this.log.info('starting task container', { allocation: spec.allocationId, image: spec.image, devices: spec.deviceIds });
    t.done = this.execute(spec.allocationId, t);
  }

  /**
   * Before the first Register: takes over the task containers an earlier run of this agent left
   * (found by labels). Those with saved allocation files are reported in Register and resumed if
   * the master expects them (reconcile); the others are removed.
   */
  async adopt(agentId: string): Promise<void> {
    for (const c of await this.runtime.listManaged(agentId)) {
      if (this.tracked.has(c.allocationId)) continue;
      const fields = { allocation: c.allocationId, container: c.containerId.slice(0, 12), running: c.running, exit_code: c.exitCode };
      let saved: SavedTask | undefined;
      let seqs: LogSequencer | undefined;
      try {
        saved = c.allocationId ? await loadSavedTask(this.files.workDir, c.allocationId) : undefined;
        const state = saved ? FileLogSequenceStore.read(allocationDir(this.files.workDir, c.allocationId)) : undefined;
        seqs = new LogSequencer(state ?? { agentPositions: [], numbered: undefined, sent: 0 });
      } catch (err) {
        this.log.warn('cannot read the files of a task container left by an earlier agent run', { ...fields, err: errorMessage(err) });
        saved = undefined;
      }
      if (!saved || !seqs) {
        this.log.warn('removing task container left over from an earlier agent run (no saved allocation files)', fields);
        await this.runtime.discard(c.allocationId).catch((err) => this.log.warn('could not remove leftover container', { allocation: c.allocationId, err: errorMessage(err) }));
        continue;
      }
      const t = this.track(saved.spec, 'RUNNING', c.containerId, seqs, saved);
      t.sentSeq = seqs.sent;
      this.log.info('found a task container of an earlier agent run; reporting it to the master', { ...fields, last_log_sequence: t.sentSeq });
    }
  }

  private track(spec: TaskSpec, state: ContainerState, containerId: string, seqs: LogSequencer, adopted: SavedTask | undefined): Tracked {
    const t: Tracked = {
      spec, state, containerId, exit: undefined, seqs, sentSeq: 0, reportedAtMs: 0, sentState: state, sentExit: undefined, done: Promise.resolve(),
      prep: new AbortController(), checkpoints: undefined, adopted, killRequest: undefined, reported: [],
    };
    this.tracked.set(spec.allocationId, t);
    return t;
  }

  /** How a run of one allocation talks to the master. */
  private channel(allocationId: string, t: Tracked) {
    const send = (state: ContainerState, exit?: ExitInfo) => {
      const delivered = this.outbox.send({ kind: 'containerState', allocationId, containerId: t.containerId, state, exit });
      void delivered.then(() => {
        t.sentState = state;
        if (exit) t.sentExit = exit;
        if (state === 'TERMINATED') t.reportedAtMs = Date.now();
      });
    };
    const sendLines = (numbered: LogLine[]): Promise<void> => {
      if (numbered.length === 0) return Promise.resolve();
      const last = numbered[numbered.length - 1].sequence;
      return this.outbox.send({ kind: 'logs', allocationId, lines: numbered }).then(() => {
        t.sentSeq = Math.max(t.sentSeq, last);
        t.seqs.markSent(t.sentSeq);
      });
    };
    const logs = (lines: RuntimeLogLine[]) => sendLines(t.seqs.number(lines));
    const say = (text: string) => void logs([{ stream: 'agent', text, timestampMs: Date.now() }]);
    const terminate = (exit: ExitInfo) => {
      t.state = 'TERMINATED';
      t.exit = exit;
      send('TERMINATED', exit);
    };
    return { send, sendLines, logs, say, terminate };
  }

  private async execute(allocationId: string, t: Tracked): Promise<void> {
    const ch = this.channel(allocationId, t);
    ch.send('PULLING');
    let prepared: PreparedTask | undefined;
    try {
      prepared = await prepareTask(t.spec, this.files, ch.say, (c) => this.reportCheckpoint(t, c), AbortSignal.any([t.prep.signal, this.controller.signal]));
      // From here on a restarted agent can adopt the container: the numbering state first, spec.json last.
      this.persistNumbering(allocationId, t, prepared.dir, false);
      await prepared.save();
    } catch (err) {
      t.seqs.close();
      await prepared?.release(false);
      if (this.controller.signal.aborted) return;
      const killed = t.prep.signal.aborted;
      this.log.warn('task could not be prepared', { allocation: allocationId, err: errorMessage(err), killed });
      if (!killed) ch.say(errorMessage(err));
      return ch.terminate(killed ? { exitCode: -1, failureKind: 'KILLED', message: 'killed before the container started' } : { exitCode: -1, failureKind: 'START_FAILED', message: errorMessage(err) });
    }
    await this.runPrepared(allocationId, t, prepared, false);
  }

  /** Resumes an allocation adopted after an agent restart (the master expects it). */
  private async resume(allocationId: string, t: Tracked, saved: SavedTask): Promise<void> {
    const ch = this.channel(allocationId, t);
    let prepared: PreparedTask;
    try {
      const resumed = await resumeTask(saved, this.files, ch.say, (c) => this.reportCheckpoint(t, c));
      this.persistNumbering(allocationId, t, resumed.dir, true);
      // Reports of checkpoints stored before the restart may have been lost with the old stream.
      for (const c of resumed.storedBefore) void this.reportCheckpoint(t, c);
      prepared = resumed;
    } catch (err) {
      // The container runs, but without its files the agent cannot look after it: stop it.
      this.log.error('cannot resume an adopted allocation; killing its container', { allocation: allocationId, err: errorMessage(err) });
      t.seqs.close();
      await this.runtime.discard(allocationId).catch(() => undefined);
      return ch.terminate({ exitCode: -1, failureKind: 'AGENT_ERROR', message: `the restarted agent cannot resume the container: ${errorMessage(err)}` });
    }
    this.log.info('resuming a task container adopted after an agent restart', { allocation: allocationId, container: t.containerId.slice(0, 12) });
    // Numbered after every line the earlier run numbered (held back until the replay passes them).
    ch.say(`the agent restarted and reattached to container ${t.containerId.slice(0, 12)}; its output continues`);
    await this.runPrepared(allocationId, t, prepared, true);
  }

  private async runPrepared(allocationId: string, t: Tracked, prepared: PreparedTask, adopted: boolean): Promise<void> {
    const ch = this.channel(allocationId, t);
    let lastProgress = 0;
    // TERMINATED is held back until the checkpoints the container wrote are stored and reported.
    let finalExit: ExitInfo | undefined;
    const sink = {
      state: (state: ContainerState, containerId: string, exit?: ExitInfo) => {
        if (containerId) t.containerId = containerId;
        if (state === 'TERMINATED') {
          finalExit = exit;
          return;
        }
        // PULLING was reported before the task's files were prepared; an adopted container is RUNNING already.
        if (t.state === 'TERMINATED' || STATE_ORDER[state] <= STATE_ORDER[t.state]) return;
        t.state = state;
        ch.send(state);
      },
      logs: ch.logs,
      pullProgress: (p: { image: string; status: string; currentBytes: number; totalBytes: number }) => {
        const now = Date.now();
        if (now - lastProgress < PULL_PROGRESS_INTERVAL_MS) return;
        lastProgress = now;
        void this.outbox.send({ kind: 'pullProgress', allocationId, ...p });
      },
    };
    t.checkpoints = prepared.checkpoints;
    prepared.checkpoints.start();
    let exit: ExitInfo;
    try {
      const run = this.runtime.run(prepared.spec, this.ctx, sink, this.controller.signal, { adoptOnly: adopted });
      // A kill that came while the adopted allocation was being resumed reached the container
      // already; repeated now, the runtime reports the exit as KILLED.
      if (adopted && t.killRequest) void this.kill(allocationId, t.killRequest.signal, t.killRequest.gracePeriodMs);
      exit = await run;
      this.log.info('task container finished', { allocation: allocationId, exit_code: exit.exitCode, failure: exit.failureKind });
    } catch (err) {
      if (this.controller.signal.aborted) {
        t.seqs.close();
        return; // agent shutting down: the container is left for a later run
      }
      // The runtime promises not to reject for task failures; if it does, report it rather than hang.
      this.log.error('runtime failed', { allocation: allocationId, err: errorMessage(err) });
      exit = { exitCode: -1, failureKind: 'AGENT_ERROR', message: errorMessage(err) };
    }
    // The output has ended: agent lines held back during a replay go out now.
    void ch.sendLines(t.seqs.endReplay());
    const result = await prepared.checkpoints.finish();
    t.checkpoints = undefined;
    t.seqs.close();
    await prepared.release(result.failed.length > 0);
    ch.terminate(finalExit ?? exit);
  }

  /** Records the numbering state in the allocation's directory; without it the run goes on, less safe across a restart. */
  private persistNumbering(allocationId: string, t: Tracked, dir: string, resume: boolean): void {
    try {
      t.seqs.persistTo(FileLogSequenceStore.open(dir, resume ? [] : t.seqs.agentPositions(), resume, (err) => this.numberingFailed(allocationId, err)));
    } catch (err) {
      this.numberingFailed(allocationId, err);
    }
  }

  private numberingFailed(allocationId: string, err: unknown): void {
    this.log.warn('cannot record the log numbering state: after an agent restart some log lines of this allocation may be lost or repeated', { allocation: allocationId, err: errorMessage(err) });
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
    if (t) t.killRequest ??= { signal, gracePeriodMs };
    t?.prep.abort(new Error(`killed (${signal})`));
    try {
      await this.runtime.kill(allocationId, signal, gracePeriodMs);
    } catch (err) {
      this.log.warn('kill failed', { allocation: allocationId, err: errorMessage(err) });
    }
  }

  /**
   * After registration: resume adopted allocations the master expects; kill what it does not
   * expect (adopted ones are removed); forget outcomes it has heard.
   */
  reconcile(expected: string[]): void {
    const keep = new Set(expected);
    for (const [id, t] of this.tracked) {
      const saved = t.adopted;
      if (keep.has(id)) {
        if (saved) {
          t.adopted = undefined;
          t.done = this.resume(id, t, saved);
        }
        // The old stream may have lost checkpoint reports handed to it: the master ignores repeats.
        for (const c of t.reported) void this.outbox.send({ kind: 'checkpoint', checkpoint: c });
        continue;
      }
      if (saved) {
        this.tracked.delete(id);
        void this.discardAdopted(id, t);
      } else if (t.state === 'TERMINATED') this.tracked.delete(id);
      else void this.kill(id, 'SIGKILL', 0);
    }
  }

  /** Removes an adopted container the master does not expect, and tells the master it is gone. */
  private async discardAdopted(allocationId: string, t: Tracked): Promise<void> {
    this.log.warn('removing a task container of an earlier agent run: the master does not expect it', { allocation: allocationId, container: t.containerId.slice(0, 12) });
    t.seqs.close();
    await this.runtime.discard(allocationId).catch((err) => this.log.warn('could not remove the container', { allocation: allocationId, err: errorMessage(err) }));
    await releaseTaskFiles(this.files.workDir, allocationId, this.files);
    const exit: ExitInfo = { exitCode: -1, failureKind: 'KILLED', message: 'removed by the restarted agent: the master no longer expects this allocation' };
    void this.outbox.send({ kind: 'containerState', allocationId, containerId: t.containerId, state: 'TERMINATED', exit });
  }

  /**
   * Drops terminated allocations whose outcome went out before `beforeMs`. Handing a message
   * to a stream does not prove the master read it, so outcomes are kept (and reported in
   * Register) until the master stops expecting them (reconcile) or for a long while.
   */
  pruneReported(beforeMs: number): void {
    for (const [id, t] of this.tracked) if (t.state === 'TERMINATED' && t.reportedAtMs > 0 && t.reportedAtMs < beforeMs) this.tracked.delete(id);
  }

  /** Reports a stored checkpoint to the master and remembers it for re-registrations. */
  private reportCheckpoint(t: Tracked, c: CheckpointReport): Promise<void> {
    t.reported.push(c);
    return this.outbox.send({ kind: 'checkpoint', checkpoint: c });
  }

  /** Kills every running container (grace periods apply) and waits for them; used on shutdown. */
  async stopAll(): Promise<void> {
    const running = [...this.tracked.entries()].filter(([, t]) => t.state !== 'TERMINATED');
    await Promise.all(running.map(([id, t]) => this.kill(id, 'SIGTERM', t.spec.killGracePeriodMs)));
    await Promise.race([Promise.all(running.map(([, t]) => t.done)), new Promise((r) => setTimeout(r, 30_000).unref())]);
    this.controller.abort(new Error('agent shutting down'));
  }
}
