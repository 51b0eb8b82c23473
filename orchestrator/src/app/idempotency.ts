// Idempotency-Key: a POST sent again with the same key gets the first answer; nothing is made twice.
import { createHash } from 'node:crypto';
import { KloudakError } from '@kloudak/common';
import { dropExpiredKey, dropIdempotencyKey, idempotencyKey, insertIdempotencyKey, storeIdempotentAnswer, type IdempotencyRow } from '../store/idempotency.js';
import { signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';

/** How long a key is remembered. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600_000;

/** What to do with a request that carries an Idempotency-Key. */
export type IdempotencyStart =
  | { kind: 'proceed'; id: string }
  | { kind: 'replay'; status: number; body: unknown };

/** A request as its key remembers it: method, path, and the hash of its body ({@link requestHash}). */
export interface KeyedRequest {
  key: string;
  method: string;
  path: string;
  hash: string;
}

/** SHA-256 of a request's method, path and canonical body. */
export function requestHash(method: string, path: string, body: unknown): string {
  return createHash('sha256').update(`${method} ${path}\n${JSON.stringify(body ?? null)}`).digest('hex');
}

/**
 * Begin a POST that carries an Idempotency-Key: the first request with a key proceeds (the key is
 * recorded before it runs, so a concurrent repeat waits for nothing and is told to retry), a repeat
 * with the same request gets the first answer back, and the same key with another request is 422.
 * Keys are per user: one user's key never replays another's answer.
 */
export async function beginIdempotent(s: Services, c: Caller, r: KeyedRequest): Promise<IdempotencyStart> {
  const userId = signedIn(c).userId;
  const now = new Date(s.clock.now());
  await dropExpiredKey(s.db.client, userId, r.key, now);
  const existing = await idempotencyKey(s.db.client, userId, r.key);
  if (existing) return judge(existing, r);
  try {
    const row = await insertIdempotencyKey(s.db.client, {
      userId,
      key: r.key,
      method: r.method,
      path: r.path,
      requestHash: r.hash,
      expiresAt: new Date(now.getTime() + IDEMPOTENCY_TTL_MS),
    });
    return { kind: 'proceed', id: row.id };
  } catch {
    // Another request with the same key got in first.
    const again = await idempotencyKey(s.db.client, userId, r.key);
    if (!again) throw new KloudakError('conflict', 'a request with this Idempotency-Key is being processed; retry');
    return judge(again, r);
  }
}

function judge(row: IdempotencyRow, r: KeyedRequest): IdempotencyStart {
  if (row.method !== r.method || row.path !== r.path || row.requestHash !== r.hash) {
    throw new KloudakError('unprocessable', 'this Idempotency-Key was used with another request; use a new key', { details: { header: 'Idempotency-Key' } });
  }
  if (row.status === null) throw new KloudakError('conflict', 'a request with this Idempotency-Key is being processed; retry');
  return { kind: 'replay', status: row.status, body: row.response };
}

/** Record the answer of a request that proceeded (2xx and 4xx are kept; after a 5xx the key is freed for a retry). */
export async function finishIdempotent(s: Services, id: string, status: number, body: unknown): Promise<void> {
  if (status >= 500) {
    await dropIdempotencyKey(s.db.client, id);
    return;
  }
  await storeIdempotentAnswer(s.db.client, id, status, body);
}
