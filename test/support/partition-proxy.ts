// A TCP proxy on 127.0.0.1 that can cut the network between an agent and the master, for the
// recovery tests. Two kinds of cut:
//   'reset'     every open connection is reset (both peers see it at once, as when a NAT or
//               firewall drops its state); new connections are accepted but held, as a SYN that
//               gets no answer would be, and go through once the cut heals.
//   'blackhole' nothing is delivered in either direction and nobody is told (a pulled cable):
//               bytes wait in the proxy and are delivered when the cut heals, as TCP would
//               retransmit them; the peers only notice through their own timeouts.
// test/support/tcp-proxy.ts injects byte-count faults into single connections; this one cuts the
// whole link at a moment the test chooses.
import * as net from 'node:net';

/** How the link is cut. */
export type CutMode = 'reset' | 'blackhole';

/** What the proxy has seen and done. */
export interface PartitionStats {
  /** Connections accepted. */
  connections: number;
  /** Connections reset by a 'reset' cut. */
  resets: number;
  /** Cuts so far. */
  cuts: number;
}

/** One proxied connection: the client side, and the upstream side once it is connected. */
class Link {
  upstream: net.Socket | undefined;
  /** Bytes held while the link is cut (or before upstream exists), per direction. */
  readonly toUpstream: Buffer[] = [];
  readonly toClient: Buffer[] = [];
  closed = false;
  /** A peer closed during a blackhole: passed on when the cut heals, after the held bytes. */
  closePending = false;
  constructor(readonly client: net.Socket) {}
}

/** See the file comment. */
export class PartitionProxy {
  readonly stats: PartitionStats = { connections: 0, resets: 0, cuts: 0 };
  private cutMode: CutMode | undefined;
  private readonly links = new Set<Link>();

  private constructor(
    private readonly server: net.Server,
    private readonly targetPort: number,
    private readonly targetHost: string,
  ) {}

  /** Starts a proxy to targetHost:targetPort on 127.0.0.1 and a free port. */
  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<PartitionProxy> {
    let proxy: PartitionProxy | undefined;
    const server = net.createServer((client) => proxy!.accept(client));
    proxy = new PartitionProxy(server, targetPort, targetHost);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return proxy;
  }

  /** The proxy's port on 127.0.0.1. */
  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Whether the link is cut now. */
  get isCut(): boolean {
    return this.cutMode !== undefined;
  }

  /** Cuts the link (see the file comment). */
  cut(mode: CutMode): void {
    if (this.cutMode) throw new Error(`the link is already cut (${this.cutMode})`);
    this.cutMode = mode;
    this.stats.cuts++;
    if (mode === 'reset') {
      for (const link of [...this.links]) {
        this.stats.resets++;
        this.drop(link, 'reset');
      }
    }
  }

  /** Restores the link: held bytes are delivered and held connections go through. */
  heal(): void {
    if (!this.cutMode) return;
    this.cutMode = undefined;
    for (const link of [...this.links]) {
      if (link.closePending) {
        this.flush(link);
        this.drop(link, 'end');
      } else if (!link.upstream) this.connectUpstream(link);
      else this.flush(link);
    }
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    for (const link of [...this.links]) this.drop(link, 'destroy');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    this.stats.connections++;
    const link = new Link(client);
    this.links.add(link);
    client.on('data', (chunk: Buffer) => {
      if (this.cutMode || !link.upstream || link.toUpstream.length > 0) link.toUpstream.push(chunk);
      else link.upstream.write(chunk);
    });
    client.on('error', () => this.peerClosed(link));
    client.on('close', () => this.peerClosed(link));
    // A connection made during a cut waits for the heal, as an unanswered SYN would.
    if (!this.cutMode) this.connectUpstream(link);
  }

  private connectUpstream(link: Link): void {
    const upstream = net.connect(this.targetPort, this.targetHost);
    link.upstream = upstream;
    upstream.on('connect', () => this.flush(link));
    upstream.on('data', (chunk: Buffer) => {
      if (this.cutMode || link.toClient.length > 0) link.toClient.push(chunk);
      else link.client.write(chunk);
    });
    upstream.on('error', () => this.peerClosed(link));
    upstream.on('close', () => this.peerClosed(link));
  }

  /** During a blackhole the other peer must not learn of a close either: it waits for the heal. */
  private peerClosed(link: Link): void {
    if (this.cutMode === 'blackhole') link.closePending = true;
    else this.drop(link, 'destroy');
  }

  /** Delivers what was held during a cut, in order. */
  private flush(link: Link): void {
    if (this.cutMode || link.closed || !link.upstream || link.upstream.connecting) return;
    for (const chunk of link.toUpstream.splice(0)) if (link.upstream.writable) link.upstream.write(chunk);
    for (const chunk of link.toClient.splice(0)) if (link.client.writable) link.client.write(chunk);
  }

  /** Closes both sides: with a reset, after the written bytes ('end'), or at once. */
  private drop(link: Link, how: 'reset' | 'end' | 'destroy'): void {
    if (link.closed) return;
    link.closed = true;
    this.links.delete(link);
    for (const s of [link.client, link.upstream]) {
      if (!s || s.destroyed) continue;
      if (how === 'reset') s.resetAndDestroy();
      else if (how === 'end') s.end(() => s.destroy());
      else s.destroy();
    }
  }
}
