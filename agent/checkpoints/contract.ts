// The checkpoint contract between a trial's container and the agent.
//
// Inside the container, DET_CHECKPOINT_DIR is a writable directory (bind-mounted from the host).
//  1. A trial writes each checkpoint into a NEW subdirectory `<DET_CHECKPOINT_DIR>/<name>/`.
//     <name>: letters, digits, '.', '_', '-', at most 128 characters, not '.' or '..', and not
//     starting with '.det-'.
//  2. Optional user metadata goes into `<name>/.det-metadata.json`: one JSON object, at most 64 KiB,
//     written BEFORE the marker.
//  3. The trial marks the checkpoint complete by writing an empty file `<name>/.det-complete` LAST.
//     After that the trial must not change the directory again.
// A directory without the marker is in progress and is never uploaded. Names starting with '.det-'
// are reserved: at the top of a checkpoint directory they are not part of the checkpoint's files,
// and no checkpoint directory may be named that way.
// Inside a checkpoint: regular files and directories only. A symlink to a regular file inside the
// checkpoint is stored as a copy of its target's content; any other symlink (to a directory, out of
// the checkpoint, dangling) and special files (fifo, socket, device) fail the checkpoint.
// On restart, DET_LATEST_CHECKPOINT points at the latest complete checkpoint of the trial.
//
// The pure naming rules live in common/checkpoints/contract.ts (the CLI and the master need them
// too) and are re-exported here.

export {
  RESERVED_PREFIX,
  COMPLETE_MARKER,
  METADATA_FILE,
  MAX_CHECKPOINT_NAME_LENGTH,
  MAX_METADATA_BYTES,
  checkpointNameProblem,
  isReservedName,
} from '../../common/checkpoints/contract';

/** Environment variable naming the writable checkpoint directory inside the container. */
export const CHECKPOINT_DIR_ENV = 'DET_CHECKPOINT_DIR';
/** Environment variable naming the latest complete checkpoint when a trial is restarted. */
export const LATEST_CHECKPOINT_ENV = 'DET_LATEST_CHECKPOINT';
