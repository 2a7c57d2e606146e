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

/** Environment variable naming the writable checkpoint directory inside the container. */
export const CHECKPOINT_DIR_ENV = 'DET_CHECKPOINT_DIR';
/** Environment variable naming the latest complete checkpoint when a trial is restarted. */
export const LATEST_CHECKPOINT_ENV = 'DET_LATEST_CHECKPOINT';
/** Prefix of names reserved for the contract. */
export const RESERVED_PREFIX = '.det-';
/** Empty marker file written last: the checkpoint is complete. */
export const COMPLETE_MARKER = '.det-complete';
/** Optional user metadata (a JSON object), written before the marker. */
export const METADATA_FILE = '.det-metadata.json';
/** Longest checkpoint directory name. */
export const MAX_CHECKPOINT_NAME_LENGTH = 128;
/** Largest metadata file. */
export const MAX_METADATA_BYTES = 64 * 1024;

const NAME_CHARS = /^[A-Za-z0-9._-]+$/;

/** Why `name` is not a valid checkpoint directory name, or undefined when it is. */
export function checkpointNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'the name is empty';
  if (name.length > MAX_CHECKPOINT_NAME_LENGTH) return `the name is longer than ${MAX_CHECKPOINT_NAME_LENGTH} characters`;
  if (!NAME_CHARS.test(name)) return "the name may only contain letters, digits, '.', '_' and '-'";
  if (name === '.' || name === '..') return `'${name}' is not a directory name`;
  if (isReservedName(name)) return `names starting with '${RESERVED_PREFIX}' are reserved`;
  return undefined;
}

/** Whether `name` is reserved by the contract. */
export function isReservedName(name: string): boolean {
  return name.startsWith(RESERVED_PREFIX);
}
