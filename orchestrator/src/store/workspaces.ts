// Workspaces and memberships.
import type { MembershipFlags } from '../domain/permissions.js';
import type { WorkspaceRow } from './access.js';
import type { DbOrTx } from './db.js';

/** A membership with the member's name and email. */
export type MemberRow = MembershipFlags & { id: string; userId: string; createdAt: Date; user: { username: string; email: string } };

const withUser = { user: { select: { username: true, email: true } } } as const;

/** Create a workspace and its first member in one statement. */
export async function createWorkspace(
  db: DbOrTx,
  w: { name: string; description: string; ownerId: string; ownerFlags: Partial<MembershipFlags> },
): Promise<WorkspaceRow> {
  return db.workspace.create({
    data: { name: w.name, description: w.description, memberships: { create: { userId: w.ownerId, ...w.ownerFlags } } },
  });
}

/** A user's memberships with their workspaces, by workspace name, at most `take` after `after`. */
export async function membershipsOf(
  db: DbOrTx,
  userId: string,
  q: { after?: string; take: number },
): Promise<(MembershipFlags & { workspace: WorkspaceRow })[]> {
  return db.membership.findMany({
    where: { userId, ...(q.after ? { workspace: { name: { gt: q.after } } } : {}) },
    include: { workspace: true },
    orderBy: { workspace: { name: 'asc' } },
    take: q.take,
  });
}

export async function updateWorkspace(db: DbOrTx, id: string, data: { name?: string; description?: string }): Promise<WorkspaceRow> {
  return db.workspace.update({ where: { id }, data });
}

/** How many VMs and networks a workspace holds. */
export async function heldBy(db: DbOrTx, workspaceId: string): Promise<{ vms: number; networks: number }> {
  const [vms, networks] = await Promise.all([
    db.vm.count({ where: { workspaceId } }),
    db.network.count({ where: { workspaceId } }),
  ]);
  return { vms, networks };
}

/** Ids of a workspace's members. */
export async function memberIds(db: DbOrTx, workspaceId: string): Promise<string[]> {
  const ms = await db.membership.findMany({ where: { workspaceId }, select: { userId: true } });
  return ms.map((m) => m.userId);
}

export async function deleteWorkspace(db: DbOrTx, id: string): Promise<void> {
  await db.workspace.delete({ where: { id } });
}

/** Members of a workspace by username, at most `take` after `after`. */
export async function membersOf(db: DbOrTx, workspaceId: string, q: { after?: string; take: number }): Promise<MemberRow[]> {
  return db.membership.findMany({
    where: { workspaceId, ...(q.after ? { user: { username: { gt: q.after } } } : {}) },
    include: withUser,
    orderBy: { user: { username: 'asc' } },
    take: q.take,
  });
}

/** A member of a workspace by username, or null. */
export async function memberByUsername(db: DbOrTx, workspaceId: string, username: string): Promise<MemberRow | null> {
  return db.membership.findFirst({ where: { workspaceId, user: { username } }, include: withUser });
}

export async function createMembership(db: DbOrTx, m: { workspaceId: string; userId: string; flags: Partial<MembershipFlags> }): Promise<MemberRow> {
  return db.membership.create({ data: { workspaceId: m.workspaceId, userId: m.userId, ...m.flags }, include: withUser });
}

export async function updateMembership(db: DbOrTx, id: string, flags: Partial<MembershipFlags>): Promise<MemberRow> {
  return db.membership.update({ where: { id }, data: flags, include: withUser });
}

export async function deleteMembership(db: DbOrTx, id: string): Promise<void> {
  await db.membership.delete({ where: { id } });
}

/** Members holding all three user flags. */
export async function countManagers(db: DbOrTx, workspaceId: string): Promise<number> {
  return db.membership.count({ where: { workspaceId, userCanAdd: true, userCanEdit: true, userCanDelete: true } });
}
