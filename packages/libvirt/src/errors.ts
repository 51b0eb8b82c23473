/**
 * Typed errors of the libvirt client.
 *
 * Errors the daemon reports (a reply or stream message with status ERROR carrying a
 * `remote_error`) become a {@link LibvirtError}, or one of its subclasses chosen by the error code,
 * so callers can write `if (e instanceof NotFoundError)` instead of comparing numbers. Failures of
 * the connection itself are {@link DisconnectedError}, {@link CallTimeoutError} and
 * {@link ProtocolError}: they say nothing about whether the hypervisor did the operation.
 */

/** Numeric error codes of `virErrorNumber` (values from /usr/include/libvirt/virterror.h). */
export const ErrorCode = {
  INTERNAL_ERROR: 1,
  NO_MEMORY: 2,
  NO_SUPPORT: 3,
  NO_CONNECT: 5,
  INVALID_CONN: 6,
  INVALID_DOMAIN: 7,
  INVALID_ARG: 8,
  OPERATION_FAILED: 9,
  XML_ERROR: 27,
  DOM_EXIST: 28,
  OPERATION_DENIED: 29,
  XML_DETAIL: 35,
  INVALID_NETWORK: 36,
  NETWORK_EXIST: 37,
  SYSTEM_ERROR: 38,
  RPC: 39,
  NO_DOMAIN: 42,
  NO_NETWORK: 43,
  INVALID_MAC: 44,
  AUTH_FAILED: 45,
  INVALID_STORAGE_POOL: 46,
  INVALID_STORAGE_VOL: 47,
  NO_STORAGE_POOL: 49,
  NO_STORAGE_VOL: 50,
  NO_NODE_DEVICE: 53,
  OPERATION_INVALID: 55,
  NO_INTERFACE: 57,
  NO_NWFILTER: 62,
  NO_SECRET: 66,
  CONFIG_UNSUPPORTED: 67,
  OPERATION_TIMEOUT: 68,
  NO_DOMAIN_SNAPSHOT: 72,
  ARGUMENT_UNSUPPORTED: 74,
  OPERATION_ABORTED: 78,
  NO_DOMAIN_METADATA: 80,
  OPERATION_UNSUPPORTED: 84,
  AGENT_UNRESPONSIVE: 86,
  RESOURCE_BUSY: 87,
  ACCESS_DENIED: 88,
  STORAGE_VOL_EXIST: 90,
  XML_INVALID_SCHEMA: 92,
  DEVICE_MISSING: 99,
  NO_NWFILTER_BINDING: 101,
  NO_DOMAIN_CHECKPOINT: 103,
  NO_DOMAIN_BACKUP: 104,
  NETWORK_PORT_EXIST: 106,
  NO_NETWORK_PORT: 107,
} as const;

/** The fields of libvirt's `remote_error` (see virterror.h for their meaning). */
export interface RemoteErrorFields {
  /** `virErrorNumber`. */
  code: number;
  /** `virErrorDomain`: which part of libvirt raised it (e.g. 12 test driver, 18 storage). */
  domain: number;
  /** Human-readable message; libvirt may send none. */
  message: string | null;
  /** `virErrorLevel`: 1 warning, 2 error. */
  level: number;
  str1: string | null;
  str2: string | null;
  str3: string | null;
  int1: number;
  int2: number;
}

/** Base class of every error libvirt itself reported. */
export class LibvirtError extends Error {
  /** `virErrorNumber`, comparable with {@link ErrorCode}. */
  readonly code: number;
  /** `virErrorDomain`. */
  readonly domain: number;
  readonly level: number;
  /** The raw `remote_error`, for the rarely needed extra strings and ints. */
  readonly remote: RemoteErrorFields;
  /** Name of the procedure that failed, when known (e.g. `DOMAIN_LOOKUP_BY_NAME`). */
  readonly procedure: string | undefined;

  constructor(remote: RemoteErrorFields, procedure?: string) {
    super(remote.message ?? `libvirt error code ${remote.code}`);
    this.name = new.target.name;
    this.code = remote.code;
    this.domain = remote.domain;
    this.level = remote.level;
    this.remote = remote;
    this.procedure = procedure;
  }
}

/** The object (domain, pool, volume, network, …) does not exist. */
export class NotFoundError extends LibvirtError {}

/** The request was refused as invalid: bad argument, bad or unsupported XML, bad handle. */
export class InvalidError extends LibvirtError {}

/** The operation was understood but failed, or is not valid in the object's current state. */
export class OperationFailedError extends LibvirtError {}

/** An object with that name or UUID already exists. */
export class AlreadyExistsError extends LibvirtError {}

/** The driver does not support the operation. */
export class NotSupportedError extends LibvirtError {}

/** Access was denied (ACL, authentication). */
export class AccessDeniedError extends LibvirtError {}

const CLASS_BY_CODE = new Map<number, new (remote: RemoteErrorFields, procedure?: string) => LibvirtError>();
for (const code of [
  ErrorCode.NO_DOMAIN,
  ErrorCode.NO_NETWORK,
  ErrorCode.NO_STORAGE_POOL,
  ErrorCode.NO_STORAGE_VOL,
  ErrorCode.NO_NODE_DEVICE,
  ErrorCode.NO_INTERFACE,
  ErrorCode.NO_NWFILTER,
  ErrorCode.NO_SECRET,
  ErrorCode.NO_DOMAIN_SNAPSHOT,
  ErrorCode.NO_DOMAIN_METADATA,
  ErrorCode.DEVICE_MISSING,
  ErrorCode.NO_NWFILTER_BINDING,
  ErrorCode.NO_DOMAIN_CHECKPOINT,
  ErrorCode.NO_DOMAIN_BACKUP,
  ErrorCode.NO_NETWORK_PORT,
]) {
  CLASS_BY_CODE.set(code, NotFoundError);
}
for (const code of [
  ErrorCode.INVALID_ARG,
  ErrorCode.XML_ERROR,
  ErrorCode.XML_DETAIL,
  ErrorCode.XML_INVALID_SCHEMA,
  ErrorCode.INVALID_DOMAIN,
  ErrorCode.INVALID_NETWORK,
  ErrorCode.INVALID_STORAGE_POOL,
  ErrorCode.INVALID_STORAGE_VOL,
  ErrorCode.INVALID_MAC,
  ErrorCode.CONFIG_UNSUPPORTED,
  ErrorCode.ARGUMENT_UNSUPPORTED,
]) {
  CLASS_BY_CODE.set(code, InvalidError);
}
for (const code of [
  ErrorCode.OPERATION_FAILED,
  ErrorCode.OPERATION_INVALID,
  ErrorCode.OPERATION_TIMEOUT,
  ErrorCode.OPERATION_ABORTED,
  ErrorCode.RESOURCE_BUSY,
  ErrorCode.AGENT_UNRESPONSIVE,
]) {
  CLASS_BY_CODE.set(code, OperationFailedError);
}
for (const code of [ErrorCode.DOM_EXIST, ErrorCode.NETWORK_EXIST, ErrorCode.STORAGE_VOL_EXIST, ErrorCode.NETWORK_PORT_EXIST]) {
  CLASS_BY_CODE.set(code, AlreadyExistsError);
}
for (const code of [ErrorCode.NO_SUPPORT, ErrorCode.OPERATION_UNSUPPORTED]) CLASS_BY_CODE.set(code, NotSupportedError);
for (const code of [ErrorCode.OPERATION_DENIED, ErrorCode.ACCESS_DENIED, ErrorCode.AUTH_FAILED]) {
  CLASS_BY_CODE.set(code, AccessDeniedError);
}

/** Builds the most specific error class for a `remote_error`. */
export function libvirtErrorFrom(remote: RemoteErrorFields, procedure?: string): LibvirtError {
  const Cls = CLASS_BY_CODE.get(remote.code) ?? LibvirtError;
  return new Cls(remote, procedure);
}

/** State of the connection when a call could not be sent or lost its connection. */
export type DisconnectedState = 'connecting' | 'reconnecting' | 'closed';

/**
 * The call was not sent because the connection is not ready, or the connection was lost while the
 * call was in flight. In the second case the daemon may or may not have carried the call out:
 * callers must check (look the object up) before retrying anything that is not idempotent.
 */
export class DisconnectedError extends Error {
  /** Whether the call had been written to the socket before the connection was lost. */
  readonly sent: boolean;
  readonly state: DisconnectedState;

  constructor(message: string, state: DisconnectedState, sent: boolean, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DisconnectedError';
    this.state = state;
    this.sent = sent;
  }
}

/** No reply came within the call's timeout. The daemon may still carry the call out. */
export class CallTimeoutError extends Error {
  readonly procedure: string;
  readonly timeoutMs: number;

  constructor(procedure: string, timeoutMs: number) {
    super(`libvirt call ${procedure} got no reply within ${timeoutMs} ms`);
    this.name = 'CallTimeoutError';
    this.procedure = procedure;
    this.timeoutMs = timeoutMs;
  }
}

/** The peer sent something this client cannot understand (bad frame, bad XDR, unexpected type). */
export class ProtocolError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ProtocolError';
  }
}
