// Messages from the agent to the master, in order. While the stream is down
// they wait here (nothing is dropped); a full stream applies backpressure to
// the log readers feeding it.
import type { AgentToMaster } from '../../common/types';

/** The part of a gRPC stream the outbox writes to. */
export interface OutboxStream {
  /** Returns false when the stream's buffer is full. */
  write(msg: AgentToMaster): boolean;
  /** Resolves when the stream can take more. */
  drained(): Promise<void>;
}

interface Entry {
  msg: AgentToMaster;
  delivered: () => void;
}

/** Ordered, backpressured queue of outgoing messages. */
export class Outbox {
  private readonly queue: Entry[] = [];
  private stream: OutboxStream | undefined;
  private pumping = false;

  /** Number of messages waiting. */
  get pending(): number {
    return this.queue.length;
  }

  /** Starts writing to a (newly registered) stream. */
  attach(stream: OutboxStream): void {
    this.stream = stream;
    void this.pump();
  }

  /** Stops writing; queued messages wait for the next stream. */
  detach(): void {
    this.stream = undefined;
  }

  /** Queues a message; resolves once it has been handed to a stream. */
  send(msg: AgentToMaster): Promise<void> {
    return new Promise((delivered) => {
      this.queue.push({ msg, delivered });
      void this.pump();
    });
  }

  /** Resolves once every queued message has been handed to a stream, or after `timeoutMs`. */
  async flushed(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  /** Writes directly when connected (heartbeats); dropped otherwise. */
  sendIfConnected(msg: AgentToMaster): void {
    if (this.stream && this.queue.length === 0) this.stream.write(msg);
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.stream && this.queue.length > 0) {
        const stream = this.stream;
        const entry = this.queue.shift()!;
        const ok = stream.write(entry.msg);
        entry.delivered();
        if (!ok) await stream.drained();
      }
    } finally {
      this.pumping = false;
    }
  }
}
