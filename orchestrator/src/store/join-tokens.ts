// Join tokens (AGENT-LINK.md, "Join tokens and enrollment"): single-use secrets an admin hands to
// a new host. The database keeps SHA-256 of the secret only; the token string is shown once.
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import type { Prisma } from '@kloudak/prisma';
import type { DbOrTx } from './db.js';

const TOKEN = /^kjt1\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{64})$/;

/** The parts of a join token string `kjt1.<id>.<secret>.<caFingerprint>`. */
export interface ParsedJoinToken {
  /** The token's id as a UUID (the string carries it as 32 hex digits). */
  id: string;
  /** base64url of 32 random bytes. Never logged, never stored. */
  secret: string;
  /** SHA-256 of the CA certificate's DER, hex. */
  caFingerprint: string;
}

/** Parse a token string; null when it is not one. */
export function parseJoinToken(token: string): ParsedJoinToken | null {
  const m = TOKEN.exec(token);
  if (!m) return null;
  const hex = m[1] as string;
  const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return { id, secret: m[2] as string, caFingerprint: m[3] as string };
}

/** Build a token string from its parts. */
export function formatJoinToken(id: string, secret: string, caFingerprint: string): string {
  return `kjt1.${id.replace(/-/g, '').toLowerCase()}.${secret}.${caFingerprint}`;
}

/** Hex SHA-256 of a secret, as stored. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** A join token row as the API lists it (no secret, no hash). */
export interface JoinTokenView {
  id: string;
  areaId: string;
  expiresAt: string;
  createdAt: string;
  createdBy: string | null;
  used: boolean;
  usedAt: string | null;
  usedByHostId: string | null;
  revoked: boolean;
  revokedAt: string | null;
  expired: boolean;
  /** The existing host this token re-enrolls; null: it enrolls a new host. */
  hostId: string | null;
}

type Row = {
  id: string;
  areaId: string;
  expiresAt: Date;
  createdAt: Date;
  createdById: string | null;
  usedAt: Date | null;
  usedByHostId: string | null;
  revokedAt: Date | null;
  forHostId: string | null;
};

export function joinTokenView(r: Row, now: number): JoinTokenView {
  return {
    id: r.id,
    areaId: r.areaId,
    expiresAt: r.expiresAt.toISOString(),
    createdAt: r.createdAt.toISOString(),
    createdBy: r.createdById,
    used: r.usedAt !== null,
    usedAt: r.usedAt?.toISOString() ?? null,
    usedByHostId: r.usedByHostId,
    revoked: r.revokedAt !== null,
    revokedAt: r.revokedAt?.toISOString() ?? null,
    expired: r.expiresAt.getTime() <= now,
    hostId: r.forHostId,
  };
}

/** Create a token; returns the row and the full token string (the only time the secret exists). */
export async function createJoinToken(
  db: DbOrTx,
  input: { areaId: string; expiresAt: Date; createdById: string | null; caFingerprint: string; forHostId?: string | null },
): Promise<{ row: Row; token: string }> {
  const id = randomUUID();
  const secret = randomBytes(32).toString('base64url');
  const row = await db.joinToken.create({
    data: { id, areaId: input.areaId, secretHash: hashSecret(secret), expiresAt: input.expiresAt, createdById: input.createdById, forHostId: input.forHostId ?? null },
  });
  return { row, token: formatJoinToken(id, secret, input.caFingerprint) };
}

/**
 * Consume a token inside the caller's transaction: one conditional UPDATE, so two enrollments
 * racing for the same token cannot both win. The secret is compared as a hash in the WHERE clause
 * and again in constant time here (defence in depth). Returns the area id, or null when the token
 * is unknown, wrong, expired, used or revoked (the caller must not say which), and the host it
 * re-enrolls (null: it enrolls a new host).
 */
export async function consumeJoinToken(
  tx: Prisma.TransactionClient,
  t: ParsedJoinToken,
  now: Date,
): Promise<{ areaId: string; forHostId: string | null } | null> {
  const hash = hashSecret(t.secret);
  const n = await tx.joinToken.updateMany({
    where: { id: t.id, usedAt: null, revokedAt: null, expiresAt: { gt: now }, secretHash: hash },
    data: { usedAt: now },
  });
  if (n.count !== 1) return null;
  const row = await tx.joinToken.findUniqueOrThrow({ where: { id: t.id }, select: { areaId: true, secretHash: true, forHostId: true } });
  if (!timingSafeEqual(Buffer.from(row.secretHash, 'hex'), Buffer.from(hash, 'hex'))) return null;
  return { areaId: row.areaId, forHostId: row.forHostId };
}

/** Join tokens by id, at most `take` after `after`. */
export async function listJoinTokens(db: DbOrTx, q: { after?: string; take: number }): Promise<Row[]> {
  return db.joinToken.findMany({ where: q.after ? { id: { gt: q.after } } : {}, orderBy: { id: 'asc' }, take: q.take });
}

export async function joinTokenById(db: DbOrTx, id: string): Promise<Row | null> {
  return db.joinToken.findUnique({ where: { id } });
}

/**
 * Revoke a token unless it was used or revoked: one conditional UPDATE, so an enrollment consuming
 * the token at this very moment wins or loses as a whole. True when this call revoked it.
 */
export async function revokeUnusedJoinToken(db: DbOrTx, id: string, now: Date): Promise<boolean> {
  const n = await db.joinToken.updateMany({ where: { id, usedAt: null, revokedAt: null }, data: { revokedAt: now } });
  return n.count === 1;
}

/** Note which host a consumed token enrolled (inside the enrollment's transaction). */
export async function recordEnrolledHost(db: DbOrTx, tokenId: string, hostId: string): Promise<void> {
  await db.joinToken.update({ where: { id: tokenId }, data: { usedByHostId: hostId } });
}
