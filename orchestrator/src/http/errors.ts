import { KloudakError, type ErrorCode } from '@kloudak/common';

/** The one table from error codes to HTTP statuses. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  validation_failed: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  unprocessable: 422,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  unavailable: 503,
  internal: 500,
};

/** The JSON error body every failure answers with. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: Record<string, unknown>; requestId?: string };
}

interface PrismaLikeError {
  name: string;
  code: string;
  meta?: Record<string, unknown>;
}

function sqlState(err: PrismaLikeError): string | undefined {
  const cause = (err.meta as { driverAdapterError?: { cause?: { originalCode?: unknown } } } | undefined)?.driverAdapterError?.cause;
  return typeof cause?.originalCode === 'string' ? cause.originalCode : undefined;
}

function isPrismaKnown(err: unknown): err is PrismaLikeError {
  return (
    typeof err === 'object' &&
    err !== null &&
    (err as { name?: unknown }).name === 'PrismaClientKnownRequestError' &&
    typeof (err as { code?: unknown }).code === 'string'
  );
}

/**
 * Turn anything thrown into a KloudakError: database constraint violations become conflicts or
 * not-found, malformed URLs become bad requests, and everything unknown an internal error whose
 * message reveals nothing (the original is logged, never sent).
 */
export function toKloudakError(err: unknown): KloudakError {
  if (err instanceof KloudakError) return err;
  if (isPrismaKnown(err)) {
    switch (err.code) {
      case 'P2002':
        return new KloudakError('conflict', 'an object with this name already exists', { cause: err });
      case 'P2025':
      case 'P2001':
        return new KloudakError('not_found', 'object not found', { cause: err });
      case 'P2003':
      case 'P2014':
        return new KloudakError('conflict', 'the object is still referenced by other objects', { cause: err });
    }
    // Errors a driver adapter did not translate carry the PostgreSQL SQLSTATE (PGlite's adapter
    // reports a RESTRICT violation, 23001, as a generic database error).
    switch (sqlState(err)) {
      case '23505':
        return new KloudakError('conflict', 'an object with this name already exists', { cause: err });
      case '22021':
      case '22P05':
        return new KloudakError('validation_failed', 'input contains characters the database cannot store', { cause: err });
      case '23001':
      case '23503':
        return new KloudakError('conflict', 'the object is still referenced by other objects', { cause: err });
    }
  }
  // The database is down or unreachable: the client may retry, so say so instead of "internal".
  const name = (err as { name?: unknown } | null)?.name;
  const code = (err as { code?: unknown } | null)?.code;
  if (name === 'PrismaClientInitializationError' || (typeof code === 'string' && /^P10(0[0-2]|17)$/.test(code))) {
    return new KloudakError('unavailable', 'the database is unavailable, try again later', { cause: err });
  }
  if (err instanceof URIError) return new KloudakError('bad_request', 'malformed URL', { cause: err });
  const status = (err as { status?: unknown; expose?: unknown } | null)?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const code = (Object.entries(HTTP_STATUS).find(([, s]) => s === status)?.[0] ?? 'bad_request') as ErrorCode;
    const message = (err as { expose?: boolean }).expose ? String((err as Error).message) : 'bad request';
    return new KloudakError(code, message, { cause: err });
  }
  return new KloudakError('internal', 'internal error', { cause: err });
}

/** Status and body for an error. */
export function errorResponse(err: KloudakError, requestId: string): { status: number; body: ErrorBody } {
  const body: ErrorBody = { error: { code: err.code, message: err.message, requestId } };
  if (err.details !== undefined) body.error.details = err.details;
  return { status: HTTP_STATUS[err.code], body };
}
