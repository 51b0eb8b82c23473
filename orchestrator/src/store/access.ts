import { ForbiddenError, NotFoundError } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import { ALL_PERMISSIONS, PERMISSION_FLAGS, toPermissions, type PermissionFlag, type Permissions } from '../domain/permissions.js';
import type { Principal } from '../http/route.js';

/** A workspace the caller may act in, with the caller's flags there. */
export interface WorkspaceAccess {
  workspace: { id: string; name: string; description: string; createdAt: Date; updatedAt: Date };
  permissions: Permissions;
}

/**
 * Resolve a workspace for a caller. A workspace the caller does not belong to answers 404, exactly
 * like one that does not exist, so workspace names do not leak. Admins act with every flag.
 */
export async function workspaceAccess(db: PrismaClient, p: Pick<Principal, 'userId' | 'isAdmin'>, name: string): Promise<WorkspaceAccess> {
  const ws = await db.workspace.findUnique({
    where: { name },
    include: { memberships: { where: { userId: p.userId }, take: 1 } },
  });
  const m = ws?.memberships[0];
  if (!ws || (!m && !p.isAdmin)) throw new NotFoundError('workspace', name);
  const { memberships: _m, ...workspace } = ws;
  return { workspace, permissions: m && !p.isAdmin ? toPermissions(m) : ALL_PERMISSIONS };
}

/** Throw 403 unless every flag is held. */
export function requireFlags(a: WorkspaceAccess, ...flags: PermissionFlag[]): void {
  const missing = flags.filter((f) => !a.permissions[f]);
  if (missing.length > 0) throw new ForbiddenError(`this needs the permission ${missing.join(' and ')}`);
}

/**
 * Take a row lock on a workspace for the rest of the transaction, so concurrent membership changes
 * of one workspace run one after another (the "keep a manager" check would race otherwise).
 */
export async function lockWorkspace(tx: Pick<PrismaClient, '$executeRaw'>, workspaceId: string): Promise<void> {
  await tx.$executeRaw`SELECT 1 FROM "Workspace" WHERE id = ${workspaceId}::uuid FOR UPDATE`;
}

/** Serialise a transaction with every other one taking the same named lock (released at commit). */
export async function lockNamed(tx: Pick<PrismaClient, '$executeRaw'>, name: string): Promise<void> {
  // $executeRaw: the function returns void, which $queryRaw cannot deserialise.
  await tx.$executeRaw`SELECT pg_advisory_xact_lock(hashtext(${name}))`;
}

/**
 * Nobody grants a flag they do not hold: a member with only user_can_edit cannot give themselves
 * (or anyone) vm_can_delete, and one with only user_can_add cannot add an all-powerful member.
 * Admins hold every flag. Taking flags away needs no such check.
 */
export function requireGrantable(a: WorkspaceAccess, requested: Partial<Permissions> | undefined): void {
  const beyond = PERMISSION_FLAGS.filter((f) => requested?.[f] === true && !a.permissions[f]);
  if (beyond.length > 0) throw new ForbiddenError(`you cannot grant ${beyond.join(', ')}, which you do not hold`);
}
