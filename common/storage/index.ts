// Opens the configured checkpoint storage. The config shape is what an experiment's
// `checkpoint_storage` holds; it is validated with zod and every problem is reported at once.
import * as path from 'node:path';
import { z } from 'zod';
import { formatIssues, problemsError } from '../config/pipeline';
import { SharedFsStorage } from './shared-fs';
import { S3Storage, type S3StorageOptions } from './s3';
import type { CheckpointStorage } from './storage';

export * from './storage';
export { validateKey, validatePrefix, safeJoin } from './paths';
export { ObjectNotFoundError, isObjectNotFound, redact } from './errors';
export { SharedFsStorage } from './shared-fs';
export { S3Storage } from './s3';

const bucketName = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Schema of `checkpoint_storage`. */
export const checkpointStorageSchema = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('shared_fs'),
      /** Absolute directory on the host. */
      host_path: z.string().min(1).refine((p) => path.isAbsolute(p), 'must be an absolute path'),
    })
    .strict(),
  z
    .object({
      type: z.literal('s3'),
      bucket: z.string().regex(bucketName, 'must be a valid S3 bucket name (3-63 characters: a-z, 0-9, ".", "-")'),
      /** Key prefix (default: none). */
      prefix: z
        .string()
        .refine((p) => !/(^|\/)\.\.?(\/|$)|\\|\0|\/\/|^\//.test(p), "must be relative, with no '.', '..' or empty segments and no backslashes")
        .optional(),
      /** Region (default: the SDK's chain). */
      region: z.string().min(1).optional(),
      /** S3-compatible endpoint (default: AWS). */
      endpoint_url: z.string().url().optional(),
      /** Path-style requests (default false). */
      force_path_style: z.boolean().optional(),
    })
    .strict(),
]);

/** A validated `checkpoint_storage` config. */
export type CheckpointStorageConfig = z.infer<typeof checkpointStorageSchema>;

/** Extras the config does not carry (tests pass credentials; production uses the SDK chain). */
export type CheckpointStorageOverrides = Pick<S3StorageOptions, 'credentials' | 'maxAttempts' | 'listPageSize'>;

/** Validates `config` (a DetError lists every problem) and opens the storage it names. */
export function openCheckpointStorage(config: unknown, overrides: CheckpointStorageOverrides = {}): CheckpointStorage {
  const parsed = checkpointStorageSchema.safeParse(config);
  if (!parsed.success) {
    const lines = formatIssues(parsed.error, 'checkpoint_storage').flatMap((l) => l.split('\n'));
    throw problemsError('DET_ERR_EXPERIMENT_CONFIG_INVALID', 'invalid checkpoint_storage', lines);
  }
  const c = parsed.data;
  if (c.type === 'shared_fs') return new SharedFsStorage({ hostPath: c.host_path });
  return new S3Storage({
    bucket: c.bucket,
    prefix: c.prefix,
    region: c.region,
    endpointUrl: c.endpoint_url,
    forcePathStyle: c.force_path_style,
    ...overrides,
  });
}
