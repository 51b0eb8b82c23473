import { KloudakError, type ErrorCode } from '@kloudak/common';
import { typedError } from '../app/errors.js';

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

/**
 * Turn anything thrown into a KloudakError: what the application layer threw (its typed errors,
 * database failures it stands for), malformed URLs and Koa's own 4xx become bad requests, and
 * everything unknown an internal error whose message reveals nothing (the original is logged,
 * never sent).
 */
export function toKloudakError(err: unknown): KloudakError {
  const typed = typedError(err);
  if (typed) return typed;
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
