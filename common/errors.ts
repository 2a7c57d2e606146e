// The one registry of error codes. Every code says whether retrying can help
// and which gRPC status it maps to; docs/errors.md lists them all (a test checks).
import { status as GrpcStatus } from '@grpc/grpc-js';

interface ErrorDef {
  grpc: GrpcStatus;
  retryable: boolean;
  description: string;
}

/** Stable error codes; never renumber or reuse. */
export const ERRORS = {
  DET_ERR_CONFIG_INVALID: { grpc: GrpcStatus.INVALID_ARGUMENT, retryable: false, description: 'A process config (file, DET_* env or flags) failed validation.' },
  DET_ERR_EXPERIMENT_CONFIG_INVALID: { grpc: GrpcStatus.INVALID_ARGUMENT, retryable: false, description: 'An experiment config is not valid YAML or fails the schema.' },
  DET_ERR_RESOURCE_POOL_UNKNOWN: { grpc: GrpcStatus.INVALID_ARGUMENT, retryable: false, description: 'A resource pool named by an experiment or agent does not exist.' },
  DET_ERR_EXPERIMENT_NOT_FOUND: { grpc: GrpcStatus.NOT_FOUND, retryable: false, description: 'No experiment has the given id.' },
  DET_ERR_TRIAL_NOT_FOUND: { grpc: GrpcStatus.NOT_FOUND, retryable: false, description: 'No trial has the given id.' },
  DET_ERR_AGENT_NOT_FOUND: { grpc: GrpcStatus.NOT_FOUND, retryable: false, description: 'No agent has the given id.' },
  DET_ERR_CHECKPOINT_NOT_FOUND: { grpc: GrpcStatus.NOT_FOUND, retryable: false, description: 'No checkpoint has the given UUID.' },
  DET_ERR_EXPERIMENT_NOT_ENDED: { grpc: GrpcStatus.FAILED_PRECONDITION, retryable: false, description: 'The operation needs an ended experiment (COMPLETED, CANCELED or ERROR) and this one still runs.' },
  DET_ERR_CHECKPOINT_DELETE: { grpc: GrpcStatus.UNAVAILABLE, retryable: true, description: 'Checkpoint objects could not be deleted from their storage; nothing was forgotten and a retry continues.' },
  DET_ERR_INVALID_ARGUMENT: { grpc: GrpcStatus.INVALID_ARGUMENT, retryable: false, description: 'A request argument is missing or malformed.' },
  DET_ERR_UNAUTHENTICATED: { grpc: GrpcStatus.UNAUTHENTICATED, retryable: false, description: 'An agent presented a missing or wrong cluster join token.' },
  DET_ERR_AGENT_ID_IN_USE: { grpc: GrpcStatus.ALREADY_EXISTS, retryable: true, description: 'Another connected agent already uses this agent id.' },
  DET_ERR_HEARTBEAT_TIMEOUT: { grpc: GrpcStatus.UNAVAILABLE, retryable: true, description: 'An agent sent nothing within its heartbeat TTL (or no Register in time); it should reconnect.' },
  DET_ERR_PROTOCOL: { grpc: GrpcStatus.FAILED_PRECONDITION, retryable: false, description: 'A peer broke the agent protocol (e.g. did not register first).' },
  DET_ERR_MASTER_UNREACHABLE: { grpc: GrpcStatus.UNAVAILABLE, retryable: true, description: 'The master cannot be reached at the configured address.' },
  DET_ERR_DOCKER_UNREACHABLE: { grpc: GrpcStatus.UNAVAILABLE, retryable: true, description: 'The Docker daemon cannot be reached on its socket.' },
  DET_ERR_IMAGE_PULL: { grpc: GrpcStatus.FAILED_PRECONDITION, retryable: false, description: 'An image could not be pulled.' },
  DET_ERR_CONTAINER_START: { grpc: GrpcStatus.FAILED_PRECONDITION, retryable: false, description: 'Docker refused to create or start a container.' },
  DET_ERR_DATA_DIR: { grpc: GrpcStatus.FAILED_PRECONDITION, retryable: false, description: 'The master data directory cannot be created or written.' },
  DET_ERR_DB_UNREACHABLE: { grpc: GrpcStatus.UNAVAILABLE, retryable: true, description: 'The database cannot be opened or does not answer.' },
  DET_ERR_DB_MIGRATION: { grpc: GrpcStatus.INTERNAL, retryable: false, description: 'A database migration failed or the schema is newer than this master.' },
  DET_ERR_SHUTTING_DOWN: { grpc: GrpcStatus.UNAVAILABLE, retryable: true, description: 'The process is shutting down.' },
  DET_ERR_INTERNAL: { grpc: GrpcStatus.INTERNAL, retryable: false, description: 'An unexpected internal error.' },
} as const satisfies Record<string, ErrorDef>;

/** A registered error code. */
export type ErrorCode = keyof typeof ERRORS;

/** Metadata key carrying the error code on gRPC errors. */
export const ERROR_CODE_METADATA_KEY = 'x-det-error-code';

/** An error with a registered code and a message that tells the user what to do. */
export class DetError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DetError';
    this.code = code;
  }
  /** Whether retrying the same operation can succeed. */
  get retryable(): boolean {
    return ERRORS[this.code].retryable;
  }
  /** The gRPC status this error maps to. */
  get grpcStatus(): GrpcStatus {
    return ERRORS[this.code].grpc;
  }
}

/** Whether `code` is a registered error code. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(ERRORS, code);
}

/** The message of any thrown value. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
