import { KloudakError, ValidationError } from '@kloudak/common';
import { databaseError } from '../store/db.js';

/**
 * What a use case failed with, as a typed error: its own KloudakErrors as they are, database
 * failures translated (conflict, not_found, unavailable…). Null for anything else: a bug, which
 * every adapter answers as `internal` without details. Adapters map the code to their status
 * through their one table (http/errors.ts HTTP_STATUS, grpc/status.ts GRPC_STATUS).
 */
export function typedError(err: unknown): KloudakError | null {
  if (err instanceof KloudakError) return err;
  return databaseError(err);
}

/** A 400 naming the input field at fault (a JSON pointer into the input, e.g. `/subnet`). */
export function invalidField(path: string, message: string, where: 'body' | 'query' | 'params' = 'body'): ValidationError {
  return new ValidationError(message, { in: where, problems: [{ path, message }] });
}
