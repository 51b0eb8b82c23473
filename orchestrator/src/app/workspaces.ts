// Workspaces: create, list, read, rename or describe, delete.
import { ALL_PERMISSIONS, requireFlags, toColumns, toPermissions, type Permissions } from '../domain/permissions.js';
import { requireEmptyWorkspace } from '../domain/workspaces.js';
import type { WorkspaceRow } from '../store/access.js';
import { transaction } from '../store/db.js';
import { bumpTokenVersion } from '../store/users.js';
import { createWorkspace as insertWorkspace, deleteWorkspace as removeWorkspace, heldBy, memberIds, membershipsOf, updateWorkspace as writeWorkspace } from '../store/workspaces.js';
import { workspaceAccess } from './access.js';
import { infraEvent, record, withEvents, workspaceEvent } from './events.js';
import { tokensRevoked } from './auth.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';

/** A workspace with the caller's flags there. */
export interface WorkspaceView {
  id: string;
  name: string;
  description: string;
  permissions: Permissions;
  createdAt: string;
}

function view(w: WorkspaceRow, permissions: Permissions): WorkspaceView {
  return { id: w.id, name: w.name, description: w.description, permissions, createdAt: w.createdAt.toISOString() };
}

/** Create a workspace; the creator becomes a member with every flag. */
export async function createWorkspace(s: Services, c: Caller, input: { name: string; description?: string }): Promise<WorkspaceView> {
  const p = signedIn(c);
  const ws = await withEvents(
    s,
    (tx) => insertWorkspace(tx, { name: input.name, description: input.description ?? '', ownerId: p.userId, ownerFlags: toColumns(ALL_PERMISSIONS) }),
    (ws) => workspaceEvent(ws.id, 'workspace', ws.id, 'created', { name: ws.name, data: { by: p.username } }),
  );
  return view(ws, ALL_PERMISSIONS);
}

/** The workspaces the caller belongs to, by name. */
export async function listWorkspaces(s: Services, c: Caller, q: ListInput): Promise<Page<WorkspaceView>> {
  const p = signedIn(c);
  const limit = q.limit ?? DEFAULT_LIMIT;
  const rows = await membershipsOf(s.db.client, p.userId, { ...(q.after ? { after: q.after } : {}), take: limit + 1 });
  return page(rows, limit, (m) => m.workspace.name, (m) => view(m.workspace, toPermissions(m)));
}

/** One workspace with the caller's flags there (404 for non-members). */
export async function getWorkspace(s: Services, c: Caller, name: string): Promise<WorkspaceView> {
  const a = await workspaceAccess(s.db.client, signedIn(c), name);
  return view(a.workspace, a.permissions);
}

/** Rename or describe a workspace (user_can_edit). Nobody is signed out: tokens' names are a convenience. */
export async function updateWorkspace(s: Services, c: Caller, name: string, input: { name?: string; description?: string }): Promise<WorkspaceView> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, name);
  requireFlags(a.permissions, 'user_can_edit');
  const ws = await withEvents(
    s,
    (tx) => writeWorkspace(tx, a.workspace.id, input),
    (ws) => workspaceEvent(ws.id, 'workspace', ws.id, 'updated', { name: ws.name, data: { by: p.username } }),
  );
  return view(ws, a.permissions);
}

/**
 * Delete an empty workspace (all three user flags). Its members lose it: their tokens are refused,
 * like on removal from a workspace.
 */
export async function deleteWorkspace(s: Services, c: Caller, name: string): Promise<void> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, name);
  requireFlags(a.permissions, 'user_can_add', 'user_can_edit', 'user_can_delete');
  const members = await transaction(s.db.client, async (tx) => {
    requireEmptyWorkspace(await heldBy(tx, a.workspace.id));
    const members = await memberIds(tx, a.workspace.id);
    await bumpTokenVersion(tx, members);
    await removeWorkspace(tx, a.workspace.id);
    await record(
      tx,
      workspaceEvent(a.workspace.id, 'workspace', a.workspace.id, 'deleted', { name: a.workspace.name, data: { by: p.username } }),
      ...members.map((id) => infraEvent('user', id, 'revoked')),
    );
    return members;
  });
  tokensRevoked(s, members);
}
