import { NotFoundError } from '@kloudak/common';
import { effectivePermissions, type Permissions } from '../domain/permissions.js';
import { workspaceWithMembership, type WorkspaceRow } from '../store/access.js';
import type { DbOrTx } from '../store/db.js';
import type { Principal } from './principal.js';

/** A workspace the caller may act in, with the flags they hold there. */
export interface WorkspaceAccess {
  workspace: WorkspaceRow;
  permissions: Permissions;
}

/**
 * Resolve a workspace for a caller from live memberships (never from the token's claims, so a
 * flag change applies on the next request). A workspace the caller does not belong to answers
 * 404, exactly like one that does not exist, so workspace names do not leak. Admins act with
 * every flag.
 */
export async function workspaceAccess(db: DbOrTx, p: Pick<Principal, 'userId' | 'isAdmin'>, name: string): Promise<WorkspaceAccess> {
  const found = await workspaceWithMembership(db, name, p.userId);
  const permissions = found ? effectivePermissions(found.membership, p.isAdmin) : null;
  if (!found || !permissions) throw new NotFoundError('workspace', name);
  return { workspace: found.workspace, permissions };
}
