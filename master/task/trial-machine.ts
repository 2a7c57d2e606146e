// The trial state machine: a pure function from (state, event) to
// (next state, effects). The cluster applies the effects; this file decides.
//
//   QUEUED -> ASSIGNED -> PULLING -> STARTING -> RUNNING -> COMPLETED | ERROR | CANCELED
//
// A failed attempt (non-zero exit, pull/start failure, lost allocation) goes
// back to QUEUED while restarts < maxRestarts, else to ERROR. An allocation
// lost through no fault of the trial (spot reclaim) is requeued without
// counting a restart. A kill cancels a
// queued trial at once; an active one is told to stop and becomes CANCELED
// when its container is gone.
import type { ExitInfo } from '../../common/types';
import type { TrialState } from '../store/store';

/** The part of a trial the machine decides over. */
export interface TrialMachine {
  state: TrialState;
  restarts: number;
  maxRestarts: number;
  killRequested: boolean;
  exitCode: number | null;
  message: string;
}

/** Something that happened to a trial. */
export type TrialEvent =
  | { type: 'assigned' }
  | { type: 'progress'; state: 'PULLING' | 'STARTING' | 'RUNNING' }
  | { type: 'exited'; exit: ExitInfo }
  | { type: 'lost'; reason: string; countsAsRestart?: boolean }
  | { type: 'kill' };

/** What the cluster must do as a result. */
export type TrialEffect =
  | { type: 'start-container' }
  | { type: 'kill-container' }
  | { type: 'release-slots' }
  | { type: 'enqueue' }
  | { type: 'dequeue' };

/** Result of a transition; `ignored` explains a stale event that changed nothing. */
export interface Transition {
  next: TrialMachine;
  effects: TrialEffect[];
  ignored?: string;
}

/** Thrown for events that can never be valid in the current state (a bug, not a race). */
export class IllegalTransitionError extends Error {
  constructor(state: TrialState, event: TrialEvent['type']) {
    super(`illegal trial transition: ${event} in state ${state}`);
    this.name = 'IllegalTransitionError';
  }
}

const ACTIVE_ORDER: Record<TrialState, number> = { QUEUED: 0, ASSIGNED: 1, PULLING: 2, STARTING: 3, RUNNING: 4, COMPLETED: 5, ERROR: 5, CANCELED: 5 };

/** Whether a state is final. */
export function isTerminal(state: TrialState): boolean {
  return state === 'COMPLETED' || state === 'ERROR' || state === 'CANCELED';
}

/** Whether a trial holds an allocation (a container may exist) in this state. */
export function holdsAllocation(state: TrialState): boolean {
  return state === 'ASSIGNED' || state === 'PULLING' || state === 'STARTING' || state === 'RUNNING';
}

/** Applies one event. Pure. */
export function transition(t: TrialMachine, event: TrialEvent): Transition {
  const same = (why: string): Transition => ({ next: t, effects: [], ignored: why });
  if (isTerminal(t.state)) return same(`trial is already ${t.state}`);

  switch (event.type) {
    case 'assigned':
      if (t.state !== 'QUEUED') throw new IllegalTransitionError(t.state, event.type);
      if (t.killRequested) return { next: { ...t, state: 'CANCELED' }, effects: [{ type: 'release-slots' }] };
      return { next: { ...t, state: 'ASSIGNED', message: '' }, effects: [{ type: 'start-container' }] };

    case 'progress':
      if (!holdsAllocation(t.state)) return same(`no allocation in state ${t.state}`);
      if (ACTIVE_ORDER[event.state] <= ACTIVE_ORDER[t.state]) return same(`already ${t.state}`);
      return { next: { ...t, state: event.state }, effects: [] };

    case 'exited':
    case 'lost': {
      if (!holdsAllocation(t.state)) return same(`no allocation in state ${t.state}`);
      const exitCode = event.type === 'exited' ? event.exit.exitCode : t.exitCode;
      if (t.killRequested) return { next: { ...t, state: 'CANCELED', exitCode, message: 'killed by user' }, effects: [{ type: 'release-slots' }] };
      if (event.type === 'exited' && event.exit.failureKind === 'NONE') {
        return { next: { ...t, state: 'COMPLETED', exitCode, message: '' }, effects: [{ type: 'release-slots' }] };
      }
      const why = event.type === 'exited' ? describeExit(event.exit) : event.reason;
      if (event.type === 'lost' && event.countsAsRestart === false) {
        // Not the trial's fault (e.g. its spot instance is being reclaimed): requeue, restarts untouched.
        return { next: { ...t, state: 'QUEUED', exitCode, message: `${why}; requeued` }, effects: [{ type: 'release-slots' }, { type: 'enqueue' }] };
      }
      if (t.restarts < t.maxRestarts) {
        const restarts = t.restarts + 1;
        return {
          next: { ...t, state: 'QUEUED', restarts, exitCode, message: `${why}; restarting (restart ${restarts} of ${t.maxRestarts})` },
          effects: [{ type: 'release-slots' }, { type: 'enqueue' }],
        };
      }
      const used = t.maxRestarts === 0 ? 'max_restarts is 0' : `after ${t.restarts} restart${t.restarts === 1 ? '' : 's'}`;
      return { next: { ...t, state: 'ERROR', exitCode, message: `${why} (${used})` }, effects: [{ type: 'release-slots' }] };
    }

    case 'kill':
      if (t.killRequested) return same('kill already requested');
      if (t.state === 'QUEUED') return { next: { ...t, state: 'CANCELED', killRequested: true, message: 'killed by user' }, effects: [{ type: 'dequeue' }] };
      return { next: { ...t, killRequested: true }, effects: [{ type: 'kill-container' }] };
  }
}

/** Human text for a container exit. */
export function describeExit(exit: ExitInfo): string {
  switch (exit.failureKind) {
    case 'NONE':
      return 'exited with code 0';
    case 'EXIT_NONZERO':
      return `container exited with code ${exit.exitCode}${exit.message && !exit.message.includes('exited with code') ? `: ${exit.message}` : ''}`;
    case 'PULL_FAILED':
      return /pull/i.test(exit.message) ? exit.message : `image pull failed: ${exit.message}`;
    case 'START_FAILED':
      return `container failed to start: ${exit.message}`;
    case 'KILLED':
      return `container was killed${exit.message ? `: ${exit.message}` : ''}`;
    case 'AGENT_ERROR':
      return `agent error: ${exit.message}`;
  }
}
