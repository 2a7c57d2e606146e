// What every command gets: output streams, the environment, the Ctrl-C
// signal, and a lazily opened client for the master named by the global flags.
import { MasterClient, resolveConnection, type ClientTimeouts, type ConnectionFlags } from './client';

/** Where det reads and writes; tests pass their own. */
export interface CliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Environment for DET_MASTER and friends (default process.env). */
  env?: Record<string, string | undefined>;
  /** Aborted on Ctrl-C (default: never). */
  signal?: AbortSignal;
  /** Clock for ages and uptimes (default Date.now). */
  now?: () => number;
  /** Call and connect timeouts (default 15 s and 5 s). */
  timeouts?: Partial<ClientTimeouts>;
  /** Asks a yes/no question and resolves to the answer; absent when nobody can answer (stdin is not a terminal). */
  confirm?: (question: string) => Promise<boolean>;
  /** Where progress bars are drawn; absent when stderr is not a terminal (then commands print a summary line). */
  progressStream?: NodeJS.WritableStream;
}

/** Per-invocation state shared by the commands. */
export class Context {
  /** Global flags, set by main before an action runs. */
  flags: ConnectionFlags = {};
  /** Exit code of a command that finished without throwing. */
  exitCode = 0;
  readonly env: Record<string, string | undefined>;
  readonly signal: AbortSignal;
  private opened?: MasterClient;

  constructor(private readonly io: CliIO) {
    this.env = io.env ?? process.env;
    this.signal = io.signal ?? new AbortController().signal;
  }

  /** Prints one line (or several) on stdout. */
  out(text = ''): void {
    this.io.stdout(text.endsWith('\n') ? text : text + '\n');
  }

  /** Prints one line (or several) on stderr. */
  err(text: string): void {
    this.io.stderr(text.endsWith('\n') ? text : text + '\n');
  }

  /** Prints a value as indented JSON. */
  json(value: unknown): void {
    this.out(JSON.stringify(value, null, 2));
  }

  /** Asks a yes/no question; undefined when nobody can answer (not a terminal). */
  get confirm(): ((question: string) => Promise<boolean>) | undefined {
    return this.io.confirm;
  }

  /** The terminal stream for progress bars; undefined when stderr is not a terminal. */
  get progressStream(): NodeJS.WritableStream | undefined {
    return this.io.progressStream;
  }

  /** The current time in epoch ms. */
  now(): number {
    return (this.io.now ?? Date.now)();
  }

  /** The client for the master, opened on first use. */
  client(): MasterClient {
    this.opened ??= new MasterClient(resolveConnection(this.flags, this.env), this.signal, this.io.timeouts);
    return this.opened;
  }

  /** Closes the client if one was opened. */
  close(): void {
    this.opened?.close();
    this.opened = undefined;
  }
}
