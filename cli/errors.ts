// How the CLI fails: usage errors (exit 2), Ctrl-C (exit 130), and gRPC
// statuses mapped to registered error codes with messages that say what to do.
import * as grpc from '@grpc/grpc-js';
import { DetError, ERROR_CODE_METADATA_KEY, isErrorCode, type ErrorCode } from '../common/errors';

/** Exit codes of det. */
export const EXIT = { OK: 0, FAILURE: 1, USAGE: 2, INTERRUPTED: 130 } as const;

/** A mistake in the command line itself (exit code 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The user pressed Ctrl-C; `message` (if any) says what happens to the work on the cluster. */
export class Interrupted extends Error {
  constructor(message = '') {
    super(message);
    this.name = 'Interrupted';
  }
}

const TLS_FAILURE = /\b(cert|certificate|tls|ssl|altnames?|handshake|self[- ]signed)\b/i;

/** The message for a master that does not answer; TLS failures point at the certificate flags instead. */
export function unreachable(target: string, reason: string, tls = false): DetError {
  if (tls && TLS_FAILURE.test(reason)) {
    return new DetError(
      'DET_ERR_MASTER_UNREACHABLE',
      `cannot reach the master at ${target} over TLS (${reason}): check --cert-file and --cert-name (DET_MASTER_CERT_FILE, DET_MASTER_CERT_NAME).`,
    );
  }
  return new DetError(
    'DET_ERR_MASTER_UNREACHABLE',
    `cannot reach the master at ${target} (${reason}): is det-master running? Set -m/--master or DET_MASTER.`,
  );
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number' && 'details' in err;
}

/** The underlying cause of a connection failure from grpc-js details ("connect ECONNREFUSED 127.0.0.1:1"). */
export function connectionReason(details: string): string {
  const last = /Last error: (.*)$/s.exec(details);
  let reason = last ? last[1] : details;
  reason = reason
    .replace(/\.?\s*Resolution note:.*$/s, '')
    .replace(/^(Error( \[\w+\])?: )+/, '')
    .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)$/, '')
    .trim();
  return reason.replace(/[.:]$/, '') || 'unavailable';
}

/** Fallback codes for statuses that arrive without an `x-det-error-code` trailer. */
function codeForStatus(code: grpc.status): ErrorCode {
  switch (code) {
    case grpc.status.UNAVAILABLE:
    case grpc.status.DEADLINE_EXCEEDED:
      return 'DET_ERR_MASTER_UNREACHABLE';
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.NOT_FOUND:
      return 'DET_ERR_INVALID_ARGUMENT';
    case grpc.status.UNAUTHENTICATED:
      return 'DET_ERR_UNAUTHENTICATED';
    default:
      return 'DET_ERR_INTERNAL';
  }
}

/**
 * Maps a failed call to the error det prints. A status with a registered code in
 * its trailer came from the master and keeps the master's message (which may span
 * lines, e.g. every problem of an experiment config); one without came from the
 * transport.
 */
export function fromGrpcError(err: unknown, target: string, timeoutMs: number, tls = false): Error {
  if (!isServiceError(err)) return err instanceof Error ? err : new Error(String(err));
  const trailer = err.metadata?.get(ERROR_CODE_METADATA_KEY)[0];
  const code = isErrorCode(String(trailer)) ? (String(trailer) as ErrorCode) : undefined;
  if (!code) {
    if (err.code === grpc.status.UNAVAILABLE) return unreachable(target, connectionReason(err.details ?? ''), tls);
    if (err.code === grpc.status.DEADLINE_EXCEEDED) {
      return new DetError('DET_ERR_MASTER_UNREACHABLE', `the master at ${target} did not answer within ${timeoutMs / 1000}s: is it overloaded or stuck?`);
    }
    if (err.code === grpc.status.CANCELLED) {
      // We did not cancel (Ctrl-C is handled before mapping): the master reset the stream, e.g. while shutting down.
      return new DetError('DET_ERR_MASTER_UNREACHABLE', `the master at ${target} closed the connection (${err.details || 'cancelled'})`);
    }
    if (err.code === grpc.status.UNIMPLEMENTED) {
      return new DetError('DET_ERR_INTERNAL', `the master at ${target} does not implement this call (${err.details}): is det older than the master, or the master older than det?`);
    }
  }
  const message = err.details || grpc.status[err.code] || `gRPC status ${err.code}`;
  return new DetError(code ?? codeForStatus(err.code), message, { cause: err });
}
