// Members of a workspace and their flags.
import { NotFoundError } from '@kloudak/common';
import {
  canManageMembers,
  NO_PERMISSIONS,
  requireFlags,
  requireGrantable,
  toColumns,
  toPermissions,
  type Permissions,
} from '../domain/permissions.js';
import { requireAManager } from '../domain/workspaces.js';
import { lockWorkspace } from '../store/access.js';
import { transaction, type Tx } from '../store/db.js';
import { bumpTokenVersion, userByUsername } from '../store/users.js';
import {
  countManagers,
  createMembership,
  deleteMembership,
  memberByUsername,
  membersOf,
  updateMembership,
  type MemberRow,
} from '../store/workspaces.js';
import { workspaceAccess } from './access.js';
import { infraEvent, record, withEvents, workspaceEvent } from './events.js';
import { tokensRevoked } from './auth.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';

/** A member of a workspace and their flags. */
export interface MemberView {
  username: string;
  email: string;
  permissions: Permissions;
  since: string;
}

function view(m: MemberRow): MemberView {
  return { username: m.user.username, email: m.user.email, permissions: toPermissions(m), since: m.createdAt.toISOString() };
}

async function memberOf(tx: Tx, workspaceId: string, username: string): Promise<MemberRow> {
  const m = await memberByUsername(tx, workspaceId, username);
  if (!m) throw new NotFoundError('member', username);
  return m;
}

/** Members of a workspace, by username (any member). */
export async function listMembers(s: Services, c: Caller, ws: string, q: ListInput): Promise<Page<MemberView>> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const limit = q.limit ?? DEFAULT_LIMIT;
  const rows = await membersOf(s.db.client, a.workspace.id, { ...(q.after ? { after: q.after } : {}), take: limit + 1 });
  return page(rows, limit, (m) => m.user.username, view);
}

/** Add a user (user_can_add; only flags the caller holds can be granted; unspecified flags are false). */
export async function addMember(
  s: Services,
  c: Caller,
  ws: string,
  input: { username: string; permissions?: Partial<Permissions> },
): Promise<MemberView> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'user_can_add');
  requireGrantable(a.permissions, input.permissions);
  const user = await userByUsername(s.db.client, input.username);
  if (!user) throw new NotFoundError('user', input.username);
  const m = await withEvents(
    s,
    (tx) => createMembership(tx, { workspaceId: a.workspace.id, userId: user.id, flags: toColumns({ ...NO_PERMISSIONS, ...input.permissions }) }),
    (m) => workspaceEvent(a.workspace.id, 'member', user.username, 'added', { name: user.username, data: { permissions: toPermissions(m), by: p.username } }),
  );
  return view(m);
}

/**
 * Change a member's flags (user_can_edit; only flags the caller holds can be granted). The change
 * applies from the member's next request: authorization reads memberships live, so nobody is
 * signed out (only removal, logout, a password change and account deletion revoke tokens).
 */
export async function updateMember(
  s: Services,
  c: Caller,
  ws: string,
  username: string,
  input: { permissions: Partial<Permissions> },
): Promise<MemberView> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'user_can_edit');
  requireGrantable(a.permissions, input.permissions);
  const m = await transaction(s.db.client, async (tx) => {
    // Changes of one workspace's members run one after another, or two demotions could each see the other's manager.
    await lockWorkspace(tx, a.workspace.id);
    const existing = await memberOf(tx, a.workspace.id, username);
    const updated = await updateMembership(tx, existing.id, toColumns(input.permissions));
    if (!canManageMembers(toPermissions(updated))) requireAManager(await countManagers(tx, a.workspace.id));
    await record(tx, workspaceEvent(a.workspace.id, 'member', username, 'updated', { name: username, data: { permissions: toPermissions(updated), by: p.username } }));
    return updated;
  });
  return view(m);
}

/** Remove a member (user_can_delete); refused for the last member who can manage members. Their tokens are refused. */
export async function removeMember(s: Services, c: Caller, ws: string, username: string): Promise<void> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'user_can_delete');
  const removed = await transaction(s.db.client, async (tx) => {
    await lockWorkspace(tx, a.workspace.id);
    const existing = await memberOf(tx, a.workspace.id, username);
    await deleteMembership(tx, existing.id);
    requireAManager(await countManagers(tx, a.workspace.id));
    await bumpTokenVersion(tx, [existing.userId]);
    // The member's tokens are refused from now on: open event streams close on the second event.
    await record(
      tx,
      workspaceEvent(a.workspace.id, 'member', username, 'removed', { name: username, data: { by: p.username } }),
      infraEvent('user', existing.userId, 'revoked', { name: username }),
    );
    return existing.userId;
  });
  tokensRevoked(s, [removed]);
}
