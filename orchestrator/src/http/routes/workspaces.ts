import { Type } from '@sinclair/typebox';
import { ConflictError, NotFoundError } from '@kloudak/common';
import type { Prisma } from '@kloudak/prisma';
import {
  ALL_PERMISSIONS,
  NO_PERMISSIONS,
  canManageMembers,
  toColumns,
  toPermissions,
  type Permissions as Perms,
} from '../../domain/permissions.js';
import { lockWorkspace, requireFlags, requireGrantable, workspaceAccess } from '../../store/access.js';
import { bumpTokenVersion } from '../../store/users.js';
import type { Services } from '../app.js';
import { route, type Principal, type RouteSpec } from '../route.js';
import {
  Description,
  ListQuery,
  Name,
  Page,
  Permissions,
  PermissionsPatch,
  Timestamp,
  Username,
  Uuid,
  WsParams,
} from '../schemas.js';
import { page } from './paging.js';

const WorkspaceSchema = Type.Object({
  id: Uuid,
  name: Name,
  description: Type.String(),
  permissions: Permissions,
  createdAt: Timestamp,
});
const MemberSchema = Type.Object({ username: Username, email: Type.String(), permissions: Permissions, since: Timestamp });
const MemberParams = Type.Object({ ws: Name, username: Username }, { additionalProperties: false });

function wsView(w: { id: string; name: string; description: string; createdAt: Date }, permissions: Perms) {
  return { id: w.id, name: w.name, description: w.description, permissions, createdAt: w.createdAt.toISOString() };
}

function memberView(m: { createdAt: Date; user: { username: string; email: string } } & Parameters<typeof toPermissions>[0]) {
  return { username: m.user.username, email: m.user.email, permissions: toPermissions(m), since: m.createdAt.toISOString() };
}

/** Refuse a change that would leave the workspace with nobody able to manage members. */
async function keepAManager(tx: Prisma.TransactionClient, workspaceId: string): Promise<void> {
  const managers = await tx.membership.count({
    where: { workspaceId, userCanAdd: true, userCanEdit: true, userCanDelete: true },
  });
  if (managers === 0) {
    throw new ConflictError('a workspace must keep a member with user_can_add, user_can_edit and user_can_delete');
  }
}

/** Refuse every token of every member of a workspace (its name or existence changed). */
async function bumpMembersTokens(tx: Prisma.TransactionClient, workspaceId: string): Promise<void> {
  const ms = await tx.membership.findMany({ where: { workspaceId }, select: { userId: true } });
  await bumpTokenVersion(tx, ms.map((m) => m.userId));
}

/** A member's row in a workspace, or 404. */
async function memberOf(tx: Prisma.TransactionClient, workspaceId: string, username: string) {
  const m = await tx.membership.findFirst({ where: { workspaceId, user: { username } } });
  if (!m) throw new NotFoundError('member', username);
  return m;
}

/** Workspaces and their members. */
export function workspaceRoutes(s: Services): RouteSpec[] {
  const db = s.db.client;
  return [
    route({
      method: 'post',
      path: '/workspaces',
      operationId: 'createWorkspace',
      summary: 'Create a workspace; the creator becomes a member with every permission',
      tag: 'workspaces',
      access: 'user',
      body: Type.Object({ name: Name, description: Type.Optional(Description) }, { additionalProperties: false }),
      response: { status: 201, description: 'the workspace', schema: WorkspaceSchema },
      errors: [409],
      async handler({ body, principal }) {
        const p = principal as Principal;
        const ws = await db.workspace.create({
          data: {
            name: body.name,
            description: body.description ?? '',
            memberships: { create: { userId: p.userId, ...toColumns(ALL_PERMISSIONS) } },
          },
        });
        return wsView(ws, ALL_PERMISSIONS);
      },
    }),
    route({
      method: 'get',
      path: '/workspaces',
      operationId: 'listWorkspaces',
      summary: 'The workspaces the caller belongs to',
      tag: 'workspaces',
      access: 'user',
      query: ListQuery,
      response: { status: 200, description: 'a page of workspaces', schema: Page(WorkspaceSchema) },
      async handler({ query, principal }) {
        const p = principal as Principal;
        const limit = query.limit ?? 100;
        const rows = await db.membership.findMany({
          where: { userId: p.userId, ...(query.after ? { workspace: { name: { gt: query.after } } } : {}) },
          include: { workspace: true },
          orderBy: { workspace: { name: 'asc' } },
          take: limit + 1,
        });
        return page(rows, limit, (m) => m.workspace.name, (m) => wsView(m.workspace, toPermissions(m)));
      },
    }),
    route({
      method: 'get',
      path: '/workspaces/{ws}',
      operationId: 'getWorkspace',
      summary: 'One workspace with the caller\'s permissions there',
      tag: 'workspaces',
      access: 'user',
      params: WsParams,
      response: { status: 200, description: 'the workspace', schema: WorkspaceSchema },
      errors: [404],
      async handler({ params, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        return wsView(a.workspace, a.permissions);
      },
    }),
    route({
      method: 'patch',
      path: '/workspaces/{ws}',
      operationId: 'updateWorkspace',
      summary: 'Rename or describe a workspace (needs user_can_edit)',
      tag: 'workspaces',
      access: 'user',
      params: WsParams,
      body: Type.Object(
        { name: Type.Optional(Name), description: Type.Optional(Description) },
        { additionalProperties: false, minProperties: 1 },
      ),
      response: { status: 200, description: 'the workspace', schema: WorkspaceSchema },
      errors: [403, 404, 409],
      async handler({ params, body, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        requireFlags(a, 'user_can_edit');
        const ws = await db.$transaction(async (tx) => {
          // No token is revoked: authorization reads live memberships, and the names a token lists
          // are a convenience that GET /auth/token refreshes.
          return tx.workspace.update({ where: { id: a.workspace.id }, data: body });
        });
        return wsView(ws, a.permissions);
      },
    }),
    route({
      method: 'delete',
      path: '/workspaces/{ws}',
      operationId: 'deleteWorkspace',
      summary: 'Delete an empty workspace (needs all three user permissions); 409 while it holds VMs or networks',
      tag: 'workspaces',
      access: 'user',
      params: WsParams,
      response: { status: 204, description: 'deleted' },
      errors: [403, 404, 409],
      async handler({ params, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        requireFlags(a, 'user_can_add', 'user_can_edit', 'user_can_delete');
        await db.$transaction(async (tx) => {
          const [vms, nets] = await Promise.all([
            tx.vm.count({ where: { workspaceId: a.workspace.id } }),
            tx.network.count({ where: { workspaceId: a.workspace.id } }),
          ]);
          if (vms + nets > 0) {
            throw new ConflictError('workspace still holds VMs or networks', { vms, networks: nets });
          }
          await bumpMembersTokens(tx, a.workspace.id);
          await tx.workspace.delete({ where: { id: a.workspace.id } });
        });
        return undefined;
      },
    }),
    route({
      method: 'get',
      path: '/workspaces/{ws}/members',
      operationId: 'listMembers',
      summary: 'Members of a workspace and their permissions',
      tag: 'members',
      access: 'user',
      params: WsParams,
      query: ListQuery,
      response: { status: 200, description: 'a page of members', schema: Page(MemberSchema) },
      errors: [404],
      async handler({ params, query, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        const limit = query.limit ?? 100;
        const rows = await db.membership.findMany({
          where: { workspaceId: a.workspace.id, ...(query.after ? { user: { username: { gt: query.after } } } : {}) },
          include: { user: { select: { username: true, email: true } } },
          orderBy: { user: { username: 'asc' } },
          take: limit + 1,
        });
        return page(rows, limit, (m) => m.user.username, memberView);
      },
    }),
    route({
      method: 'post',
      path: '/workspaces/{ws}/members',
      operationId: 'addMember',
      summary: 'Add a user to a workspace (needs user_can_add; only flags the caller holds can be granted); unspecified flags are false',
      tag: 'members',
      access: 'user',
      params: WsParams,
      body: Type.Object(
        { username: Username, permissions: Type.Optional(PermissionsPatch) },
        { additionalProperties: false },
      ),
      response: { status: 201, description: 'the member', schema: MemberSchema },
      errors: [403, 404, 409],
      async handler({ params, body, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        requireFlags(a, 'user_can_add');
        requireGrantable(a, body.permissions);
        const user = await db.user.findUnique({ where: { username: body.username } });
        if (!user) throw new NotFoundError('user', body.username);
        const perms = { ...NO_PERMISSIONS, ...body.permissions };
        const m = await db.membership.create({
          data: { workspaceId: a.workspace.id, userId: user.id, ...toColumns(perms) },
          include: { user: { select: { username: true, email: true } } },
        });
        return memberView(m);
      },
    }),
    route({
      method: 'patch',
      path: '/workspaces/{ws}/members/{username}',
      operationId: 'updateMember',
      summary: 'Change a member\'s permissions (needs user_can_edit; only flags the caller holds can be granted); they apply from the member\'s next request, without signing them out',
      tag: 'members',
      access: 'user',
      params: MemberParams,
      body: Type.Object({ permissions: PermissionsPatch }, { additionalProperties: false }),
      response: { status: 200, description: 'the member', schema: MemberSchema },
      errors: [403, 404, 409],
      async handler({ params, body, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        requireFlags(a, 'user_can_edit');
        requireGrantable(a, body.permissions);
        return db.$transaction(async (tx) => {
          await lockWorkspace(tx, a.workspace.id);
          const existing = await memberOf(tx, a.workspace.id, params.username);
          const m = await tx.membership.update({
            where: { id: existing.id },
            data: toColumns(body.permissions),
            include: { user: { select: { username: true, email: true } } },
          });
          if (!canManageMembers(toPermissions(m))) await keepAManager(tx, a.workspace.id);
          // Authorization reads the membership on every request, so the change applies from the
          // member's next request: nobody is signed out (only removal, logout, a password change
          // and account deletion revoke tokens).
          return memberView(m);
        });
      },
    }),
    route({
      method: 'delete',
      path: '/workspaces/{ws}/members/{username}',
      operationId: 'removeMember',
      summary: 'Remove a member (needs user_can_delete); refused for the last member who can manage members',
      tag: 'members',
      access: 'user',
      params: MemberParams,
      response: { status: 204, description: 'removed' },
      errors: [403, 404, 409],
      async handler({ params, principal }) {
        const a = await workspaceAccess(db, principal as Principal, params.ws);
        requireFlags(a, 'user_can_delete');
        await db.$transaction(async (tx) => {
          await lockWorkspace(tx, a.workspace.id);
          const existing = await memberOf(tx, a.workspace.id, params.username);
          await tx.membership.delete({ where: { id: existing.id } });
          await keepAManager(tx, a.workspace.id);
          await bumpTokenVersion(tx, [existing.userId]);
        });
        return undefined;
      },
    }),
  ];
}
