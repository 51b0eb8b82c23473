// Idempotency keys: a POST's first answer, kept per user and key for a while.
import type { Prisma } from '@kloudak/prisma';
import type { DbOrTx } from './db.js';

/** A remembered request: what it was and (once answered) its answer. */
export interface IdempotencyRow {
  id: string;
  method: string;
  path: string;
  requestHash: string;
  /** Null while the first request is still being answered. */
  status: number | null;
  response: unknown;
}

/** Forget a user's key if it expired before `now`. */
export async function dropExpiredKey(db: DbOrTx, userId: string, key: string, now: Date): Promise<void> {
  await db.idempotencyKey.deleteMany({ where: { userId, key, expiresAt: { lt: now } } });
}

/** A user's key, or null. */
export async function idempotencyKey(db: DbOrTx, userId: string, key: string): Promise<IdempotencyRow | null> {
  return db.idempotencyKey.findUnique({ where: { userId_key: { userId, key } } });
}

/** Record a key before its request runs; fails (unique violation) when another request recorded it first. */
export async function insertIdempotencyKey(
  db: DbOrTx,
  k: { userId: string; key: string; method: string; path: string; requestHash: string; expiresAt: Date },
): Promise<{ id: string }> {
  return db.idempotencyKey.create({ data: k, select: { id: true } });
}

/** Keep the answer of the request a key was recorded for. */
export async function storeIdempotentAnswer(db: DbOrTx, id: string, status: number, response: unknown): Promise<void> {
  await db.idempotencyKey.update({ where: { id }, data: { status, response: (response ?? null) as Prisma.InputJsonValue } });
}

/** Forget a key (its request failed on our side: a retry may run it again). */
export async function dropIdempotencyKey(db: DbOrTx, id: string): Promise<void> {
  await db.idempotencyKey.deleteMany({ where: { id } });
}
