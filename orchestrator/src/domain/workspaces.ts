/**
 * Pure rules of workspaces and their members. No I/O: the use case counts, these decide.
 */
import { ConflictError } from '@kloudak/common';

/**
 * Every workspace keeps at least one member who can manage members (all three user flags), so
 * nobody can lock a workspace out of its own membership list. `managersLeft` is the count after
 * the change, inside the transaction that makes it.
 */
export function requireAManager(managersLeft: number): void {
  if (managersLeft === 0) {
    throw new ConflictError('a workspace must keep a member with user_can_add, user_can_edit and user_can_delete');
  }
}

/** A workspace is deleted only once it holds no VM and no network. */
export function requireEmptyWorkspace(held: { vms: number; networks: number }): void {
  if (held.vms + held.networks > 0) {
    throw new ConflictError('workspace still holds VMs or networks', { vms: held.vms, networks: held.networks });
  }
}
