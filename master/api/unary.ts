// Adapts promise-returning handlers to grpc-js unary handlers.
import type * as grpc from '@grpc/grpc-js';
import { toServiceError } from './errors';

/** Wraps an async unary handler so every error becomes a proper status. */
export function unary<Req, Res>(fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request).then(
      (res) => callback(null, res),
      (err) => callback(toServiceError(err) as grpc.ServiceError),
    );
  };
}
