import type { PrismaClient } from '@kloudak/prisma';
import { toPermissions, type Permissions } from '../domain/permissions.js';

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
  db: PrismaClient,
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
export async function bumpTokenVersion(db: Pick<PrismaClient, 'user'>, userIds: string[]): Promise<void> {
  if (userIds.length === 0) return;
  await db.user.updateMany({ where: { id: { in: userIds } }, data: { tokenVersion: { increment: 1 } } });
}
