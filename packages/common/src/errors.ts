/**
 * Typed errors shared by every Kloudak binary. Each carries a stable `code`; the HTTP and gRPC
 * edges map codes to statuses in one table each, so domain code never thinks about transports.
 */

/** Every error code Kloudak raises on purpose. */
export type ErrorCode =
  | 'bad_request'
  | 'validation_failed'
  | 'unauthenticated'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'unprocessable'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

/**
 * What kind of `conflict` an error is: a name or object that already exists, a state that does
 * not allow the change (the default), or a quota it would exceed. HTTP answers all three 409 with
 * the code `conflict`; gRPC, which has a status for each, answers ALREADY_EXISTS,
 * FAILED_PRECONDITION and RESOURCE_EXHAUSTED.
 */
export type ConflictKind = 'exists' | 'state' | 'quota';

/** Base class: a code, a message safe to show a user, optional structured details and a cause. */
export class KloudakError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  /** Set on `conflict` errors only; 'state' when not said. */
  readonly conflict: ConflictKind | undefined;

  constructor(code: ErrorCode, message: string, options?: { details?: Record<string, unknown>; cause?: unknown; conflict?: ConflictKind }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options?.details;
    this.conflict = code === 'conflict' ? (options?.conflict ?? 'state') : undefined;
  }
}

/** The request is malformed or fails validation. */
export class ValidationError extends KloudakError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('validation_failed', message, details === undefined ? undefined : { details });
  }
}

/** No valid credentials were presented. */
export class UnauthenticatedError extends KloudakError {
  constructor(message = 'authentication required') {
    super('unauthenticated', message);
  }
}

/** The caller is known but lacks the permission. */
export class ForbiddenError extends KloudakError {
  constructor(message = 'permission denied') {
    super('forbidden', message);
  }
}

/** The object does not exist, or the caller may not know it exists. */
export class NotFoundError extends KloudakError {
  constructor(kind: string, name?: string) {
    super('not_found', name === undefined ? `${kind} not found` : `${kind} '${name}' not found`, {
      details: { kind },
    });
  }
}

/** The request conflicts with the current state (duplicate name, object in use...); `kind` says which. */
export class ConflictError extends KloudakError {
  constructor(message: string, details?: Record<string, unknown>, kind: ConflictKind = 'state') {
    super('conflict', message, details === undefined ? { conflict: kind } : { details, conflict: kind });
  }
}

/** Too many attempts; `retryAfterS` says when to try again. */
export class RateLimitedError extends KloudakError {
  readonly retryAfterS: number;
  constructor(retryAfterS: number) {
    super('rate_limited', 'too many attempts, try again later', { details: { retryAfterSeconds: retryAfterS } });
    this.retryAfterS = retryAfterS;
  }
}

/** A dependency (database, broker) cannot be reached now. */
export class UnavailableError extends KloudakError {
  constructor(message: string, cause?: unknown) {
    super('unavailable', message, { cause });
  }
}

/** Configuration that failed validation; raised once at start-up. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Narrowing helper. */
export function isKloudakError(err: unknown): err is KloudakError {
  return err instanceof KloudakError;
}
