// The one table from Kloudak error codes to gRPC statuses, used by every gRPC server of the
// orchestrator (the public API and the agent link), and the rich error details the public API
// sends with them (google.rpc.Status in the `grpc-status-details-bin` trailer).
import { status as GrpcStatus, type ServiceError, Metadata } from '@grpc/grpc-js';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { KloudakError, type ConflictKind, type ErrorCode } from '@kloudak/common';
import { typedError } from '../app/errors.js';

/** The one table from Kloudak error codes to gRPC statuses (the HTTP one is http/errors.ts). */
export const GRPC_STATUS: Record<ErrorCode, GrpcStatus> = {
  bad_request: GrpcStatus.INVALID_ARGUMENT,
  validation_failed: GrpcStatus.INVALID_ARGUMENT,
  unauthenticated: GrpcStatus.UNAUTHENTICATED,
  forbidden: GrpcStatus.PERMISSION_DENIED,
  not_found: GrpcStatus.NOT_FOUND,
  // Refined by CONFLICT_STATUS: HTTP has one 409, gRPC a status for each kind of conflict.
  conflict: GrpcStatus.FAILED_PRECONDITION,
  unprocessable: GrpcStatus.INVALID_ARGUMENT,
  payload_too_large: GrpcStatus.RESOURCE_EXHAUSTED,
  unsupported_media_type: GrpcStatus.INVALID_ARGUMENT,
  rate_limited: GrpcStatus.RESOURCE_EXHAUSTED,
  unavailable: GrpcStatus.UNAVAILABLE,
  internal: GrpcStatus.INTERNAL,
};

/** The status of each kind of `conflict` (a name taken, a state that forbids it, a quota). */
export const CONFLICT_STATUS: Record<ConflictKind, GrpcStatus> = {
  exists: GrpcStatus.ALREADY_EXISTS,
  state: GrpcStatus.FAILED_PRECONDITION,
  quota: GrpcStatus.RESOURCE_EXHAUSTED,
};

/** The gRPC status of a typed error. */
export function grpcStatusOf(e: KloudakError): GrpcStatus {
  return e.code === 'conflict' ? CONFLICT_STATUS[e.conflict ?? 'state'] : GRPC_STATUS[e.code];
}

/** Domain of the google.rpc.ErrorInfo every error carries. */
export const ERROR_DOMAIN = 'kloudak.io';
/** Trailer holding the serialized google.rpc.Status (the gRPC convention for rich errors). */
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

/** One bad field, as google.rpc.BadRequest.FieldViolation names it. */
export interface FieldViolation {
  /** Path of the field in the request message: `ram_mb`, `networks[1]`, `permissions.vm_can_add`. */
  field: string;
  description: string;
}

/**
 * A JSON pointer into the REST-shaped input (`/ramMb`, `/networks/1`; `ws` of the path) as the
 * field path of the gRPC request (`ram_mb`, `networks[1]`, `workspace`).
 */
export function fieldPath(pointer: string): string {
  const snake = (k: string) => (k === 'ws' ? 'workspace' : k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
  let out = '';
  for (const seg of pointer.split('/').filter((x) => x !== '')) {
    if (/^\d+$/.test(seg)) out += `[${seg}]`;
    else out += (out ? '.' : '') + snake(seg);
  }
  return out;
}

/** The bad fields an error names: a validation's problems, or the `field` of a rule's error. */
export function fieldViolations(e: KloudakError): FieldViolation[] {
  const d = e.details ?? {};
  const problems = d['problems'];
  if (Array.isArray(problems)) {
    return problems.map((p: { path?: unknown; message?: unknown }) => ({ field: fieldPath(String(p.path ?? '')), description: String(p.message ?? e.message) }));
  }
  if (typeof d['field'] === 'string') return [{ field: fieldPath(d['field']), description: e.message }];
  return [];
}

const TYPE = 'type.googleapis.com/google.rpc.';

// The messages below are written with their google.rpc field numbers (google/rpc/status.proto and
// error_details.proto of googleapis): any client that knows those protos reads them.
function any(w: BinaryWriter, typeName: string, value: Uint8Array): void {
  w.uint32(26).fork().uint32(10).string(TYPE + typeName).uint32(18).bytes(value).join(); // Status.details = 3: Any{type_url=1, value=2}
}

function errorInfo(reason: string, metadata: Record<string, string>): Uint8Array {
  const w = new BinaryWriter().uint32(10).string(reason).uint32(18).string(ERROR_DOMAIN);
  for (const [k, v] of Object.entries(metadata)) w.uint32(26).fork().uint32(10).string(k).uint32(18).string(v).join();
  return w.finish();
}

function badRequest(violations: FieldViolation[]): Uint8Array {
  const w = new BinaryWriter();
  for (const v of violations) w.uint32(10).fork().uint32(10).string(v.field).uint32(18).string(v.description).join();
  return w.finish();
}

function retryInfo(seconds: number): Uint8Array {
  // RetryInfo.retry_delay = 1: google.protobuf.Duration{seconds=1}.
  return new BinaryWriter().uint32(10).fork().uint32(8).int64(Math.max(0, Math.ceil(seconds))).join().finish();
}

/**
 * google.rpc.Status of an error: its code and message, an ErrorInfo (reason: the REST error code;
 * metadata: the scalar details), a BadRequest naming the fields at fault, and a RetryInfo when the
 * caller should wait.
 */
export function statusDetails(e: KloudakError, code: GrpcStatus): Uint8Array {
  const w = new BinaryWriter().uint32(8).int32(code).uint32(18).string(e.message);
  const meta: Record<string, string> = {};
  for (const [k, v] of Object.entries(e.details ?? {})) {
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') meta[k] = String(v);
  }
  any(w, 'ErrorInfo', errorInfo(e.code, meta));
  const violations = fieldViolations(e);
  if (violations.length > 0) any(w, 'BadRequest', badRequest(violations));
  const retry = e.details?.['retryAfterSeconds'];
  if (e.code === 'rate_limited' && typeof retry === 'number') any(w, 'RetryInfo', retryInfo(retry));
  return w.finish();
}

/**
 * A gRPC error status for anything thrown: KloudakErrors (and the database failures they stand
 * for) keep their safe message and get the rich details; anything else is INTERNAL with a message
 * that reveals nothing (the caller logs the original).
 */
export function toGrpcError(err: unknown): Partial<ServiceError> & { code: GrpcStatus; details: string; metadata: Metadata } {
  const e = typedError(err) ?? new KloudakError('internal', 'internal error');
  const code = grpcStatusOf(e);
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(statusDetails(e, code)));
  return { code, details: e.message, message: e.message, metadata };
}
