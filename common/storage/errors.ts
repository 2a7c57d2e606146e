// Storage errors. No new registry codes: bad keys and missing objects are
// DET_ERR_INVALID_ARGUMENT, everything else the backend refuses is DET_ERR_INTERNAL. Messages
// never carry credentials: S3 error texts are passed through redact() before use.
import { DetError } from '../errors';

/** Thrown by get() when the object does not exist. */
export class ObjectNotFoundError extends DetError {
  /** The key as given to get(). */
  readonly key: string;
  constructor(key: string, location: string) {
    super('DET_ERR_INVALID_ARGUMENT', `checkpoint object ${location} does not exist`);
    this.name = 'ObjectNotFoundError';
    this.key = key;
  }
}

/** Whether `err` is an ObjectNotFoundError. */
export function isObjectNotFound(err: unknown): err is ObjectNotFoundError {
  return err instanceof ObjectNotFoundError;
}

const ACCESS_KEY_ID = /\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b/g;
// 40-character secret access keys and long session tokens: mixed-case base64 runs (so that
// lowercase hex digests in object keys stay readable).
const SECRET_LIKE = /(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40,}(?![A-Za-z0-9/+=])/g;
const redactSecretLike = (run: string): string => (/[A-Z]/.test(run) && /[a-z]/.test(run) ? '[REDACTED]' : run);
const AUTH_PARTS = /(Credential=|Signature=|X-Amz-Security-Token=|X-Amz-Credential=|X-Amz-Signature=)[^\s,&"]+/gi;

/** Removes anything shaped like an AWS credential (and the given secrets) from a message. */
export function redact(message: string, secrets: readonly (string | undefined)[] = []): string {
  let out = message;
  for (const s of secrets) if (s && s.length >= 4) out = out.split(s).join('[REDACTED]');
  return out.replace(AUTH_PARTS, '$1[REDACTED]').replace(ACCESS_KEY_ID, '[REDACTED]').replace(SECRET_LIKE, redactSecretLike);
}
