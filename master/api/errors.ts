// The one place where errors become gRPC statuses.
import * as grpc from '@grpc/grpc-js';
import { DetError, ERROR_CODE_METADATA_KEY, errorMessage } from '../../common/errors';

/** A gRPC status object for any thrown value (DetErrors keep their code in trailer metadata). */
export function toServiceError(err: unknown): Partial<grpc.StatusObject> & { code: grpc.status; details: string } {
  const metadata = new grpc.Metadata();
  if (err instanceof DetError) {
    metadata.set(ERROR_CODE_METADATA_KEY, err.code);
    return { code: err.grpcStatus, details: err.message, metadata };
  }
  metadata.set(ERROR_CODE_METADATA_KEY, 'DET_ERR_INTERNAL');
  return { code: grpc.status.INTERNAL, details: `internal error: ${errorMessage(err)}`, metadata };
}
