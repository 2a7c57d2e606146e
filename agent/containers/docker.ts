// ContainerRuntime on a real Docker Engine (dockerode over the unix socket).
//
// A run is: PULLING (pull if the policy says so or the image is missing) → STARTING (create
// det-<allocationId>, start) → RUNNING (stream output, wait) → TERMINATED (flush output, report,
// remove). The output is read from the container's log (the logs endpoint, following), from its
// first line: a process that exits at once loses nothing, stdout and stderr keep the one order
// Docker logged them in, and a container adopted after an agent restart hands over the same
// lines in the same order again, so a line's position identifies it (manager.ts numbers lines by
// it). Nothing sleeps or polls: each step waits on Docker's own answer.
import Docker from 'dockerode';
import type { Readable } from 'node:stream';
import { DetError, errorMessage } from '../../common/errors';
import { CONTAINER_LABELS, type ExitInfo, type LogStream, type TaskSpec } from '../../common/types';
import type {
  ContainerRuntime,
  ContainerSink,
  ManagedContainer,
  PullProgress,
  RunContext,
  RunOptions,
  RunSpec,
  RuntimeLogLine,
} from './runtime';

/** Options of DockerRuntime. */
export interface DockerRuntimeOptions {
  /** Docker's unix socket, e.g. /var/run/docker.sock. */
  socketPath: string;
  /** A pull with no word from Docker for this long fails (PULL_FAILED). Default 120 000. */
  pullStallTimeoutMs?: number;
  /** ping gives up after this long. Default 5 000. */
  pingTimeoutMs?: number;
  /** Most lines per sink.logs call. Default 256. */
  logBatchLines?: number;
  /** After the container exited, how long its output stream may take to end. Default 10 000. */
  logDrainTimeoutMs?: number;
}

/** Name of an allocation's container; creation is keyed by it, so there is never a second one. */
export function containerName(allocationId: string): string {
  return `det-${allocationId}`;
}

// A line longer than this is handed over in pieces, so one runaway line cannot eat the agent's memory.
const MAX_LINE_BYTES = 64 * 1024;
// The read after the exit starts this many seconds before the last frame already handled.
const CATCH_UP_WINDOW_S = 2;
// Pull progress events of one kind ("Downloading") are forwarded at most this often.
const PULL_PROGRESS_INTERVAL_MS = 100;

interface KillRequest {
  signal: string;
  gracePeriodMs: number;
  escalated: boolean;
}

// A run in progress in this runtime.
interface ActiveRun {
  promise: Promise<ExitInfo>;
  kill?: KillRequest;
  /** Aborted by kill(): stops a pull or a start in progress. */
  killed: AbortController;
}

// Docker API errors as dockerode reports them.
interface DockerodeError extends Error {
  statusCode?: number;
  json?: { message?: string } | null;
  code?: string;
}

/** The error Docker sent, without dockerode's "(HTTP code 404) no such container - " prefix. */
function dockerMessage(err: unknown): string {
  const e = err as DockerodeError;
  const fromJson = e?.json && typeof e.json === 'object' ? e.json.message : undefined;
  const text = fromJson ?? errorMessage(err).replace(/^\(HTTP code \d+\) [^-]*- /, '');
  return text.trim();
}

function statusOf(err: unknown): number | undefined {
  return (err as DockerodeError)?.statusCode;
}

// Errors of the socket itself, as opposed to answers from Docker.
const CONNECTION_ERRORS = new Set(['ENOENT', 'ECONNREFUSED', 'EACCES', 'ECONNRESET', 'EPIPE', 'ENOTSOCK']);
function isConnectionError(err: unknown): boolean {
  const e = err as DockerodeError;
  return e?.statusCode === undefined && typeof e?.code === 'string' && CONNECTION_ERRORS.has(e.code);
}

/** Raised inside a run to end it with a given ExitInfo. */
class RunEnd extends Error {
  constructor(readonly exit: ExitInfo) {
    super(exit.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Output: Docker's multiplexed log stream → lines → batches handed to the sink.
// ---------------------------------------------------------------------------------------------

/**
 * Splits Docker's multiplexed stream into whole frames (8-byte header: stream type, 3 zero bytes,
 * big-endian size). The logs endpoint sends one frame per log message (a line, or a 16 KiB piece
 * of a longer one), prefixed with its timestamp when asked.
 */
class FrameReader {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer, onFrame: (stream: 'stdout' | 'stderr', payload: Buffer) => void): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    while (buf.length >= 8) {
      const size = buf.readUInt32BE(4);
      if (buf.length < 8 + size) break;
      // 1 = stdout, 2 = stderr, 3 = Docker's own error for the stream: show it as stderr.
      onFrame(buf[0] === 1 ? 'stdout' : 'stderr', buf.subarray(8, 8 + size));
      buf = buf.subarray(8 + size);
    }
    this.pending = Buffer.from(buf);
  }
}

/** Splits a frame from a timestamped log stream: "<RFC 3339 nano> <bytes>". */
function splitTimestamp(payload: Buffer): { stamp: string; timestampMs: number; bytes: Buffer } {
  const space = payload.indexOf(32);
  const stamp = space > 0 && space <= 40 ? payload.toString('latin1', 0, space) : '';
  const ms = stamp ? Date.parse(stamp) : NaN;
  if (Number.isNaN(ms)) return { stamp: '', timestampMs: Date.now(), bytes: payload };
  return { stamp, timestampMs: ms, bytes: payload.subarray(space + 1) };
}

/**
 * Cuts bytes into lines; keeps a partial line until its newline or the end. A line longer than
 * MAX_LINE_BYTES is cut every MAX_LINE_BYTES bytes, wherever the chunks fall: the same output
 * always gives the same lines (their positions number them). A line's timestamp is its first byte's.
 */
class LineSplitter {
  private parts: Buffer[] = [];
  private partLen = 0;
  private startMs = 0;

  push(bytes: Buffer, timestampMs: number, emit: (text: string, timestampMs: number) => void): void {
    let start = 0;
    while (start < bytes.length) {
      if (this.partLen === 0) this.startMs = timestampMs;
      const nl = bytes.indexOf(10, start);
      const end = nl < 0 ? bytes.length : nl;
      const room = MAX_LINE_BYTES - this.partLen;
      if (end - start > room) {
        this.add(bytes.subarray(start, start + room));
        emit(this.take(false), this.startMs);
        start += room;
        continue;
      }
      this.add(bytes.subarray(start, end));
      if (nl < 0) return;
      emit(this.take(true), this.startMs);
      start = nl + 1;
    }
  }

  end(emit: (text: string, timestampMs: number) => void): void {
    if (this.partLen > 0) emit(this.take(true), this.startMs);
  }

  private add(piece: Buffer): void {
    if (piece.length === 0) return;
    this.parts.push(piece);
    this.partLen += piece.length;
  }

  private take(lineEnd: boolean): string {
    const line = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
    this.parts = [];
    this.partLen = 0;
    const text = line.toString('utf8');
    return lineEnd && text.endsWith('\r') ? text.slice(0, -1) : text;
  }
}

/**
 * Hands lines to the sink in order, one call at a time. Lines go out as soon as the sink is idle;
 * while it is busy they gather into the next batch (at most `maxLines`), and the reader stops
 * reading once a full batch waits. A sink that rejects loses that batch, not the run.
 */
class LogBatcher {
  private pending: RuntimeLogLine[] = [];
  private inflight: Promise<void> | null = null;

  constructor(
    private readonly sink: ContainerSink,
    private readonly maxLines: number,
  ) {}

  add(line: RuntimeLogLine): void {
    this.pending.push(line);
  }

  /** Starts a flush if the sink is idle; waits while a full batch is queued behind a busy sink. */
  async settle(): Promise<void> {
    this.kick();
    while (this.inflight && this.pending.length >= this.maxLines) await this.inflight;
  }

  /** Flushes everything. */
  async drain(): Promise<void> {
    this.kick();
    while (this.inflight) await this.inflight;
  }

  private kick(): void {
    if (this.inflight || this.pending.length === 0) return;
    const batch = this.pending.splice(0, this.maxLines);
    this.inflight = (async () => {
      try {
        await this.sink.logs(batch);
      } catch {
        // The sink owns delivery (and its errors); the container's output must keep draining.
      }
      this.inflight = null;
      this.kick();
    })();
  }
}

/** Where a read of the container's log starts. */
interface ReadFrom {
  /** Skip frames up to and including the one with this identity (stream and Docker's timestamp). */
  after?: string;
  /** Skip this many frames. */
  skip?: number;
}

/**
 * Reads a container's timestamped log, possibly in several reads (Docker can end a follow
 * stream before the last messages it logged at the exit: a second read picks up after the last
 * frame handled), and hands its lines to the sink.
 */
class OutputReader {
  private readonly batcher: LogBatcher;
  private readonly splitters = { stdout: new LineSplitter(), stderr: new LineSplitter() };
  private readonly emit: Record<'stdout' | 'stderr', (text: string, timestampMs: number) => void>;
  /** Frames handled so far. */
  frames = 0;
  /** Identity of the last frame handled; '' when it had no timestamp. */
  last = '';
  /** Docker's timestamp of the last frame handled. */
  lastMs = 0;

  constructor(sink: ContainerSink, maxLines: number) {
    this.batcher = new LogBatcher(sink, maxLines);
    const emitter = (s: LogStream) => (text: string, timestampMs: number) => this.batcher.add({ stream: s, text, timestampMs });
    this.emit = { stdout: emitter('stdout'), stderr: emitter('stderr') };
  }

  /** Reads `stream` to its end (or until it is destroyed); never rejects. Resolves false if `from.after` never came. */
  async read(stream: Readable, from: ReadFrom = {}): Promise<boolean> {
    const frames = new FrameReader();
    let skipping = from.after !== undefined;
    let skip = from.skip ?? 0;
    try {
      for await (const chunk of stream) {
        frames.push(chunk as Buffer, (s, payload) => {
          const { stamp, timestampMs, bytes } = splitTimestamp(payload);
          const id = stamp ? `${s} ${stamp}` : '';
          if (skipping) {
            if (id === from.after) skipping = false;
            return;
          }
          if (skip > 0) {
            skip--;
            return;
          }
          this.splitters[s].push(bytes, timestampMs, this.emit[s]);
          this.frames++;
          this.last = id;
          if (stamp) this.lastMs = timestampMs;
        });
        await this.batcher.settle();
      }
    } catch {
      // Destroyed (run aborted, drain timeout) or the connection dropped: deliver what we have.
    }
    return !skipping;
  }

  /**
   * Hands over everything read. With `partial`, a last line without a newline too; without it
   * (the run was aborted) that line is dropped: the container may still finish it, and the next
   * run, which replays the output, hands over the whole line.
   */
  async finish(partial: boolean): Promise<void> {
    if (partial) {
      this.splitters.stdout.end(this.emit.stdout);
      this.splitters.stderr.end(this.emit.stderr);
    }
    await this.batcher.drain();
  }
}

// ---------------------------------------------------------------------------------------------
// Pull
// ---------------------------------------------------------------------------------------------

interface PullEvent {
  status?: string;
  id?: string;
  progressDetail?: { current?: number; total?: number };
  error?: string;
  errorDetail?: { message?: string };
}

/** Sums per-layer progress and limits how often progress goes to the sink. */
class PullTracker {
  private readonly layers = new Map<string, { current: number; total: number }>();
  private lastStatus = '';
  private lastEmitMs = 0;

  constructor(
    private readonly image: string,
    private readonly sink: ContainerSink,
  ) {}

  event(ev: PullEvent): void {
    const status = ev.status ?? '';
    if (ev.id && (status === 'Downloading' || status.startsWith('Pulling fs layer') || status === 'Waiting')) {
      const layer = this.layers.get(ev.id) ?? { current: 0, total: 0 };
      if (ev.progressDetail?.total) layer.total = ev.progressDetail.total;
      if (status === 'Downloading' && ev.progressDetail?.current !== undefined) layer.current = ev.progressDetail.current;
      this.layers.set(ev.id, layer);
    } else if (ev.id && (status === 'Download complete' || status === 'Pull complete' || status === 'Already exists')) {
      const layer = this.layers.get(ev.id);
      if (layer) layer.current = layer.total;
    }
    const now = Date.now();
    const kind = status.split(' ')[0];
    if (kind === this.lastStatus && now - this.lastEmitMs < PULL_PROGRESS_INTERVAL_MS) return;
    this.lastStatus = kind;
    this.lastEmitMs = now;
    let currentBytes = 0;
    let totalBytes = 0;
    for (const l of this.layers.values()) {
      currentBytes += l.current;
      totalBytes += l.total;
    }
    const p: PullProgress = { image: this.image, status: ev.id ? `${ev.id}: ${status}` : status, currentBytes, totalBytes };
    this.sink.pullProgress(p);
  }
}

// ---------------------------------------------------------------------------------------------
// The runtime
// ---------------------------------------------------------------------------------------------

/** ContainerRuntime backed by a Docker Engine. */
export class DockerRuntime implements ContainerRuntime {
  private readonly docker: Docker;
  private readonly socketPath: string;
  private readonly pullStallTimeoutMs: number;
  private readonly pingTimeoutMs: number;
  private readonly logBatchLines: number;
  private readonly logDrainTimeoutMs: number;
  private readonly active = new Map<string, ActiveRun>();

  constructor(opts: DockerRuntimeOptions) {
    this.socketPath = opts.socketPath;
    this.docker = new Docker({ socketPath: opts.socketPath });
    this.pullStallTimeoutMs = opts.pullStallTimeoutMs ?? 120_000;
    this.pingTimeoutMs = opts.pingTimeoutMs ?? 5_000;
    this.logBatchLines = opts.logBatchLines ?? 256;
    this.logDrainTimeoutMs = opts.logDrainTimeoutMs ?? 10_000;
  }

  async ping(signal?: AbortSignal): Promise<void> {
    const timeout = AbortSignal.timeout(this.pingTimeoutMs);
    const abortSignal = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      // dockerode takes ping options at runtime; its typings only know the callback form.
      await (this.docker.ping as (opts: { abortSignal: AbortSignal }) => Promise<unknown>).call(this.docker, { abortSignal });
    } catch (err) {
      if (signal?.aborted) throw err;
      const reason = timeout.aborted ? `no answer within ${this.pingTimeoutMs} ms` : this.describeSocketError(err);
      throw this.unreachable(reason, err);
    }
  }

  run(spec: RunSpec, ctx: RunContext, sink: ContainerSink, signal?: AbortSignal, opts: RunOptions = {}): Promise<ExitInfo> {
    const existing = this.active.get(spec.allocationId);
    if (existing) return existing.promise;
    const entry: ActiveRun = { promise: Promise.resolve(null as never), killed: new AbortController() };
    this.active.set(spec.allocationId, entry);
    entry.promise = this.runOnce(spec, ctx, sink, entry, signal, opts.adoptOnly ?? false).finally(() => {
      if (this.active.get(spec.allocationId) === entry) this.active.delete(spec.allocationId);
    });
    return entry.promise;
  }

  async kill(allocationId: string, signal: string, gracePeriodMs: number): Promise<void> {
    const sig = signal || 'SIGTERM';
    const entry = this.active.get(allocationId);
    if (entry) {
      entry.kill ??= { signal: sig, gracePeriodMs, escalated: false };
      entry.killed.abort(new Error(`killed (${sig})`));
    }
    await this.signalContainer(containerName(allocationId), sig, gracePeriodMs, entry?.kill);
  }

  async discard(allocationId: string): Promise<void> {
    await this.remove(containerName(allocationId));
  }

  async listManaged(agentId: string): Promise<ManagedContainer[]> {
    const list = await this.docker.listContainers({
      all: true,
      filters: { label: [`${CONTAINER_LABELS.managed}=true`, `${CONTAINER_LABELS.agent}=${agentId}`] },
    });
    return list.map((c) => {
      const exited = /^Exited \((-?\d+)\)/.exec(c.Status ?? '');
      return {
        allocationId: c.Labels?.[CONTAINER_LABELS.allocation] ?? '',
        taskId: c.Labels?.[CONTAINER_LABELS.task] ?? '',
        containerId: c.Id,
        running: c.State === 'running',
        exitCode: exited ? Number(exited[1]) : null,
      };
    });
  }

  // -------------------------------------------------------------------------------------------

  private unreachable(reason: string, cause?: unknown): DetError {
    return new DetError(
      'DET_ERR_DOCKER_UNREACHABLE',
      `cannot reach Docker at ${this.socketPath}: ${reason}. Is dockerd running? ` +
        "Check the agent's Docker socket setting and that the agent's user may open that socket.",
      { cause },
    );
  }

  private describeSocketError(err: unknown): string {
    switch ((err as DockerodeError)?.code) {
      case 'ENOENT':
        return 'no such socket (ENOENT)';
      case 'ECONNREFUSED':
        return 'connection refused (ECONNREFUSED)';
      case 'EACCES':
        return 'permission denied (EACCES)';
      default:
        return dockerMessage(err) || errorMessage(err);
    }
  }

  /** A Docker failure during a run: AGENT_ERROR when the socket failed, else `kind` with Docker's message. */
  private failure(kind: 'START_FAILED' | 'AGENT_ERROR', what: string, err: unknown): RunEnd {
    if (isConnectionError(err)) {
      return new RunEnd({ exitCode: -1, failureKind: 'AGENT_ERROR', message: `${what}: ${this.unreachable(this.describeSocketError(err)).message}` });
    }
    return new RunEnd({ exitCode: -1, failureKind: kind, message: `${what}: ${dockerMessage(err)}` });
  }

  private async runOnce(
    spec: RunSpec,
    ctx: RunContext,
    sink: ContainerSink,
    entry: ActiveRun,
    signal: AbortSignal | undefined,
    adoptOnly: boolean,
  ): Promise<ExitInfo> {
    const name = containerName(spec.allocationId);
    let containerId = '';
    // A container adopted while it ran is never removed on failure: kill() stops it gracefully.
    let adoptedRunning = false;
    let phase = 'pulling';
    const stopSignal = signal ? AbortSignal.any([signal, entry.killed.signal]) : entry.killed.signal;
    // Ends the run early when kill() or the caller's signal intervened.
    const checkStop = (phase: string) => {
      signal?.throwIfAborted();
      if (entry.kill) {
        throw new RunEnd({ exitCode: -1, failureKind: 'KILLED', message: `killed (${entry.kill.signal}) while ${phase}` });
      }
    };
    try {
      signal?.throwIfAborted();
      sink.state('PULLING', '');
      let created: { id: string; adopted?: Docker.ContainerInspectInfo } | 'missing-image' | undefined;
      if (adoptOnly) {
        created = await this.existing(spec.allocationId);
        if (!created) {
          throw new RunEnd({ exitCode: -1, failureKind: 'AGENT_ERROR', message: `container ${name} is gone: it was removed while the agent was not running` });
        }
        containerId = created.id;
      } else {
        const body = this.createBody(spec, ctx);
        if (spec.pullPolicy === 'always') {
          await this.pull(spec.image, sink, stopSignal);
        } else {
          // Optimistic: create first and pull only if Docker lacks the image (saves a round trip).
          created = await this.createOrAdopt(body, spec.allocationId, { missingImageOk: true });
          if (created !== 'missing-image') {
            containerId = created.id;
            adoptedRunning = created.adopted?.State.Running ?? false;
          } else {
            checkStop('pulling');
            await this.pull(spec.image, sink, stopSignal);
            created = undefined;
          }
        }
        checkStop('pulling');
        phase = 'starting';
        sink.state('STARTING', typeof created === 'object' ? created.id : '');
        if (!created) created = await this.createOrAdopt(body, spec.allocationId, { missingImageOk: false });
        if (created === 'missing-image') {
          throw new RunEnd({ exitCode: -1, failureKind: 'START_FAILED', message: `image ${spec.image} vanished after the pull` });
        }
      }
      containerId = created.id;
      const adopted = created.adopted;
      adoptedRunning = adopted?.State.Running ?? false;
      const container = this.docker.getContainer(containerId);

      if (adopted && !adopted.State.Running && adopted.State.Status !== 'created') {
        // It ran and exited while no agent watched it (e.g. during an agent restart): hand over its
        // output, then report how it ended.
        if (adoptOnly) sink.state('RUNNING', containerId);
        await this.pumpAll(container, sink, spec, signal);
        signal?.throwIfAborted();
        const exit = this.exitInfo(spec, entry, adopted.State.ExitCode, adopted.State.OOMKilled);
        sink.state('TERMINATED', containerId, exit);
        await this.remove(containerId);
        return exit;
      }
      if (!adoptedRunning) {
        checkStop('starting');
        if (adoptOnly) sink.state('STARTING', containerId);
        try {
          await container.start();
        } catch (err) {
          // 304: already started (a concurrent run of the same allocation started it).
          if (statusOf(err) !== 304) throw this.failure('START_FAILED', `starting container ${name} failed`, err);
        }
      }
      phase = 'running';
      sink.state('RUNNING', containerId);
      if (entry.kill) void this.signalContainer(containerId, entry.kill.signal, entry.kill.gracePeriodMs, entry.kill).catch(() => undefined);

      // The output is read from the container's log, from its first line: nothing a short-lived
      // process wrote is missed, and an adopted container's output comes again in the same order.
      const output = new OutputReader(sink, this.logBatchLines);
      const stream = await this.openOutput(container, sink, spec);
      const pump = stream ? output.read(stream) : Promise.resolve(true);
      const onAbort = () => stream?.destroy();
      signal?.addEventListener('abort', onAbort, { once: true });
      if (signal?.aborted) onAbort();
      try {
        let waited: { StatusCode: number };
        try {
          const waitOpts: Docker.ContainerWaitOptions = signal ? { condition: 'not-running', abortSignal: signal } : { condition: 'not-running' };
          waited = (await container.wait(waitOpts)) as { StatusCode: number };
        } catch (err) {
          signal?.throwIfAborted();
          stream?.destroy();
          await pump;
          await output.finish(true);
          throw this.failure('AGENT_ERROR', `waiting for container ${name} failed`, err);
        }
        if (stream) {
          await this.drainOutput(stream, pump);
          signal?.throwIfAborted();
          await this.catchUp(container, output, signal);
        }
        await output.finish(!signal?.aborted);
        signal?.throwIfAborted();
        let oomKilled = false;
        if (waited.StatusCode !== 0) {
          const info = await container.inspect().catch(() => undefined);
          oomKilled = info?.State.OOMKilled ?? false;
        }
        const exit = this.exitInfo(spec, entry, waited.StatusCode, oomKilled);
        sink.state('TERMINATED', containerId, exit);
        await this.remove(containerId);
        return exit;
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    } catch (err) {
      if (signal?.aborted) throw signal.reason ?? err;
      let exit: ExitInfo;
      if (err instanceof RunEnd) exit = err.exit;
      else if (entry.kill) exit = { exitCode: -1, failureKind: 'KILLED', message: `killed (${entry.kill.signal}) while ${phase}` };
      else exit = { exitCode: -1, failureKind: 'AGENT_ERROR', message: `running ${spec.image} failed: ${errorMessage(err)}` };
      sink.state('TERMINATED', containerId, exit);
      if (containerId && !adoptedRunning && !adoptOnly) await this.remove(containerId);
      return exit;
    }
  }

  /**
   * The container's timestamped log from its first line (or from `sinceSec`), following it while
   * the container runs: Docker ends the stream once the container has stopped and its log is read.
   */
  private async logStream(container: Docker.Container, sinceSec?: number): Promise<Readable> {
    const opts = { follow: true as const, stdout: true, stderr: true, timestamps: true, ...(sinceSec !== undefined ? { since: sinceSec } : {}) };
    return (await container.logs(opts)) as unknown as Readable;
  }

  /**
   * logStream() from the first line. Undefined when Docker cannot give it (e.g. logging driver
   * "none"): the run goes on without output, saying why.
   */
  private async openOutput(container: Docker.Container, sink: ContainerSink, spec: RunSpec): Promise<Readable | undefined> {
    try {
      return await this.logStream(container);
    } catch (err) {
      if (isConnectionError(err)) throw err;
      const text = `the output of container ${containerName(spec.allocationId)} is not available: ${dockerMessage(err)}`;
      await Promise.resolve(sink.logs([{ stream: 'agent', text, timestampMs: Date.now() }])).catch(() => undefined);
      return undefined;
    }
  }

  /** Hands over the whole output of a stopped container. */
  private async pumpAll(container: Docker.Container, sink: ContainerSink, spec: RunSpec, signal?: AbortSignal): Promise<void> {
    const output = new OutputReader(sink, this.logBatchLines);
    const stream = await this.openOutput(container, sink, spec);
    if (stream) await this.readWithAbort(stream, output, {}, signal);
    await output.finish(!signal?.aborted);
  }

  /**
   * After the exit: a follow stream may have ended before the last messages Docker logged at the
   * exit (dockerd 20.10 does this now and then), so the stopped container's log is read once more
   * from shortly before the last frame handled, picking up after that frame (frames carry
   * nanosecond timestamps). If that frame cannot be found, the whole log is read again, skipping
   * the frames already handled.
   */
  private async catchUp(container: Docker.Container, output: OutputReader, signal?: AbortSignal): Promise<void> {
    if (output.frames > 0 && output.last) {
      const since = Math.max(0, Math.floor(output.lastMs / 1000) - CATCH_UP_WINDOW_S);
      const stream = await this.logStream(container, since).catch(() => undefined);
      if (!stream) return;
      if (await this.readWithAbort(stream, output, { after: output.last }, signal)) return;
    }
    signal?.throwIfAborted();
    const stream = await this.logStream(container).catch(() => undefined);
    if (stream) await this.readWithAbort(stream, output, { skip: output.frames }, signal);
  }

  private async readWithAbort(stream: Readable, output: OutputReader, from: ReadFrom, signal?: AbortSignal): Promise<boolean> {
    const onAbort = () => stream.destroy();
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    try {
      const read = output.read(stream, from);
      await this.drainOutput(stream, read);
      return await read;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Waits for the output stream to end after the exit; cuts it off if it lingers. */
  private async drainOutput(stream: Readable, pump: Promise<unknown>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const cutOff = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        stream.destroy();
        resolve();
      }, this.logDrainTimeoutMs);
    });
    await Promise.race([pump, cutOff]);
    clearTimeout(timer);
    await pump;
  }

  private exitInfo(spec: TaskSpec, entry: ActiveRun, code: number, oomKilled: boolean): ExitInfo {
    if (entry.kill) {
      const how = entry.kill.escalated
        ? `${entry.kill.signal}, then SIGKILL after the ${entry.kill.gracePeriodMs} ms grace period`
        : entry.kill.signal;
      return { exitCode: code, failureKind: 'KILLED', message: `killed (${how}); exited with code ${code}` };
    }
    if (code === 0) return { exitCode: 0, failureKind: 'NONE', message: 'exited with code 0' };
    let message = `exited with code ${code}`;
    if (oomKilled) {
      message +=
        spec.memoryLimitBytes > 0
          ? ` (out of memory: the memory limit is ${spec.memoryLimitBytes} bytes)`
          : ' (out of memory)';
    }
    return { exitCode: code, failureKind: 'EXIT_NONZERO', message };
  }

  private createBody(spec: RunSpec, ctx: RunContext): Docker.ContainerCreateOptions {
    const hostConfig: Docker.HostConfig = { NetworkMode: ctx.networkMode, AutoRemove: false };
    // Mounts (not Binds): Docker refuses a missing host path instead of creating an empty one.
    if (spec.mounts?.length) hostConfig.Mounts = spec.mounts.map((m) => ({ Type: 'bind', Source: m.hostPath, Target: m.containerPath, ReadOnly: m.readOnly }));
    if (spec.memoryLimitBytes > 0) hostConfig.Memory = spec.memoryLimitBytes;
    if (spec.deviceType === 'cuda' && spec.deviceIds.length > 0) {
      const uuids = spec.deviceIds.map((id) => {
        const dev = ctx.devices.find((d) => d.id === id && d.type === 'cuda');
        if (!dev) {
          const have = ctx.devices.filter((d) => d.type === 'cuda').map((d) => d.id);
          throw new RunEnd({
            exitCode: -1,
            failureKind: 'START_FAILED',
            message: `device ${id} is not one of this agent's GPUs (${have.length ? have.join(', ') : 'it has none'})`,
          });
        }
        return dev.uuid;
      });
      hostConfig.DeviceRequests = [{ Driver: 'nvidia', DeviceIDs: uuids, Capabilities: [['gpu']] }];
    }
    const body: Docker.ContainerCreateOptions = {
      name: containerName(spec.allocationId),
      Image: spec.image,
      Env: Object.entries(spec.env).map(([k, v]) => `${k}=${v}`),
      // Ours last: a task's labels cannot pretend to be another allocation's.
      Labels: {
        ...spec.labels,
        [CONTAINER_LABELS.managed]: 'true',
        [CONTAINER_LABELS.cluster]: ctx.clusterId,
        [CONTAINER_LABELS.agent]: ctx.agentId,
        [CONTAINER_LABELS.task]: spec.taskId,
        [CONTAINER_LABELS.allocation]: spec.allocationId,
      },
      AttachStdin: false,
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
      OpenStdin: false,
      HostConfig: hostConfig,
    };
    if (spec.entrypoint.length > 0) body.Entrypoint = spec.entrypoint;
    if (spec.command.length > 0) body.Cmd = spec.command;
    return body;
  }

  /**
   * Creates the allocation's container, or adopts the one that already has its name.
   * 'missing-image' when Docker lacks the image and `missingImageOk`.
   */
  private async createOrAdopt(
    body: Docker.ContainerCreateOptions,
    allocationId: string,
    opts: { missingImageOk: boolean },
  ): Promise<{ id: string; adopted?: Docker.ContainerInspectInfo } | 'missing-image'> {
    const name = containerName(allocationId);
    try {
      const c = await this.docker.createContainer(body);
      return { id: c.id };
    } catch (err) {
      const status = statusOf(err);
      if (status === 404 && /no such image/i.test(dockerMessage(err))) {
        if (opts.missingImageOk) return 'missing-image';
      }
      if (status !== 409) throw this.failure('START_FAILED', `creating container ${name} failed`, err);
    }
    // 409: the name is taken. Reuse the container if it is this allocation's.
    const found = await this.existing(allocationId);
    if (!found) throw new RunEnd({ exitCode: -1, failureKind: 'START_FAILED', message: `container ${name} was removed while it was being created` });
    return found;
  }

  /** The allocation's container, if there is one; a container of that name that is not the allocation's fails the run. */
  private async existing(allocationId: string): Promise<{ id: string; adopted: Docker.ContainerInspectInfo } | undefined> {
    const name = containerName(allocationId);
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.docker.getContainer(name).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw this.failure('START_FAILED', `container ${name} exists but cannot be inspected`, err);
    }
    if (info.Config.Labels?.[CONTAINER_LABELS.allocation] !== allocationId) {
      throw new RunEnd({
        exitCode: -1,
        failureKind: 'START_FAILED',
        message: `a container named ${name} exists and is not this allocation's; remove it (docker rm -f ${name})`,
      });
    }
    if (info.State.Status === 'removing') {
      throw new RunEnd({ exitCode: -1, failureKind: 'START_FAILED', message: `container ${name} is being removed` });
    }
    return { id: info.Id, adopted: info };
  }

  /** Pulls `image`, forwarding progress; throws RunEnd(PULL_FAILED) on any failure or stall. */
  private async pull(image: string, sink: ContainerSink, stop: AbortSignal): Promise<void> {
    const startedMs = Date.now();
    await sink.logs([{ stream: 'agent', text: `Pulling image ${image}`, timestampMs: startedMs }]);
    const ctl = new AbortController();
    const onStop = () => ctl.abort(stop.reason);
    stop.addEventListener('abort', onStop, { once: true });
    let stalled = false;
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        ctl.abort(new Error('stalled'));
      }, this.pullStallTimeoutMs);
    };
    const tracker = new PullTracker(image, sink);
    try {
      arm();
      const stream = (await this.docker.pull(image, { abortSignal: ctl.signal })) as Readable;
      if (ctl.signal.aborted) stream.destroy();
      else ctl.signal.addEventListener('abort', () => stream.destroy(), { once: true });
      let buf = '';
      for await (const chunk of stream) {
        arm();
        buf += (chunk as Buffer).toString('utf8');
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let ev: PullEvent;
          try {
            ev = JSON.parse(line) as PullEvent;
          } catch {
            continue;
          }
          if (ev.error || ev.errorDetail) throw new Error(ev.errorDetail?.message ?? ev.error);
          tracker.event(ev);
        }
      }
      // A stream cut short without an error message (e.g. dockerd died) must not count as success.
      if (ctl.signal.aborted) throw ctl.signal.reason;
    } catch (err) {
      if (stop.aborted) throw stop.reason;
      const why = stalled
        ? `no progress from Docker for ${this.pullStallTimeoutMs} ms`
        : isConnectionError(err)
          ? this.unreachable(this.describeSocketError(err)).message
          : dockerMessage(err);
      const message = `pulling image ${image} failed: ${why}`;
      await sink.logs([{ stream: 'agent', text: message, timestampMs: Date.now() }]);
      throw new RunEnd({ exitCode: -1, failureKind: isConnectionError(err) ? 'AGENT_ERROR' : 'PULL_FAILED', message });
    } finally {
      clearTimeout(timer);
      stop.removeEventListener('abort', onStop);
    }
    const secs = ((Date.now() - startedMs) / 1000).toFixed(1);
    await sink.logs([{ stream: 'agent', text: `Pulled image ${image} in ${secs}s`, timestampMs: Date.now() }]);
  }

  /** Sends `signal`, waits up to the grace period for the exit, then SIGKILL. Gone containers are fine. */
  private async signalContainer(nameOrId: string, signal: string, gracePeriodMs: number, req?: KillRequest): Promise<void> {
    const container = this.docker.getContainer(nameOrId);
    const gone = (err: unknown) => statusOf(err) === 404 || statusOf(err) === 409; // no such / not running
    try {
      await container.kill({ signal });
    } catch (err) {
      if (gone(err)) return;
      throw err;
    }
    if (signal === 'SIGKILL' || signal === 'KILL' || signal === '9') return;
    try {
      await container.wait({ condition: 'not-running', abortSignal: AbortSignal.timeout(Math.max(0, gracePeriodMs)) });
      return;
    } catch (err) {
      if (statusOf(err) === 404) return;
      // Timed out: the grace period is over.
    }
    if (req) req.escalated = true;
    try {
      await container.kill({ signal: 'SIGKILL' });
    } catch (err) {
      if (!gone(err)) throw err;
    }
  }

  private async remove(containerId: string): Promise<void> {
    try {
      await this.docker.getContainer(containerId).remove({ force: true, v: true });
    } catch {
      // Already gone, or removal in progress from a concurrent run: either way it goes.
    }
  }
}
