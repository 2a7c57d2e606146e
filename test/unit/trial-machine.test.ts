import { strict as assert } from 'node:assert';
import { transition, IllegalTransitionError, type TrialMachine, type TrialEvent } from '../../master/task/trial-machine';
import { deriveExperimentState } from '../../master/task/experiment-state';
import type { ExitInfo } from '../../common/types';

const base: TrialMachine = { state: 'QUEUED', restarts: 0, maxRestarts: 2, killRequested: false, exitCode: null, message: '' };
const ok: ExitInfo = { exitCode: 0, failureKind: 'NONE', message: '' };
const bad: ExitInfo = { exitCode: 3, failureKind: 'EXIT_NONZERO', message: 'exited with code 3' };
const pullFail: ExitInfo = { exitCode: -1, failureKind: 'PULL_FAILED', message: 'manifest unknown' };

describe('trial state machine', () => {
  const table: { name: string; from: Partial<TrialMachine>; event: TrialEvent; state: string; effects: string[]; restarts?: number; ignored?: boolean; message?: RegExp }[] = [
    { name: 'queued is assigned', from: {}, event: { type: 'assigned' }, state: 'ASSIGNED', effects: ['start-container'] },
    { name: 'assigned pulls', from: { state: 'ASSIGNED' }, event: { type: 'progress', state: 'PULLING' }, state: 'PULLING', effects: [] },
    { name: 'assigned may skip pulling', from: { state: 'ASSIGNED' }, event: { type: 'progress', state: 'STARTING' }, state: 'STARTING', effects: [] },
    { name: 'starting runs', from: { state: 'STARTING' }, event: { type: 'progress', state: 'RUNNING' }, state: 'RUNNING', effects: [] },
    { name: 'stale backward progress is ignored', from: { state: 'RUNNING' }, event: { type: 'progress', state: 'PULLING' }, state: 'RUNNING', effects: [], ignored: true },
    { name: 'progress while queued is ignored', from: { state: 'QUEUED' }, event: { type: 'progress', state: 'RUNNING' }, state: 'QUEUED', effects: [], ignored: true },
    { name: 'exit 0 completes', from: { state: 'RUNNING' }, event: { type: 'exited', exit: ok }, state: 'COMPLETED', effects: ['release-slots'] },
    { name: 'failure restarts', from: { state: 'RUNNING' }, event: { type: 'exited', exit: bad }, state: 'QUEUED', effects: ['release-slots', 'enqueue'], restarts: 1, message: /code 3; restarting \(restart 1 of 2\)/ },
    { name: 'failure with restarts used errors', from: { state: 'RUNNING', restarts: 2 }, event: { type: 'exited', exit: bad }, state: 'ERROR', effects: ['release-slots'], restarts: 2, message: /code 3 \(after 2 restarts\)/ },
    { name: 'pull failure restarts too', from: { state: 'PULLING' }, event: { type: 'exited', exit: pullFail }, state: 'QUEUED', effects: ['release-slots', 'enqueue'], restarts: 1, message: /image pull failed: manifest unknown/ },
    { name: 'max_restarts 0 errors at once', from: { state: 'RUNNING', maxRestarts: 0 }, event: { type: 'exited', exit: bad }, state: 'ERROR', effects: ['release-slots'], message: /max_restarts is 0/ },
    { name: 'lost allocation restarts', from: { state: 'RUNNING' }, event: { type: 'lost', reason: 'agent a1 lost' }, state: 'QUEUED', effects: ['release-slots', 'enqueue'], restarts: 1 },
    { name: 'a loss that is not the trial’s fault requeues without counting', from: { state: 'RUNNING', restarts: 2 }, event: { type: 'lost', reason: 'spot instance reclaimed', countsAsRestart: false }, state: 'QUEUED', effects: ['release-slots', 'enqueue'], restarts: 2, message: /spot instance reclaimed; requeued/ },
    { name: 'kill while queued cancels', from: {}, event: { type: 'kill' }, state: 'CANCELED', effects: ['dequeue'] },
    { name: 'kill while running asks the container to stop', from: { state: 'RUNNING' }, event: { type: 'kill' }, state: 'RUNNING', effects: ['kill-container'] },
    { name: 'second kill is harmless', from: { state: 'RUNNING', killRequested: true }, event: { type: 'kill' }, state: 'RUNNING', effects: [], ignored: true },
    { name: 'exit after kill cancels', from: { state: 'RUNNING', killRequested: true }, event: { type: 'exited', exit: bad }, state: 'CANCELED', effects: ['release-slots'] },
    { name: 'exit 0 after kill cancels', from: { state: 'RUNNING', killRequested: true }, event: { type: 'exited', exit: ok }, state: 'CANCELED', effects: ['release-slots'] },
    { name: 'terminal ignores exits', from: { state: 'COMPLETED' }, event: { type: 'exited', exit: bad }, state: 'COMPLETED', effects: [], ignored: true },
    { name: 'terminal ignores kill', from: { state: 'ERROR' }, event: { type: 'kill' }, state: 'ERROR', effects: [], ignored: true },
  ];
  for (const row of table) {
    it(row.name, () => {
      const r = transition({ ...base, ...row.from }, row.event);
      assert.equal(r.next.state, row.state);
      assert.deepEqual(r.effects.map((e) => e.type), row.effects);
      assert.equal(r.ignored !== undefined, row.ignored ?? false);
      if (row.restarts !== undefined) assert.equal(r.next.restarts, row.restarts);
      if (row.message) assert.match(r.next.message, row.message);
    });
  }
  it('assigning a running trial is a bug and throws', () => {
    assert.throws(() => transition({ ...base, state: 'RUNNING' }, { type: 'assigned' }), IllegalTransitionError);
  });
  it('keeps the exit code of the failed attempt', () => {
    assert.equal(transition({ ...base, state: 'RUNNING', maxRestarts: 0 }, { type: 'exited', exit: bad }).next.exitCode, 3);
  });
});

describe('experiment state', () => {
  const rows: [string[], boolean, string][] = [
    [['QUEUED', 'RUNNING'], false, 'ACTIVE'],
    [['COMPLETED', 'RUNNING'], true, 'STOPPING_CANCELED'],
    [['COMPLETED', 'COMPLETED'], false, 'COMPLETED'],
    [['COMPLETED', 'ERROR'], false, 'ERROR'],
    [['COMPLETED', 'CANCELED'], true, 'CANCELED'],
    [['CANCELED'], false, 'CANCELED'],
  ];
  for (const [states, kill, want] of rows) {
    it(`${states.join('+')}${kill ? ' (killed)' : ''} -> ${want}`, () => {
      assert.equal(deriveExperimentState(states as never, kill), want);
    });
  }
});
