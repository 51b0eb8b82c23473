// Workspace lookups for authorization, and the locks that serialise changes of one workspace.
import type { MembershipFlags } from '../domain/permissions.js';
import type { DbOrTx } from './db.js';

/** A workspace row as use cases see it. */
export interface WorkspaceRow {
  id: string;
  name: string;
  description: string;
  createdAt: Date;
  updatedAt: Date;
}

/** A workspace by name with one user's membership there (null: not a member); null when there is no such workspace. */
export async function workspaceWithMembership(
  db: DbOrTx,
  name: string,
  userId: string,
): Promise<{ workspace: WorkspaceRow; membership: MembershipFlags | null } | null> {
  const ws = await db.workspace.findUnique({
    where: { name },
    include: { memberships: { where: { userId }, take: 1 } },
  });
  if (!ws) return null;
  const { memberships, ...workspace } = ws;
  return { workspace, membership: memberships[0] ?? null };
}

/**
 * Take a row lock on a workspace for the rest of the transaction, so concurrent membership changes
 * of one workspace run one after another (the "keep a manager" check would race otherwise).
 */
export async function lockWorkspace(tx: Pick<DbOrTx, '$executeRaw'>, workspaceId: string): Promise<void> {
  await tx.$executeRaw`SELECT 1 FROM "Workspace" WHERE id = ${workspaceId}::uuid FOR UPDATE`;
}

/** Serialise a transaction with every other one taking the same named lock (released at commit). */
export async function lockNamed(tx: Pick<DbOrTx, '$executeRaw'>, name: string): Promise<void> {
  // $executeRaw: the function returns void, which $queryRaw cannot deserialise.
  await tx.$executeRaw`SELECT pg_advisory_xact_lock(hashtext(${name}))`;
}
