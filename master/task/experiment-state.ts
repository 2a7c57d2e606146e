// An experiment's state is derived from its trials, never stored independently.
import type { ExperimentState, TrialState } from '../store/store';
import { isTerminal } from './trial-machine';

/** Derives the experiment state from its trials' states and whether a kill was requested. */
export function deriveExperimentState(trialStates: TrialState[], killRequested: boolean): ExperimentState {
  if (trialStates.some((s) => !isTerminal(s))) return killRequested ? 'STOPPING_CANCELED' : 'ACTIVE';
  if (killRequested) return 'CANCELED';
  if (trialStates.some((s) => s === 'ERROR')) return 'ERROR';
  if (trialStates.length > 0 && trialStates.every((s) => s === 'CANCELED')) return 'CANCELED';
  return 'COMPLETED';
}

/** Whether an experiment state is final. */
export function isExperimentTerminal(state: ExperimentState): boolean {
  return state === 'COMPLETED' || state === 'CANCELED' || state === 'ERROR';
}
