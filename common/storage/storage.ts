// The checkpoint storage port: one small interface with two adapters, a directory on the host
// (shared_fs, the default) and S3. Keys are relative, '/'-separated and live under the
// backend's configured root (directory or bucket prefix); paths.ts says which keys are legal.
import type { Readable } from 'node:stream';
import type { FileSource } from './file-source';

export type { FileSource } from './file-source';

/** What put() stores: a Buffer, a stream (sent once), or an open file (re-readable, see file-source.ts). */
export type PutBody = Readable | Buffer | FileSource;

/** Which adapter a storage is. */
export type CheckpointStorageKind = 'shared_fs' | 's3';

/** Options for one put. */
export interface PutOptions {
  /** Size in bytes when known (lets S3 use a single PUT for streams up to its multipart threshold); a Buffer's or FileSource's own size otherwise. */
  size?: number;
  /**
   * Hex sha256 of the content, when the caller knows it (a checkpoint manifest's). S3 signs a
   * single PUT with it (x-amz-content-sha256), so the body is not hashed again and S3 rejects
   * content that differs; S3-compatible servers may not check it (s3rver does not), so callers
   * keep their own checks. Multipart uploads and shared_fs ignore it.
   */
  sha256?: string;
  /** Content-Type stored with the object (S3 only). */
  contentType?: string;
}

/** What a put stored. */
export interface PutResult {
  /** The object's ETag (S3; quotes removed), when the backend has one. */
  etag?: string;
}

/** Size and ETag of a stored object. */
export interface ObjectInfo {
  /** Size in bytes. */
  size: number;
  /** S3: the ETag without quotes; shared_fs: "<mtime ms>-<size>" (changes when the file does). */
  etag: string;
}

/** One listed object: its key relative to the storage root plus size and ETag. */
export interface ListedObject extends ObjectInfo {
  /** Key relative to the storage root. */
  key: string;
}

/** Where checkpoints are stored. */
export interface CheckpointStorage {
  /** Which adapter this is. */
  readonly kind: CheckpointStorageKind;
  /** Writes an object; the new content becomes visible all at once (never half-written). */
  put(key: string, source: PutBody, opts?: PutOptions, signal?: AbortSignal): Promise<PutResult>;
  /** Reads an object; throws a DetError naming the key when it does not exist. */
  get(key: string, signal?: AbortSignal): Promise<Readable>;
  /** Size and ETag of an object, or undefined when there is none. */
  head(key: string, signal?: AbortSignal): Promise<ObjectInfo | undefined>;
  /** Every object whose key starts with `prefix` (a plain string prefix, '' for all), in key order. */
  list(prefix: string, signal?: AbortSignal): AsyncIterable<ListedObject>;
  /** Deletes objects; idempotent: keys that do not exist count as deleted. */
  delete(keys: readonly string[], signal?: AbortSignal): Promise<void>;
  /** Where a key is, for display: s3://bucket/prefix/key or an absolute file path. */
  location(key: string): string;
}
