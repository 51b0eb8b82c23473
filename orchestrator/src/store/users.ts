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

/** A user's permission flags per workspace name, for the token's claims. */
export async function workspaceClaims(db: PrismaClient, userId: string): Promise<Record<string, Permissions>> {
  const ms = await db.membership.findMany({ where: { userId }, include: { workspace: { select: { name: true } } } });
  return Object.fromEntries(ms.map((m) => [m.workspace.name, toPermissions(m)]));
}

/** Make every token issued so far for these users invalid (password or permission change). */
export async function bumpTokenVersion(db: Pick<PrismaClient, 'user'>, userIds: string[]): Promise<void> {
  if (userIds.length === 0) return;
  await db.user.updateMany({ where: { id: { in: userIds } }, data: { tokenVersion: { increment: 1 } } });
}
