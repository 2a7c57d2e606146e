// s3://bucket/prefix/ URLs as experiment configs give them (data inputs). The prefix names a
// "folder": the objects under `<prefix>/`. Pure and dependency-free apart from the error type, so
// the master's config validation and the agent share one parser.
import { DetError } from '../errors';

/** A parsed s3:// URL. */
export interface S3Url {
  bucket: string;
  /** Key prefix without leading or trailing '/'; '' for the whole bucket. */
  prefix: string;
}

// Same rule as checkpoint_storage.bucket (common/storage/index.ts).
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const SCHEME = 's3://';
const MAX_PREFIX_BYTES = 1024;

function invalid(url: string, why: string): DetError {
  return new DetError('DET_ERR_INVALID_ARGUMENT', `invalid S3 URL ${JSON.stringify(url)}: ${why}`);
}

/**
 * Parses `s3://bucket/prefix/` ("s3://b" and "s3://b/" name the whole bucket; the trailing '/' is
 * optional). Throws a DET_ERR_INVALID_ARGUMENT DetError naming the URL when it is malformed.
 */
export function parseS3Url(url: string): S3Url {
  const problem = s3UrlProblem(url);
  if (problem !== undefined) throw invalid(String(url), problem);
  const rest = url.slice(SCHEME.length);
  const slash = rest.indexOf('/');
  if (slash < 0) return { bucket: rest, prefix: '' };
  return { bucket: rest.slice(0, slash), prefix: rest.slice(slash + 1).replace(/\/$/, '') };
}

/** What is wrong with `url` as an s3:// URL (for config validation), or undefined when it is fine. */
export function s3UrlProblem(url: string): string | undefined {
  if (typeof url !== 'string') return 'must be a string like s3://my-bucket/datasets/mnist/';
  if (!url.startsWith(SCHEME)) return 'must start with s3:// (e.g. s3://my-bucket/datasets/mnist/)';
  const rest = url.slice(SCHEME.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  if (!BUCKET_NAME.test(bucket)) {
    return `bucket ${JSON.stringify(bucket)} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, ".", "-")`;
  }
  if (slash < 0) return undefined;
  const prefix = rest.slice(slash + 1).replace(/\/$/, '');
  if (prefix === '') return rest.slice(slash + 1) === '' ? undefined : "the prefix must not have empty segments (doubled '/')";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(prefix)) return 'the prefix must not contain control characters';
  if (prefix.includes('\\')) return "the prefix uses '/' as separator; backslashes are not allowed";
  if (Buffer.byteLength(prefix, 'utf8') > MAX_PREFIX_BYTES) return `the prefix must be at most ${MAX_PREFIX_BYTES} bytes`;
  for (const segment of prefix.split('/')) {
    if (segment === '') return "the prefix must not have empty segments (leading or doubled '/')";
    if (segment === '..' || segment === '.') return `the prefix must not have '${segment}' segments`;
  }
  return undefined;
}

/** The canonical URL of a parsed source: s3://bucket/prefix/ (s3://bucket/ for the whole bucket). */
export function formatS3Url(u: S3Url): string {
  return `s3://${u.bucket}/${u.prefix === '' ? '' : `${u.prefix}/`}`;
}
