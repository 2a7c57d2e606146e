// The naming rules of checkpoints, shared by every process that reads or writes one: the agent
// (watcher, uploader), the CLI (download) and the master (deletion). The container side of the
// contract (DET_CHECKPOINT_DIR, the marker written last) is described in
// agent/checkpoints/contract.ts.
//
// Checkpoint directory names: letters, digits, '.', '_', '-', at most 128 characters, not '.' or
// '..', and not starting with '.det-'. Names starting with '.det-' are reserved: at the top of a
// checkpoint directory they are not part of the checkpoint's files (the marker, the metadata, the
// stored manifest), so no user file can collide with them.

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
