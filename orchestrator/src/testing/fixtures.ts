// Test fixtures shared by the permission matrix and the fuzz tests: inventory and workspace rows
// inserted straight through Prisma (hosts, networks and VMs have no create route yet), unique
// names, and one valid request per route.
import { randomUUID } from 'node:crypto';
import type { PrismaClient } from '@kloudak/prisma';
import { hashSecret } from '../store/join-tokens.js';
import { PERMISSION_FLAGS, toColumns, type PermissionFlag, type Permissions } from '../domain/permissions.js';
import type { RouteSpec } from '../http/route.js';

let counter = 0;

/** A name unique in this process that matches the API's Name pattern. */
export function uniq(prefix: string): string {
  return `${prefix}-${(++counter).toString(36)}-${process.pid.toString(36)}`;
}

/** A /24 inside 10.0.0.0/8 that no other call in this process returns, with its gateway. */
export function freshSubnet(): { subnet: string; gateway: string; base: string } {
  const n = ++counter;
  const base = `10.${1 + ((n >> 8) % 250)}.${n & 255}`;
  return { subnet: `${base}.0/24`, gateway: `${base}.1`, base };
}

/** `METHOD /path` of a route, the key of every per-route table. */
export function routeKey(r: Pick<RouteSpec, 'method' | 'path'>): string {
  return `${r.method.toUpperCase()} ${r.path}`;
}

/** The path parameters a route's path names, in order. */
export function pathParams(path: string): string[] {
  return [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1] as string);
}

/** `/api/v1` + the route path with its parameters percent-encoded. */
export function fillPath(path: string, params: Record<string, string>): string {
  return (
    '/api/v1' +
    path.replace(/\{(\w+)\}/g, (_m, p: string) => {
      const v = params[p];
      if (v === undefined) throw new Error(`no value for path parameter ${p} of ${path}`);
      return encodeURIComponent(v);
    })
  );
}

/** Membership columns holding exactly these flags. */
export function flagColumns(flags: readonly PermissionFlag[]) {
  const perms = Object.fromEntries(PERMISSION_FLAGS.map((f) => [f, flags.includes(f)])) as Permissions;
  return toColumns(perms);
}

export interface Row {
  id: string;
  name: string;
}

/** One of everything, linked: an area with a pool, a template, a host, a join token, and a workspace holding a network and a VM. */
export interface World {
  area: Row & { subnet: string; gateway: string };
  joinToken: { id: string };
  pool: Row;
  template: Row;
  host: Row;
  workspace: Row;
  network: Row;
  vm: Row;
  /** A finished task of the workspace's VM. */
  task: { id: string };
}

export async function freshArea(db: PrismaClient): Promise<World['area']> {
  const { subnet, gateway } = freshSubnet();
  const a = await db.area.create({ data: { name: uniq('area'), subnet, gateway, vlanFirst: 100, vlanLast: 199 } });
  return { id: a.id, name: a.name, subnet, gateway };
}

export async function freshHost(db: PrismaClient, areaId: string): Promise<Row> {
  const h = await db.host.create({
    data: { name: uniq('kvm'), areaId, cpuCount: 16, ramMb: 65536, diskGb: 900, state: 'up', lastHeartbeatAt: new Date() },
  });
  return { id: h.id, name: h.name };
}

/**
 * A down host of the area whose agent stopped cleanly and left a VM running: its evacuation is
 * pending, held back until it is confirmed off (what POST /hosts/{id}/confirm-off needs).
 */
export async function freshFrozenHost(db: PrismaClient, areaId: string): Promise<Row> {
  const h = await db.host.create({
    data: { name: uniq('kvm'), areaId, cpuCount: 16, ramMb: 65536, diskGb: 900, state: 'down', downEpisode: 1, agentStoppedAt: new Date(), agentStoppedVmIds: [randomUUID()] },
  });
  await db.evacuation.create({ data: { hostId: h.id, episode: 1 } });
  return { id: h.id, name: h.name };
}

/** A host of the area with a finished drain task behind it (what GET /hosts/{id}/drain reads). */
export async function freshDrainedHost(db: PrismaClient, areaId: string): Promise<Row> {
  const host = await freshHost(db, areaId);
  await db.task.create({
    data: { kind: 'host.drain', workspaceId: null, targetType: 'host', targetId: host.id, state: 'succeeded', input: { name: host.name, mode: 'live' }, finishedAt: new Date() },
  });
  return host;
}

/** An unused join token of an area (its secret is thrown away: only its id is of use). */
export async function freshJoinToken(db: PrismaClient, areaId: string): Promise<{ id: string }> {
  const t = await db.joinToken.create({ data: { areaId, secretHash: hashSecret(uniq('secret')), expiresAt: new Date(Date.now() + 3600_000) } });
  return { id: t.id };
}

export async function freshPool(db: PrismaClient, areaId: string): Promise<Row> {
  const name = uniq('pool');
  const p = await db.storagePool.create({ data: { name, areaId, path: `/srv/pools/${name}`, type: 'netfs' } });
  return { id: p.id, name: p.name };
}

export async function freshTemplate(db: PrismaClient): Promise<Row> {
  const t = await db.template.create({
    data: { name: uniq('tpl'), os: 'debian-12', cpu: 1, ramMb: 512, diskGb: 4, image: 'debian-12.qcow2' },
  });
  return { id: t.id, name: t.name };
}

/** A workspace whose members hold the given flags (no token is invalidated: adding members keeps tokens valid). */
export async function freshWorkspace(
  db: PrismaClient,
  members: { userId: string; flags: readonly PermissionFlag[] }[],
): Promise<Row> {
  const w = await db.workspace.create({
    data: {
      name: uniq('ws'),
      description: 'fixture',
      memberships: { create: members.map((m) => ({ userId: m.userId, ...flagColumns(m.flags) })) },
    },
  });
  return { id: w.id, name: w.name };
}

/** Insert a full World; `members` join its workspace. */
export async function createWorld(
  db: PrismaClient,
  members: { userId: string; flags: readonly PermissionFlag[] }[] = [],
): Promise<World> {
  const area = await freshArea(db);
  const pool = await freshPool(db, area.id);
  const template = await freshTemplate(db);
  const host = await freshHost(db, area.id);
  const joinToken = await freshJoinToken(db, area.id);
  const workspace = await freshWorkspace(db, members);
  const network = await db.network.create({
    data: { name: uniq('net'), workspaceId: workspace.id, areaId: area.id, state: 'active' },
  });
  await db.vlanAllocation.create({ data: { areaId: area.id, vlan: 100, networkId: network.id } });
  const vm = await db.vm.create({
    data: {
      name: uniq('vm'),
      workspaceId: workspace.id,
      areaId: area.id,
      templateId: template.id,
      hostId: host.id,
      poolId: pool.id,
      cpu: 1,
      ramMb: 512,
      diskGb: 4,
      state: 'running',
    },
  });
  const base = area.subnet.replace(/\.0\/24$/, '');
  await db.ipAllocation.create({ data: { areaId: area.id, scope: `area:${area.id}`, address: `${base}.10`, vmId: vm.id } });
  const n = ++counter;
  const mac = `52:54:00:${[n >> 16, n >> 8, n].map((b) => (b & 255).toString(16).padStart(2, '0')).join(':')}`;
  await db.vmInterface.create({ data: { vmId: vm.id, networkId: network.id, mac, ip: `${base}.10` } });
  const task = await db.task.create({
    data: { kind: 'vm.create', workspaceId: workspace.id, targetType: 'vm', targetId: vm.id, state: 'succeeded', input: { name: vm.name }, finishedAt: new Date() },
  });
  return {
    task: { id: task.id },
    area,
    joinToken,
    pool,
    template,
    host,
    workspace,
    network: { id: network.id, name: network.name },
    vm: { id: vm.id, name: vm.name },
  };
}

/** Values for a route's path parameters that name existing objects of `w`. */
export function validParams(r: Pick<RouteSpec, 'path'>, w: World, member: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pathParams(r.path)) {
    if (p === 'ws') out[p] = w.workspace.name;
    else if (p === 'username') out[p] = member;
    else if (p === 'id') out[p] = r.path.startsWith('/hosts/join-tokens/') ? w.joinToken.id : r.path.includes('/tasks/') ? w.task.id : w.host.id;
    else if (p === 'name') {
      const kind = r.path.startsWith('/workspaces/') ? r.path.split('/')[3] : r.path.split('/')[1];
      const byKind: Record<string, string> = {
        areas: w.area.name,
        pools: w.pool.name,
        templates: w.template.name,
        networks: w.network.name,
        vms: w.vm.name,
      };
      const v = kind === undefined ? undefined : byKind[kind];
      if (v === undefined) throw new Error(`no fixture for {name} in ${r.path}`);
      out[p] = v;
    } else throw new Error(`no fixture for path parameter ${p} of ${r.path}`);
  }
  return out;
}

/**
 * A body the route's schema accepts (names fresh on every call). Only a shape: whether the request
 * succeeds still depends on the caller and the database.
 */
export function validBody(key: string, w: World, member: string, password = 'Str0ng-Test-Passphrase'): unknown {
  const { subnet, gateway } = freshSubnet();
  const bodies: Record<string, () => unknown> = {
    'POST /auth/signup': () => {
      const username = uniq('su').toLowerCase();
      return { username, email: `${username}@example.test`, password };
    },
    'POST /auth/login': () => ({ username: member, password }),
    'POST /auth/password': () => ({ currentPassword: 'Not-The-Current-Passw0rd', newPassword: 'An0ther-Long-Passphrase' }),
    'POST /workspaces': () => ({ name: uniq('ws'), description: 'made by a test' }),
    'PATCH /workspaces/{ws}': () => ({ description: 'patched by a test' }),
    'POST /workspaces/{ws}/members': () => ({ username: member, permissions: { user_can_add: true } }),
    'PATCH /workspaces/{ws}/members/{username}': () => ({ permissions: { user_can_edit: true } }),
    'POST /areas': () => ({ name: uniq('area'), subnet, gateway, vlanRange: '100-199' }),
    'PATCH /areas/{name}': () => ({ gateway: w.area.gateway }),
    'POST /pools': () => {
      const name = uniq('pool');
      return { name, area: w.area.name, path: `/srv/pools/${name}`, type: 'dir' };
    },
    'POST /templates': () => ({ name: uniq('tpl'), os: 'debian-12', cpu: 2, ramMb: 1024, diskGb: 10, image: 'debian-12.qcow2' }),
    'PATCH /templates/{name}': () => ({ description: 'patched by a test' }),
    'PATCH /hosts/{id}': () => ({ maintenance: false }),
    'POST /hosts/{id}/drain': () => ({ mode: 'live' }),
    'POST /hosts/join-tokens': () => ({ area: w.area.name, expiresIn: 600 }),
  };
  bodies['POST /workspaces/{ws}/networks'] = () => ({ name: uniq('net'), area: w.area.name, description: 'made by a test' });
  bodies['PATCH /workspaces/{ws}/networks/{name}'] = () => ({ description: 'patched by a test' });
  bodies['POST /workspaces/{ws}/vms'] = () => ({ name: uniq('vm'), template: w.template.name, networks: [w.network.name], cpu: 1, ramMb: 256 });
  bodies['PATCH /workspaces/{ws}/vms/{name}'] = () => ({ description: 'patched by a test' });
  bodies['POST /workspaces/{ws}/vms/{name}/actions'] = () => ({ action: 'stop' });
  bodies['PUT /workspaces/{ws}/quota'] = () => ({});
  const make = bodies[key];
  if (!make) throw new Error(`no valid body for ${key}`);
  return make();
}

/** A network of the world's workspace with its own VLAN (nothing attached). */
export async function freshNetwork(db: PrismaClient, w: World): Promise<Row> {
  const n = await db.network.create({ data: { name: uniq('net'), workspaceId: w.workspace.id, areaId: w.area.id, state: 'active' } });
  const used = await db.vlanAllocation.findMany({ where: { areaId: w.area.id }, select: { vlan: true } });
  const vlan = Math.max(100, ...used.map((u) => u.vlan)) + 1;
  await db.vlanAllocation.create({ data: { areaId: w.area.id, vlan, networkId: n.id } });
  return { id: n.id, name: n.name };
}

/** A running VM of the world's workspace on `hostId` (default: the world's host), with no address. */
export async function freshVm(db: PrismaClient, w: World, hostId = w.host.id, opts: { ha?: boolean } = {}): Promise<Row> {
  const tpl = await db.template.findUniqueOrThrow({ where: { id: w.template.id } });
  const vm = await db.vm.create({
    data: { name: uniq('vm'), workspaceId: w.workspace.id, areaId: w.area.id, templateId: tpl.id, hostId, poolId: w.pool.id, cpu: 1, ramMb: 256, diskGb: tpl.diskGb, state: 'running', haEnabled: opts.ha ?? false },
  });
  return { id: vm.id, name: vm.name };
}
