import { status as GrpcStatus, type ServiceError, Metadata } from '@grpc/grpc-js';
import { KloudakError, type ErrorCode } from '@kloudak/common';

/** The one table from Kloudak error codes to gRPC statuses (the HTTP one is http/errors.ts). */
export const GRPC_STATUS: Record<ErrorCode, GrpcStatus> = {
  bad_request: GrpcStatus.INVALID_ARGUMENT,
  validation_failed: GrpcStatus.INVALID_ARGUMENT,
  unauthenticated: GrpcStatus.UNAUTHENTICATED,
  forbidden: GrpcStatus.PERMISSION_DENIED,
  not_found: GrpcStatus.NOT_FOUND,
  conflict: GrpcStatus.ALREADY_EXISTS,
  unprocessable: GrpcStatus.INVALID_ARGUMENT,
  payload_too_large: GrpcStatus.RESOURCE_EXHAUSTED,
  unsupported_media_type: GrpcStatus.INVALID_ARGUMENT,
  rate_limited: GrpcStatus.RESOURCE_EXHAUSTED,
  unavailable: GrpcStatus.UNAVAILABLE,
  internal: GrpcStatus.INTERNAL,
};

/**
 * A gRPC error status for anything thrown: KloudakErrors keep their (safe) message; anything else
 * is INTERNAL with a message that reveals nothing (the caller logs the original).
 */
export function toGrpcError(err: unknown): Partial<ServiceError> & { code: GrpcStatus; details: string } {
  const e = err instanceof KloudakError ? err : new KloudakError('internal', 'internal error');
  return { code: GRPC_STATUS[e.code], details: e.message, message: e.message, metadata: new Metadata() };
}
