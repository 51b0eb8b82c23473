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

/** Base class: a code, a message safe to show a user, optional structured details and a cause. */
export class KloudakError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { details?: Record<string, unknown>; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options?.details;
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

/** The request conflicts with the current state (duplicate name, object in use...). */
export class ConflictError extends KloudakError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('conflict', message, details === undefined ? undefined : { details });
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
