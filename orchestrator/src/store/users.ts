import type { DbOrTx } from './db.js';
import { toPermissions, type Permissions } from '../domain/permissions.js';

/** A user row (the hash never leaves the application layer). */
export interface UserRow {
  id: string;
  username: string;
  email: string;
  isAdmin: boolean;
  passwordHash: string;
  tokenVersion: number;
  createdAt: Date;
}

/** A user as the API shows it (never the password hash). */
export interface UserView {
  id: string;
  username: string;
  email: string;
  isAdmin: boolean;
  createdAt: string;
}

/** Row → API view. */
export function userView(u: { id: string; username: string; email: string; isAdmin: boolean; createdAt: Date }): UserView {
  return { id: u.id, username: u.username, email: u.email, isAdmin: u.isAdmin, createdAt: u.createdAt.toISOString() };
}

/**
 * Most workspaces a token lists. Every workspace adds about 290 characters to a token; past this
 * many the token would outgrow what proxies and Node accept in a header, so the claim is cut and
 * marked truncated. Authorization never relies on the claim (it reads live memberships), so a cut
 * claim loses nothing but convenience: GET /api/v1/me lists them all.
 */
export const MAX_TOKEN_WORKSPACES = 16;

/** A user's permission flags per workspace name, in name order, at most `limit` of them. */
export async function workspaceClaims(
  db: DbOrTx,
  userId: string,
  limit?: number,
): Promise<{ workspaces: Record<string, Permissions>; truncated: boolean }> {
  const ms = await db.membership.findMany({
    where: { userId },
    include: { workspace: { select: { name: true } } },
    orderBy: { workspace: { name: 'asc' } },
    ...(limit === undefined ? {} : { take: limit + 1 }),
  });
  const kept = limit === undefined ? ms : ms.slice(0, limit);
  return {
    workspaces: Object.fromEntries(kept.map((m) => [m.workspace.name, toPermissions(m)])),
    truncated: kept.length < ms.length,
  };
}

/** Make every token issued so far for these users invalid (password change, removal from a workspace). */
export async function bumpTokenVersion(db: Pick<DbOrTx, 'user'>, userIds: string[]): Promise<void> {
  if (userIds.length === 0) return;
  await db.user.updateMany({ where: { id: { in: userIds } }, data: { tokenVersion: { increment: 1 } } });
}

export async function userById(db: DbOrTx, id: string): Promise<UserRow | null> {
  return db.user.findUnique({ where: { id } });
}

export async function userByUsername(db: DbOrTx, username: string): Promise<UserRow | null> {
  return db.user.findUnique({ where: { username } });
}

/** A user holding this username or this email, if any. */
export async function userByUsernameOrEmail(db: DbOrTx, username: string, email: string): Promise<UserRow | null> {
  return db.user.findFirst({ where: { OR: [{ username }, { email }] } });
}

export async function createUser(db: DbOrTx, u: { username: string; email: string; passwordHash: string }): Promise<UserRow> {
  return db.user.create({ data: u });
}

export async function setPasswordHash(db: DbOrTx, userId: string, passwordHash: string): Promise<void> {
  await db.user.update({ where: { id: userId }, data: { passwordHash } });
}

/** What authentication checks of a token's user: the row, and whether that token id was revoked. */
export async function tokenHolder(
  db: DbOrTx,
  userId: string,
  jti: string,
): Promise<{ id: string; username: string; email: string; isAdmin: boolean; tokenVersion: number; revoked: boolean } | null> {
  const u = await db.user.findUnique({
    where: { id: userId },
    select: { id: true, username: true, email: true, isAdmin: true, tokenVersion: true, revoked: { where: { jti }, select: { jti: true } } },
  });
  if (!u) return null;
  const { revoked, ...rest } = u;
  return { ...rest, revoked: revoked.length > 0 };
}

/** Revoke one token (logout) and forget revocations of tokens that have expired anyway. */
export async function revokeToken(db: DbOrTx, t: { jti: string; userId: string; expiresAt: Date }, now: Date): Promise<void> {
  await db.revokedToken.upsert({ where: { jti: t.jti }, create: t, update: {} });
  await db.revokedToken.deleteMany({ where: { expiresAt: { lt: now } } });
}
