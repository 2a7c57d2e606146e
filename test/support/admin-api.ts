// Small helpers over the admin API client for in-process master tests.
import { strict as assert } from 'node:assert';
import type * as grpc from '@grpc/grpc-js';
import type { DeterminedClient } from '../../common/proto-gen/determined/api/v1/Determined';
import type { Experiment__Output } from '../../common/proto-gen/determined/api/v1/Experiment';
import type { Trial__Output } from '../../common/proto-gen/determined/api/v1/Trial';
import { waitFor } from './env';

/** Anything holding an admin API client. */
export interface HasApi {
  api: DeterminedClient;
}

/** Waits used by the in-process tests. */
export const API_WAIT = { timeoutMs: 5_000, intervalMs: 20 };

/** A unary call as a promise. */
export function rpc<Res>(fn: (cb: grpc.requestCallback<Res>) => void): Promise<Res> {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res!))));
}

/** GetTrial. */
export const getTrial = async (m: HasApi, trialId: number) => (await rpc<{ trial: Trial__Output | null }>((cb) => m.api.GetTrial({ trialId }, cb))).trial!;

/** CreateExperiment of a single-trial config. */
export async function createExperiment(m: HasApi, yaml: string): Promise<{ experimentId: number; trial: Trial__Output }> {
  const res = await rpc<{ experiment: Experiment__Output | null; trials: Trial__Output[] }>((cb) => m.api.CreateExperiment({ configYaml: yaml }, cb));
  assert.equal(res.trials.length, 1, 'the single searcher makes one trial');
  return { experimentId: res.experiment!.id, trial: res.trials[0] };
}

/** Waits until the trial is in `state` (and `also` holds); returns it. */
export async function waitTrial(m: HasApi, trialId: number, state: string, also: (t: Trial__Output) => boolean = () => true): Promise<Trial__Output> {
  let last: Trial__Output | undefined;
  await waitFor(async () => {
    last = await getTrial(m, trialId);
    return last.state === `TRIAL_STATE_${state}` && also(last);
  }, { ...API_WAIT, what: `trial ${trialId} to be ${state} (last seen: ${JSON.stringify(last && { state: last.state, restarts: last.restarts, agent: last.agentId, message: last.message })})` });
  return last!;
}

/** Fields of a one-trial experiment config for the in-process suites. */
export interface SingleTrialConfig {
  name: string;
  /** Shell command the trial runs. */
  command: string;
  slots: number;
  maxRestarts?: number;
  killGrace?: string;
  /** Constant hyperparameters, as YAML lines (`name: value`). */
  hparams?: string[];
}

/** Experiment YAML with one trial (single searcher). */
export function singleTrialYaml(c: SingleTrialConfig): string {
  return [
    `name: ${c.name}`,
    'image: det-test/busybox:latest',
    `entrypoint: ["sh", "-c", ${JSON.stringify(c.command)}]`,
    `max_restarts: ${c.maxRestarts ?? 0}`,
    `kill_grace_period: ${c.killGrace ?? '3s'}`,
    'resources:',
    `  slots_per_trial: ${c.slots}`,
    'hyperparameters:',
    ...(c.hparams ?? ['lr: 0.01']).map((h) => `  ${h}`),
    '',
  ].join('\n');
}
