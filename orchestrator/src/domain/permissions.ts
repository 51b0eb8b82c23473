import { ForbiddenError } from '@kloudak/common';

/**
 * The seed's nine per-workspace permission flags, by their wire names (snake_case, as the seed's
 * tokens carried them) and their database names.
 */
export const PERMISSION_FLAGS = [
  'user_can_add',
  'user_can_edit',
  'user_can_delete',
  'vm_can_add',
  'vm_can_edit',
  'vm_can_delete',
  'network_can_add',
  'network_can_edit',
  'network_can_delete',
] as const;

/** One of the nine flags. */
export type PermissionFlag = (typeof PERMISSION_FLAGS)[number];

/** All nine flags of one member of one workspace. */
export type Permissions = Record<PermissionFlag, boolean>;

/** The membership columns, as the database names them. */
export interface MembershipFlags {
  userCanAdd: boolean;
  userCanEdit: boolean;
  userCanDelete: boolean;
  vmCanAdd: boolean;
  vmCanEdit: boolean;
  vmCanDelete: boolean;
  networkCanAdd: boolean;
  networkCanEdit: boolean;
  networkCanDelete: boolean;
}

const COLUMN: Record<PermissionFlag, keyof MembershipFlags> = {
  user_can_add: 'userCanAdd',
  user_can_edit: 'userCanEdit',
  user_can_delete: 'userCanDelete',
  vm_can_add: 'vmCanAdd',
  vm_can_edit: 'vmCanEdit',
  vm_can_delete: 'vmCanDelete',
  network_can_add: 'networkCanAdd',
  network_can_edit: 'networkCanEdit',
  network_can_delete: 'networkCanDelete',
};

/** Every flag set: the creator of a workspace, and admins everywhere. */
export const ALL_PERMISSIONS: Permissions = Object.freeze(
  Object.fromEntries(PERMISSION_FLAGS.map((f) => [f, true])) as Permissions,
);

/** No flag set: a new member unless the request says otherwise. */
export const NO_PERMISSIONS: Permissions = Object.freeze(
  Object.fromEntries(PERMISSION_FLAGS.map((f) => [f, false])) as Permissions,
);

/** Database row → wire flags. */
export function toPermissions(m: MembershipFlags): Permissions {
  return Object.fromEntries(PERMISSION_FLAGS.map((f) => [f, m[COLUMN[f]]])) as Permissions;
}

/** Wire flags (possibly partial) → database columns, only for the flags given. */
export function toColumns(p: Partial<Permissions>): Partial<MembershipFlags> {
  const out: Partial<MembershipFlags> = {};
  for (const f of PERMISSION_FLAGS) {
    const v = p[f];
    if (v !== undefined) out[COLUMN[f]] = v;
  }
  return out;
}

/**
 * A member who can manage members holds all three user flags. Every workspace keeps at least
 * one, so nobody can lock a workspace out of its own membership list.
 */
export function canManageMembers(p: Permissions): boolean {
  return p.user_can_add && p.user_can_edit && p.user_can_delete;
}

/**
 * The flags a user acts with in a workspace: a member's own; admins every flag, member or not.
 * Null when the user may not act there, nor learn that it exists.
 */
export function effectivePermissions(membership: MembershipFlags | null, isAdmin: boolean): Permissions | null {
  if (isAdmin) return ALL_PERMISSIONS;
  return membership ? toPermissions(membership) : null;
}

/** Throw 403 unless every flag is held. */
export function requireFlags(p: Permissions, ...flags: PermissionFlag[]): void {
  const missing = flags.filter((f) => !p[f]);
  if (missing.length > 0) throw new ForbiddenError(`this needs the permission ${missing.join(' and ')}`);
}

/**
 * Nobody grants a flag they do not hold: a member with only user_can_edit cannot give themselves
 * (or anyone) vm_can_delete, and one with only user_can_add cannot add an all-powerful member.
 * Admins hold every flag. Taking flags away needs no such check.
 */
export function requireGrantable(p: Permissions, requested: Partial<Permissions> | undefined): void {
  const beyond = PERMISSION_FLAGS.filter((f) => requested?.[f] === true && !p[f]);
  if (beyond.length > 0) throw new ForbiddenError(`you cannot grant ${beyond.join(', ')}, which you do not hold`);
}
