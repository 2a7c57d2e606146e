// Where a checkpoint lives in checkpoint storage. Keys are relative to the storage root (the
// bucket prefix for s3, host_path for shared_fs):
//
//   <uuid>/<path>               the checkpoint's files, <path> as in its manifest
//   <uuid>/.det-manifest.json   its manifest, written LAST: a checkpoint without one does not exist
//
// Names starting with '.det-' are reserved at the top of a checkpoint, so no user file collides
// with the manifest.
//
// Dedupe: a manifest entry's `key` names the object that holds the file's content. Content that an
// EARLIER checkpoint of the same trial already stored is not uploaded again; the entry's key points
// at the earlier object (e.g. `<uuid0>/model/embeddings.bin`). So a checkpoint may depend on
// objects under another checkpoint's prefix of the same trial. That is safe because only whole
// experiments are ever deleted (every checkpoint of every trial at once, see delete.ts): a single
// checkpoint's objects are never removed while a later checkpoint of its trial still exists.
import { validateKey } from '../storage/paths';
import { DetError, errorMessage } from '../errors';
import { isReservedName } from './contract';

/** File name of a checkpoint's manifest, under its prefix. */
export const MANIFEST_NAME = '.det-manifest.json';

/** Longest checkpoint uuid accepted. */
export const MAX_UUID_LENGTH = 128;

const UUID_CHARS = /^[A-Za-z0-9._-]+$/;

/** Why `uuid` cannot name a checkpoint in storage (it must be one safe key segment), or undefined. */
export function checkpointUuidProblem(uuid: string): string | undefined {
  if (typeof uuid !== 'string' || uuid.length === 0) return 'the uuid is empty';
  if (uuid.length > MAX_UUID_LENGTH) return `the uuid is longer than ${MAX_UUID_LENGTH} characters`;
  if (!UUID_CHARS.test(uuid)) return "the uuid may only contain letters, digits, '.', '_' and '-'";
  if (uuid === '.' || uuid === '..') return `'${uuid}' is not a valid uuid`;
  return undefined;
}

/** The storage key of checkpoint `uuid`'s manifest: `${uuid}/.det-manifest.json`. */
export function manifestKey(uuid: string): string {
  return `${checkUuid(uuid)}/${MANIFEST_NAME}`;
}

/** The key prefix of everything stored for checkpoint `uuid`: `${uuid}/`. */
export function checkpointPrefix(uuid: string): string {
  return `${checkUuid(uuid)}/`;
}

/** The key of the file at manifest path `path` of checkpoint `uuid`. */
export function fileKey(uuid: string, path: string): string {
  return validateKey(`${checkUuid(uuid)}/${path}`);
}

/**
 * Why `key` cannot be a manifest entry's key, or undefined: it must be a valid storage key of the
 * form `<uuid>/<path>` whose path does not start with a reserved name (so it never names a manifest).
 */
export function fileKeyProblem(key: string): string | undefined {
  try {
    validateKey(key);
  } catch (err) {
    return errorMessage(err);
  }
  const slash = key.indexOf('/');
  if (slash < 0) return 'a file key has the form <checkpoint uuid>/<path>';
  const uuidProblem = checkpointUuidProblem(key.slice(0, slash));
  if (uuidProblem) return `its checkpoint uuid is invalid: ${uuidProblem}`;
  const first = key.slice(slash + 1).split('/')[0];
  if (isReservedName(first)) return `'${first}' is reserved at the top of a checkpoint`;
  return undefined;
}

function checkUuid(uuid: string): string {
  const problem = checkpointUuidProblem(uuid);
  if (problem) throw invalidUuid(uuid, problem);
  return uuid;
}

function invalidUuid(uuid: string, problem: string): DetError {
  return new DetError('DET_ERR_INVALID_ARGUMENT', `invalid checkpoint uuid ${JSON.stringify(uuid)}: ${problem}`);
}
