// A TCP proxy on 127.0.0.1 that sits between a client (e.g. our S3Storage) and a real server
// (s3rver) and injects network faults on demand: reset a connection after N bytes from the
// client, stall it after N bytes (stop forwarding in both directions and stop reading, so the
// client's writes back up), or refuse connections altogether (stop listening). A reset or stall
// hits the next connections whose client -> server byte count crosses the threshold; counters
// say what was injected so that tests can check a fault really hit.
import * as net from 'node:net';

/** A fault that cuts a connection once `afterBytes` client -> server bytes have passed on it. */
export interface CutFault {
  kind: 'reset' | 'stall';
  afterBytes: number;
}
/** A fault to inject. */
export type ProxyFault = CutFault | { kind: 'refuse' };

/** What the proxy has seen and done. */
export interface ProxyStats {
  /** Connections accepted. */
  connections: number;
  /** Connections reset by a 'reset' fault. */
  resets: number;
  /** Connections stalled by a 'stall' fault. */
  stalls: number;
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
}

/** See the file comment. */
export class TcpProxy {
  readonly stats: ProxyStats = { connections: 0, resets: 0, stalls: 0 };
  private server: net.Server;
  private fault?: CutFault;
  /** How many more connections the current reset/stall fault hits. */
  private faultBudget = 0;
  private readonly pairs = new Set<Pair>();
  private listening = false;

  private constructor(
    private readonly targetPort: number,
    private readonly targetHost: string,
    private portValue: number,
  ) {
    this.server = this.newServer();
  }

  /** Starts a proxy to targetHost:targetPort on 127.0.0.1 and a free port. */
  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetPort, targetHost, 0);
    await proxy.listen();
    return proxy;
  }

  /** The proxy's port on 127.0.0.1. */
  get port(): number {
    return this.portValue;
  }

  /** http://127.0.0.1:<port>, to use as an endpoint. */
  get url(): string {
    return `http://127.0.0.1:${this.portValue}`;
  }

  /**
   * Injects `fault` into the next `times` connections that cross its byte threshold (default:
   * every one until heal()). 'refuse' closes the listener: connections are refused until heal().
   */
  async inject(fault: ProxyFault, times = Infinity): Promise<void> {
    if (fault.kind === 'refuse') {
      this.fault = undefined;
      await this.unlisten();
      return;
    }
    if (!this.listening) await this.listen();
    this.fault = fault;
    this.faultBudget = times;
  }

  /** Forwards faithfully again (connections already stalled stay stalled). */
  async heal(): Promise<void> {
    this.fault = undefined;
    this.faultBudget = 0;
    if (!this.listening) await this.listen();
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    this.fault = undefined;
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
    await this.unlisten();
  }

  private newServer(): net.Server {
    return net.createServer((client) => this.onConnection(client));
  }

  private async listen(): Promise<void> {
    // A closed net.Server cannot listen again: a fresh one takes the same port.
    this.server = this.newServer();
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.portValue, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.portValue = (this.server.address() as net.AddressInfo).port;
    this.listening = true;
  }

  private async unlisten(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    // close() stops accepting at once; its callback waits for open connections, which we do not.
    await new Promise<void>((resolve) => {
      this.server.close(() => undefined);
      setImmediate(resolve);
    });
  }

  private onConnection(client: net.Socket): void {
    this.stats.connections++;
    const upstream = net.connect(this.targetPort, this.targetHost);
    const pair: Pair = { client, upstream };
    this.pairs.add(pair);
    let forwarded = 0;
    let stalled = false;
    const destroyBoth = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    // A stalled connection looks dead to the client: what the server does meanwhile is not passed on.
    client.on('error', destroyBoth);
    client.on('close', destroyBoth);
    upstream.on('error', () => {
      if (!stalled) destroyBoth();
    });
    upstream.on('close', () => {
      if (!stalled) destroyBoth();
    });

    client.on('data', (chunk: Buffer) => {
      if (stalled) return;
      const fault = this.fault;
      if (fault && this.faultBudget > 0 && forwarded + chunk.length > fault.afterBytes) {
        this.faultBudget--;
        const head = chunk.subarray(0, Math.max(0, fault.afterBytes - forwarded));
        forwarded += head.length;
        if (head.length > 0) upstream.write(head);
        if (fault.kind === 'reset') {
          this.stats.resets++;
          client.resetAndDestroy();
          upstream.destroy();
          this.pairs.delete(pair);
        } else {
          this.stats.stalls++;
          stalled = true;
          client.pause();
          upstream.pause();
        }
        return;
      }
      forwarded += chunk.length;
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once('drain', () => {
          if (!stalled) client.resume();
        });
      }
    });
    upstream.on('data', (chunk: Buffer) => {
      if (stalled) return;
      if (!client.write(chunk)) {
        upstream.pause();
        client.once('drain', () => {
          if (!stalled) upstream.resume();
        });
      }
    });
    client.on('end', () => {
      if (!stalled) upstream.end();
    });
    upstream.on('end', () => {
      if (!stalled) client.end();
    });
  }
}
