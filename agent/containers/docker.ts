// ContainerRuntime on a real Docker Engine (dockerode over the unix socket).
//
// A run is: PULLING (pull if the policy says so or the image is missing) → STARTING (create
// det-<allocationId>, attach, start) → RUNNING (stream output, wait) → TERMINATED (flush output,
// report, remove). The output stream is attached before the container starts, as `docker run`
// does, so a process that exits at once loses nothing. Nothing sleeps or polls: each step waits
// on Docker's own answer.
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
// Output: Docker's multiplexed attach stream → lines → batches handed to the sink.
// ---------------------------------------------------------------------------------------------

/** Splits Docker's multiplexed stream (8-byte header: stream type, 3 zero bytes, big-endian size). */
class Demuxer {
  private readonly header = Buffer.alloc(8);
  private headerLen = 0;
  private remaining = 0;
  private stream: 'stdout' | 'stderr' = 'stdout';

  push(chunk: Buffer, onData: (stream: 'stdout' | 'stderr', bytes: Buffer) => void): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.remaining === 0) {
        const n = Math.min(8 - this.headerLen, chunk.length - off);
        chunk.copy(this.header, this.headerLen, off, off + n);
        this.headerLen += n;
        off += n;
        if (this.headerLen < 8) return;
        this.headerLen = 0;
        // 1 = stdout, 2 = stderr, 3 = Docker's own error for the stream: show it as stderr.
        this.stream = this.header[0] === 1 ? 'stdout' : 'stderr';
        this.remaining = this.header.readUInt32BE(4);
        continue;
      }
      const n = Math.min(this.remaining, chunk.length - off);
      onData(this.stream, chunk.subarray(off, off + n));
      this.remaining -= n;
      off += n;
    }
  }
}

/** Cuts bytes into lines; keeps a partial line until its newline or the end. */
class LineSplitter {
  private parts: Buffer[] = [];
  private partLen = 0;

  push(bytes: Buffer, emit: (text: string) => void): void {
    let start = 0;
    for (;;) {
      const nl = bytes.indexOf(10, start);
      if (nl < 0) break;
      const piece = bytes.subarray(start, nl);
      emit(this.take(piece));
      start = nl + 1;
    }
    if (start < bytes.length) {
      const rest = bytes.subarray(start);
      this.parts.push(rest);
      this.partLen += rest.length;
      if (this.partLen >= MAX_LINE_BYTES) emit(this.take(Buffer.alloc(0)));
    }
  }

  end(emit: (text: string) => void): void {
    if (this.partLen > 0) emit(this.take(Buffer.alloc(0)));
  }

  private take(last: Buffer): string {
    const line = this.partLen > 0 ? Buffer.concat([...this.parts, last]) : last;
    this.parts = [];
    this.partLen = 0;
    const text = line.toString('utf8');
    return text.endsWith('\r') ? text.slice(0, -1) : text;
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

/** Reads an attach stream to its end, handing lines to the sink. Never rejects. */
async function pumpOutput(stream: Readable, sink: ContainerSink, maxLines: number): Promise<void> {
  const batcher = new LogBatcher(sink, maxLines);
  const demux = new Demuxer();
  const splitters = { stdout: new LineSplitter(), stderr: new LineSplitter() };
  let ts = Date.now();
  const emitter = (s: LogStream) => (text: string) => batcher.add({ stream: s, text, timestampMs: ts });
  const emit = { stdout: emitter('stdout'), stderr: emitter('stderr') };
  try {
    for await (const chunk of stream) {
      ts = Date.now();
      demux.push(chunk as Buffer, (s, bytes) => splitters[s].push(bytes, emit[s]));
      await batcher.settle();
    }
  } catch {
    // Destroyed (run aborted, drain timeout) or the connection dropped: deliver what we have.
  }
  ts = Date.now();
  splitters.stdout.end(emit.stdout);
  splitters.stderr.end(emit.stderr);
  await batcher.drain();
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

  run(spec: RunSpec, ctx: RunContext, sink: ContainerSink, signal?: AbortSignal): Promise<ExitInfo> {
    const existing = this.active.get(spec.allocationId);
    if (existing) return existing.promise;
    const entry: ActiveRun = { promise: Promise.resolve(null as never), killed: new AbortController() };
    this.active.set(spec.allocationId, entry);
    entry.promise = this.runOnce(spec, ctx, sink, entry, signal).finally(() => {
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
    signal?: AbortSignal,
  ): Promise<ExitInfo> {
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
      const body = this.createBody(spec, ctx);
      let adopted: Docker.ContainerInspectInfo | undefined;
      let created: Awaited<ReturnType<DockerRuntime['createOrAdopt']>> | undefined;
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
      containerId = created.id;
      adopted = created.adopted;
      adoptedRunning = adopted?.State.Running ?? false;
      const container = this.docker.getContainer(containerId);

      if (adopted && !adopted.State.Running && adopted.State.Status !== 'created') {
        // Left behind by an earlier run (e.g. before an agent restart): report how it ended.
        const exit = this.exitInfo(spec, entry, adopted.State.ExitCode, adopted.State.OOMKilled);
        sink.state('TERMINATED', containerId, exit);
        await this.remove(containerId);
        return exit;
      }
      if (!adoptedRunning) checkStop('starting');

      // Attach before start, so that no output of a short-lived process is missed.
      const stream = (await container.attach({ stream: true, stdout: true, stderr: true })) as unknown as Readable;
      const pump = pumpOutput(stream, sink, this.logBatchLines);
      const onAbort = () => stream.destroy();
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        if (!adoptedRunning) {
          try {
            await container.start();
          } catch (err) {
            // 304: already started (a concurrent run of the same allocation started it).
            if (statusOf(err) !== 304) {
              stream.destroy();
              await pump;
              throw this.failure('START_FAILED', `starting container ${containerName(spec.allocationId)} failed`, err);
            }
          }
        }
        phase = 'running';
        sink.state('RUNNING', containerId);
        if (entry.kill) void this.signalContainer(containerId, entry.kill.signal, entry.kill.gracePeriodMs, entry.kill).catch(() => undefined);

        let waited: { StatusCode: number };
        try {
          const waitOpts: Docker.ContainerWaitOptions = signal ? { condition: 'not-running', abortSignal: signal } : { condition: 'not-running' };
          waited = (await container.wait(waitOpts)) as { StatusCode: number };
        } catch (err) {
          signal?.throwIfAborted();
          stream.destroy();
          await pump;
          throw this.failure('AGENT_ERROR', `waiting for container ${containerName(spec.allocationId)} failed`, err);
        }
        await this.drainOutput(stream, pump);
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
      if (containerId && !adoptedRunning) await this.remove(containerId);
      return exit;
    }
  }

  /** Waits for the output stream to end after the exit; cuts it off if it lingers. */
  private async drainOutput(stream: Readable, pump: Promise<void>): Promise<void> {
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
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.docker.getContainer(name).inspect();
    } catch (err) {
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
