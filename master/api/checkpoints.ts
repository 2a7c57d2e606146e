// The checkpoint part of the admin API: the registry (ListCheckpoints, GetCheckpoint) and
// DeleteExperiment, which removes an experiment's checkpoints from storage before its metadata.
import { DetError } from '../../common/errors';
import type { DeterminedHandlers } from '../../common/proto-gen/determined/api/v1/Determined';
import type { ExperimentDeleter } from '../checkpoints/deletion';
import type { CheckpointFilter, Store } from '../store/store';
import { checkpointToProto } from './convert';
import { unary } from './unary';

/** The handlers of the checkpoint RPCs. */
export type CheckpointHandlers = Pick<DeterminedHandlers, 'ListCheckpoints' | 'GetCheckpoint' | 'DeleteExperiment'>;

/** Validates ListCheckpoints' selection (ids exist and agree) and returns the store filter; 0 means "any". */
export async function checkpointFilter(store: Store, experimentId: number, trialId: number): Promise<CheckpointFilter> {
  if (experimentId < 0 || trialId < 0) throw new DetError('DET_ERR_INVALID_ARGUMENT', 'experiment_id and trial_id must be positive ids (or 0 for any)');
  const filter: CheckpointFilter = {};
  if (experimentId > 0) {
    if (!(await store.getExperiment(experimentId))) throw new DetError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${experimentId} not found`);
    filter.experimentId = experimentId;
  }
  if (trialId > 0) {
    const trial = await store.getTrial(trialId);
    if (!trial) throw new DetError('DET_ERR_TRIAL_NOT_FOUND', `trial ${trialId} not found`);
    if (experimentId > 0 && trial.experimentId !== experimentId) {
      throw new DetError('DET_ERR_INVALID_ARGUMENT', `trial ${trialId} belongs to experiment ${trial.experimentId}, not ${experimentId}`);
    }
    filter.trialId = trialId;
  }
  return filter;
}

/** Builds the checkpoint RPCs over the store and the deleter. */
export function checkpointHandlers(store: Store, deleter: ExperimentDeleter): CheckpointHandlers {
  return {
    ListCheckpoints: unary(async (req) => {
      const filter = await checkpointFilter(store, req.experimentId, req.trialId);
      return { checkpoints: (await store.listCheckpoints(filter)).map(checkpointToProto) };
    }),
    GetCheckpoint: unary(async (req) => {
      if (!req.uuid) throw new DetError('DET_ERR_INVALID_ARGUMENT', 'a checkpoint uuid is required');
      const c = await store.getCheckpoint(req.uuid);
      if (!c) throw new DetError('DET_ERR_CHECKPOINT_NOT_FOUND', `checkpoint ${req.uuid} not found (det checkpoint list --experiment <id> shows the uuids)`);
      return { checkpoint: checkpointToProto(c) };
    }),
    // Waits for the whole deletion: deleting objects is fast next to an RPC deadline, and the caller learns the outcome.
    DeleteExperiment: unary(async (req) => deleter.delete(req.experimentId)),
  };
}
