// Records what the test dockerd does to task containers (create, start, die, destroy), from its
// event stream, so that recovery tests can count containers per allocation even after the agent
// has removed them. Only containers of the given agent ids count: other suites share the dockerd.
import type { Readable } from 'node:stream';
import Docker from 'dockerode';
import { CONTAINER_LABELS } from '../../common/types';

/** One container event of a task container. */
export interface ContainerEvent {
  action: 'create' | 'start' | 'die' | 'destroy' | 'kill';
  containerId: string;
  allocationId: string;
  taskId: string;
  agentId: string;
  /** Exit code of a 'die' event; null otherwise. */
  exitCode: number | null;
  /** Signal of a 'kill' event; '' otherwise. */
  signal: string;
  timeNano: bigint;
}

/** Per container: its allocation and what happened to it. */
export interface ContainerHistory {
  containerId: string;
  allocationId: string;
  taskId: string;
  agentId: string;
  creates: number;
  starts: number;
  dies: number;
  exitCodes: number[];
}

const ACTIONS = new Set(['create', 'start', 'die', 'destroy', 'kill']);

/** See the file comment. Start it before the containers are created; stop() it afterwards. */
export class ContainerEvents {
  readonly events: ContainerEvent[] = [];
  private constructor(
    private readonly stream: Readable,
    private readonly agentIds: Set<string>,
  ) {}

  /** Subscribes to the dockerd's events from now on (replayed from a second ago, so nothing is missed). */
  static async start(dockerSocket: string, agentIds: string[]): Promise<ContainerEvents> {
    const docker = new Docker({ socketPath: dockerSocket });
    const since = Math.floor(Date.now() / 1000) - 1;
    const stream = (await docker.getEvents({ since, filters: { type: ['container'], label: [`${CONTAINER_LABELS.managed}=true`] } })) as Readable;
    const rec = new ContainerEvents(stream, new Set(agentIds));
    let buf = '';
    stream.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) rec.add(line);
      }
    });
    stream.on('error', () => undefined);
    return rec;
  }

  /** Adds an agent id whose containers count from now on (e.g. an agent started later). */
  watchAgent(agentId: string): void {
    this.agentIds.add(agentId);
  }

  private add(line: string): void {
    let raw: { Action?: string; Actor?: { ID?: string; Attributes?: Record<string, string> }; timeNano?: number };
    try {
      raw = JSON.parse(line);
    } catch {
      return;
    }
    const action = (raw.Action ?? '').split(':')[0];
    const attrs = raw.Actor?.Attributes ?? {};
    const agentId = attrs[CONTAINER_LABELS.agent] ?? '';
    if (!ACTIONS.has(action) || !this.agentIds.has(agentId)) return;
    this.events.push({
      action: action as ContainerEvent['action'],
      containerId: raw.Actor?.ID ?? '',
      allocationId: attrs[CONTAINER_LABELS.allocation] ?? '',
      taskId: attrs[CONTAINER_LABELS.task] ?? '',
      agentId,
      exitCode: action === 'die' && attrs.exitCode !== undefined ? Number(attrs.exitCode) : null,
      signal: action === 'kill' ? attrs.signal ?? '' : '',
      timeNano: BigInt(raw.timeNano ?? 0),
    });
  }

  /** Events of one action, in order. */
  of(action: ContainerEvent['action']): ContainerEvent[] {
    return this.events.filter((e) => e.action === action);
  }

  /** Every container seen, with counts. */
  containers(): ContainerHistory[] {
    const byId = new Map<string, ContainerHistory>();
    for (const e of this.events) {
      let h = byId.get(e.containerId);
      if (!h) {
        h = { containerId: e.containerId, allocationId: e.allocationId, taskId: e.taskId, agentId: e.agentId, creates: 0, starts: 0, dies: 0, exitCodes: [] };
        byId.set(e.containerId, h);
      }
      if (e.action === 'create') h.creates++;
      if (e.action === 'start') h.starts++;
      if (e.action === 'die') {
        h.dies++;
        h.exitCodes.push(e.exitCode ?? -1);
      }
    }
    return [...byId.values()];
  }

  /** Containers created but not dead yet. */
  running(): ContainerHistory[] {
    return this.containers().filter((c) => c.starts > c.dies);
  }

  /** Stops listening. */
  stop(): void {
    this.stream.destroy();
  }
}
