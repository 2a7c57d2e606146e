// The fleet benchmark's work: experiments submitted at a steady rate through the admin API (each
// one trial whose command is `sleep N`, which the simulated agents honour), and a probe that times
// a cheap admin RPC to show how responsive the master stays under load.
import * as grpc from '@grpc/grpc-js';
import { performance } from 'node:perf_hooks';
import { errorMessage } from '../../common/errors';
import { apiProto } from '../../common/proto/load';
import type { DeterminedClient } from '../../common/proto-gen/determined/api/v1/Determined';

/** An admin API client for the master at `address`, ready when this resolves. */
export async function adminClient(address: string): Promise<DeterminedClient> {
  const Determined = apiProto().determined.api.v1.Determined;
  const client = new Determined(address, grpc.credentials.createInsecure());
  await new Promise<void>((resolve, reject) => client.waitForReady(new Date(Date.now() + 10_000), (err) => (err ? reject(err) : resolve())));
  return client;
}

/** Experiment YAML of one trial that "runs" for `taskSeconds` on a simulated agent. */
export function experimentYaml(n: number, taskSeconds: number): string {
  return [`name: fleet-bench-${n}`, 'image: fleet-sim/none:latest', `entrypoint: ["sleep", "${taskSeconds}"]`, 'max_restarts: 0', ''].join('\n');
}

/** Submits one experiment every 1/ratePerS seconds until stopped. */
export class Submitter {
  submitted = 0;
  failed = 0;
  inFlight = 0;
  firstError: string | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: DeterminedClient,
    private readonly ratePerS: number,
    private readonly taskSeconds: number,
  ) {}

  start(): void {
    const periodMs = 1000 / this.ratePerS;
    const t0 = performance.now();
    let n = 0;
    // Paced against the start time, so a slow tick does not lower the rate.
    const tick = () => {
      const due = Math.floor((performance.now() - t0) / periodMs) + 1;
      while (n < due) this.submitOne(n++);
      this.timer = setTimeout(tick, Math.max(1, t0 + n * periodMs - performance.now()));
    };
    tick();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private submitOne(n: number): void {
    this.inFlight++;
    this.client.CreateExperiment({ configYaml: experimentYaml(n, this.taskSeconds) }, { deadline: new Date(Date.now() + 30_000) }, (err) => {
      this.inFlight--;
      if (err) {
        this.failed++;
        this.firstError ??= errorMessage(err);
      } else this.submitted++;
    });
  }
}

/** p50, p99 and max of samples in ms (NaN when there are none). Pure. */
export function latencySummary(samples: readonly number[]): { p50: number; p99: number; max: number; n: number } {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => (s.length ? s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] : NaN);
  return { p50: at(0.5), p99: at(0.99), max: s.length ? s[s.length - 1] : NaN, n: s.length };
}

/** Times GetMaster every `periodMs`; each sample goes to the phase set with phase(). */
export class LatencyProbe {
  private readonly samples = new Map<string, number[]>();
  private current: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  failures = 0;

  constructor(
    private readonly client: DeterminedClient,
    private readonly periodMs = 250,
  ) {}

  start(): void {
    const once = () => {
      const t0 = performance.now();
      const phase = this.current;
      this.client.GetMaster({}, { deadline: new Date(Date.now() + 10_000) }, (err) => {
        if (err) this.failures++;
        else if (phase !== undefined) this.samples.get(phase)!.push(performance.now() - t0);
        if (this.timer !== undefined) this.timer = setTimeout(once, this.periodMs);
      });
    };
    this.timer = setTimeout(once, this.periodMs);
  }

  /** Records the following samples under `name` (undefined: not at all). */
  phase(name: string | undefined): void {
    if (name !== undefined && !this.samples.has(name)) this.samples.set(name, []);
    this.current = name;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** p50, p99 and max of a phase's samples in ms. */
  summary(phase: string): { p50: number; p99: number; max: number; n: number } {
    return latencySummary(this.samples.get(phase) ?? []);
  }
}
