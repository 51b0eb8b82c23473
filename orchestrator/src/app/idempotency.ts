import { createHash } from 'node:crypto';
import { KloudakError } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import type { Clock } from '../clock.js';

/** How long a key is remembered. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600_000;

/** What to do with a request that carries an Idempotency-Key. */
export type IdempotencyStart =
  | { kind: 'proceed'; id: string }
  | { kind: 'replay'; status: number; body: unknown };

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
export async function beginIdempotent(db: PrismaClient, clock: Clock, userId: string, key: string, method: string, path: string, hash: string): Promise<IdempotencyStart> {
  const now = new Date(clock.now());
  await db.idempotencyKey.deleteMany({ where: { userId, key, expiresAt: { lt: now } } });
  const existing = await db.idempotencyKey.findUnique({ where: { userId_key: { userId, key } } });
  if (existing) return judge(existing, method, path, hash);
  try {
    const row = await db.idempotencyKey.create({
      data: { userId, key, method, path, requestHash: hash, expiresAt: new Date(now.getTime() + IDEMPOTENCY_TTL_MS) },
    });
    return { kind: 'proceed', id: row.id };
  } catch {
    // Another request with the same key got in first.
    const again = await db.idempotencyKey.findUnique({ where: { userId_key: { userId, key } } });
    if (!again) throw new KloudakError('conflict', 'a request with this Idempotency-Key is being processed; retry');
    return judge(again, method, path, hash);
  }
}

function judge(row: { method: string; path: string; requestHash: string; status: number | null; response: unknown }, method: string, path: string, hash: string): IdempotencyStart {
  if (row.method !== method || row.path !== path || row.requestHash !== hash) {
    throw new KloudakError('unprocessable', 'this Idempotency-Key was used with another request; use a new key', { details: { header: 'Idempotency-Key' } });
  }
  if (row.status === null) throw new KloudakError('conflict', 'a request with this Idempotency-Key is being processed; retry');
  return { kind: 'replay', status: row.status, body: row.response };
}

/** Record the answer of a request that proceeded (2xx and 4xx are kept; after a 5xx the key is freed for a retry). */
export async function finishIdempotent(db: PrismaClient, id: string, status: number, body: unknown): Promise<void> {
  if (status >= 500) {
    await db.idempotencyKey.deleteMany({ where: { id } });
    return;
  }
  await db.idempotencyKey.update({ where: { id }, data: { status, response: (body ?? null) as never } });
}
