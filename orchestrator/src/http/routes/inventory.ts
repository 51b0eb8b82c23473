import { Type, type TSchema } from '@sinclair/typebox';
import { ConflictError, NotFoundError, ValidationError } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import {
  cidrsOverlap,
  formatVlanRange,
  gatewayProblem,
  parseCidr,
  parseVlanRange,
  type Cidr,
} from '../../domain/inventory-rules.js';
import { lockNamed } from '../../store/access.js';
import type { Services } from '../app.js';
import { route, type RouteSpec } from '../route.js';
import type { HostLinkStatus } from '../../agent-api/link.js';
import { Description, ListQuery, Name, NameParams, Page, Timestamp, Uuid } from '../schemas.js';
import { page } from './paging.js';

function invalid(path: string, message: string): ValidationError {
  return new ValidationError(message, { in: 'body', problems: [{ path, message }] });
}

// ---------- areas ----------

const AreaSchema = Type.Object({
  id: Uuid,
  name: Name,
  subnet: Type.String(),
  gateway: Type.String(),
  vlanRange: Type.String(),
  createdAt: Timestamp,
});
const AreaFields = {
  name: Name,
  subnet: Type.String({ maxLength: 18, description: 'IPv4 CIDR, e.g. 10.20.0.0/16; may not overlap another area' }),
  gateway: Type.String({ maxLength: 15, description: 'inside the subnet' }),
  vlanRange: Type.String({ maxLength: 9, description: '"first-last" within 2-4094, e.g. "100-199"' }),
};

type AreaRow = { id: string; name: string; subnet: string; gateway: string; vlanFirst: number; vlanLast: number; createdAt: Date };
function areaView(a: AreaRow) {
  return {
    id: a.id,
    name: a.name,
    subnet: a.subnet,
    gateway: a.gateway,
    vlanRange: formatVlanRange(a.vlanFirst, a.vlanLast),
    createdAt: a.createdAt.toISOString(),
  };
}

/** Check an area's subnet, gateway and VLAN range; returns the parsed values. */
function checkArea(subnet: string, gateway: string, vlanRange: string): { cidr: Cidr; vlanFirst: number; vlanLast: number } {
  const cidr = parseCidr(subnet);
  if ('error' in cidr) throw invalid('/subnet', cidr.error);
  const gw = gatewayProblem(cidr, gateway);
  if (gw) throw invalid('/gateway', gw);
  const vr = parseVlanRange(vlanRange);
  if ('error' in vr) throw invalid('/vlanRange', vr.error);
  return { cidr, vlanFirst: vr.first, vlanLast: vr.last };
}

async function refuseOverlap(tx: Pick<PrismaClient, 'area'>, cidr: Cidr, exceptId?: string): Promise<void> {
  const others = await tx.area.findMany({ where: exceptId ? { id: { not: exceptId } } : {}, select: { name: true, subnet: true } });
  for (const o of others) {
    const oc = parseCidr(o.subnet);
    if (!('error' in oc) && cidrsOverlap(cidr, oc)) {
      throw new ConflictError(`subnet overlaps area '${o.name}' (${o.subnet})`, { area: o.name });
    }
  }
}

// ---------- pools ----------

const POOL_TYPES = ['dir', 'fs', 'netfs', 'logical', 'iscsi', 'rbd', 'gluster'] as const;
const PoolPath = Type.String({
  maxLength: 255,
  pattern: '^/(?!.*(?:^|/)\\.\\.(?:/|$))[A-Za-z0-9._/-]*$',
  description: 'absolute path, the same on every host of the area',
});
const PoolSchema = Type.Object({
  id: Uuid,
  name: Name,
  area: Name,
  path: Type.String(),
  shared: Type.Boolean(),
  type: Type.String(),
  createdAt: Timestamp,
});
type PoolRow = { id: string; name: string; path: string; shared: boolean; type: string; createdAt: Date; area: { name: string } };
function poolView(p: PoolRow) {
  return { id: p.id, name: p.name, area: p.area.name, path: p.path, shared: p.shared, type: p.type, createdAt: p.createdAt.toISOString() };
}

// ---------- templates ----------

const TemplateFields = {
  name: Name,
  os: Type.String({ minLength: 1, maxLength: 64 }),
  description: Description,
  cpu: Type.Integer({ minimum: 1, maximum: 256 }),
  ramMb: Type.Integer({ minimum: 64, maximum: 4 * 1024 * 1024 }),
  diskGb: Type.Integer({ minimum: 1, maximum: 65536 }),
  image: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$', description: 'volume name of the base image in the area\'s pools' }),
};
const TemplateSchema = Type.Object({ id: Uuid, ...TemplateFields, createdAt: Timestamp });
type TemplateRow = { id: string; name: string; os: string; description: string; cpu: number; ramMb: number; diskGb: number; image: string; createdAt: Date };
function templateView(t: TemplateRow) {
  return { id: t.id, name: t.name, os: t.os, description: t.description, cpu: t.cpu, ramMb: t.ramMb, diskGb: t.diskGb, image: t.image, createdAt: t.createdAt.toISOString() };
}

// ---------- hosts ----------

const HostUsageSchema = Type.Object({
  at: Timestamp,
  cpuPercent: Type.Number(),
  memoryUsedBytes: Type.Integer(),
  memoryTotalBytes: Type.Integer(),
  diskUsedBytes: Type.Integer(),
  diskTotalBytes: Type.Integer(),
  libvirtConnected: Type.Boolean({ description: "whether the agent could read libvirt for this heartbeat (false while libvirtd restarts or does not answer)" }),
});
const HostSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  area: Name,
  state: Type.String({ description: 'liveness: unknown, up, suspect, down, fenced' }),
  adminState: Type.String({ description: 'active, maintenance or drained' }),
  capacity: Type.Object({ cpus: Type.Integer(), ramMb: Type.Integer(), diskGb: Type.Integer(), memoryBytes: Type.Integer(), diskBytes: Type.Integer() }),
  agentVersion: Type.String(),
  lastHeartbeatAt: Type.Union([Timestamp, Type.Null()]),
  vms: Type.Integer(),
  createdAt: Timestamp,
  /** Live view, from the orchestrator holding the host's session. */
  connected: Type.Boolean({ description: 'the agent has a session open on this orchestrator' }),
  usage: Type.Union([HostUsageSchema, Type.Null()], { description: 'the last heartbeat\'s usage; null before the first' }),
  agentStartedAt: Type.Union([Timestamp, Type.Null()]),
  certificateExpiresAt: Type.Union([Timestamp, Type.Null()]),
});
type HostRow = {
  id: string; name: string; state: string; adminState: string; cpuCount: number; ramMb: number; diskGb: number;
  memoryBytes: bigint; diskBytes: bigint; agentStartedAt: Date | null; certExpiresAt: Date | null;
  agentVersion: string; lastHeartbeatAt: Date | null; createdAt: Date; area: { name: string }; _count: { vms: number };
};
function hostView(h: HostRow, link: HostLinkStatus) {
  // The link's in-memory view is fresher than the row (lastHeartbeatAt is written every 30 s at most).
  const last = link.lastHeartbeatAt && (!h.lastHeartbeatAt || link.lastHeartbeatAt > h.lastHeartbeatAt) ? link.lastHeartbeatAt : h.lastHeartbeatAt;
  const u = link.usage;
  return {
    id: h.id,
    name: h.name,
    area: h.area.name,
    state: h.state,
    adminState: h.adminState,
    capacity: { cpus: h.cpuCount, ramMb: h.ramMb, diskGb: h.diskGb, memoryBytes: Number(h.memoryBytes), diskBytes: Number(h.diskBytes) },
    agentVersion: h.agentVersion,
    lastHeartbeatAt: last ? last.toISOString() : null,
    vms: h._count.vms,
    createdAt: h.createdAt.toISOString(),
    connected: link.connected,
    usage: u
      ? {
          at: u.at.toISOString(),
          cpuPercent: u.cpuPercent,
          memoryUsedBytes: u.memoryUsedBytes,
          memoryTotalBytes: u.memoryTotalBytes,
          diskUsedBytes: u.diskUsedBytes,
          diskTotalBytes: u.diskTotalBytes,
          libvirtConnected: u.libvirtConnected,
        }
      : null,
    agentStartedAt: h.agentStartedAt?.toISOString() ?? null,
    certificateExpiresAt: h.certExpiresAt?.toISOString() ?? null,
  };
}
const hostInclude = { area: { select: { name: true } }, _count: { select: { vms: true } } } as const;
const IdParams = Type.Object({ id: Uuid }, { additionalProperties: false });

function listQuery(after: string | undefined) {
  return after ? { name: { gt: after } } : {};
}

/** `area` → `Area`: operationIds are camelCase (`listAreas`, `getArea`), as client generators expect. */
function capital(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

function readRoutes(tag: string, kind: string, access: 'user' | 'admin', schema: TSchema, list: (q: { limit?: number; after?: string }) => Promise<unknown>, get: (name: string) => Promise<unknown>): RouteSpec[] {
  return [
    route({
      method: 'get',
      path: `/${tag}`,
      operationId: `list${capital(tag)}`,
      summary: `List ${tag}`,
      tag,
      access,
      query: ListQuery,
      response: { status: 200, description: `a page of ${tag}`, schema: Page(schema) },
      handler: ({ query }) => list(query),
    }),
    route({
      method: 'get',
      path: `/${tag}/{name}`,
      operationId: `get${capital(kind)}`,
      summary: `One ${kind}`,
      tag,
      access,
      params: NameParams,
      response: { status: 200, description: `the ${kind}`, schema },
      errors: [404],
      handler: ({ params }) => get(params.name),
    }),
  ];
}

function deleteRoute(tag: string, kind: string, del: (name: string) => Promise<void>): RouteSpec {
  return route({
    method: 'delete',
    path: `/${tag}/{name}`,
    operationId: `delete${capital(kind)}`,
    summary: `Delete a ${kind}; 409 while other objects use it`,
    tag,
    access: 'admin',
    params: NameParams,
    response: { status: 204, description: 'deleted' },
    errors: [404, 409],
    async handler({ params }) {
      await del(params.name);
      return undefined;
    },
  });
}

/** Areas, storage pools, templates and hosts: admins manage them; users read areas and templates. */
export function inventoryRoutes(s: Services): RouteSpec[] {
  const db = s.db.client;

  async function areaByName(name: string) {
    const a = await db.area.findUnique({ where: { name } });
    if (!a) throw new NotFoundError('area', name);
    return a;
  }
  async function areaId(name: string, path = '/area'): Promise<string> {
    const a = await db.area.findUnique({ where: { name }, select: { id: true } });
    if (!a) throw invalid(path, `area '${name}' does not exist`);
    return a.id;
  }

  return [
    // ----- areas -----
    ...readRoutes(
      'areas',
      'area',
      'user',
      AreaSchema,
      async (q) => {
        const limit = q.limit ?? 100;
        const rows = await db.area.findMany({ where: listQuery(q.after), orderBy: { name: 'asc' }, take: limit + 1 });
        return page(rows, limit, (r) => r.name, areaView);
      },
      async (name) => areaView(await areaByName(name)),
    ),
    route({
      method: 'post',
      path: '/areas',
      operationId: 'createArea',
      summary: 'Create an area (a failover domain and a subnet)',
      tag: 'areas',
      access: 'admin',
      body: Type.Object(AreaFields, { additionalProperties: false }),
      response: { status: 201, description: 'the area', schema: AreaSchema },
      errors: [409],
      async handler({ body }) {
        const { cidr, vlanFirst, vlanLast } = checkArea(body.subnet, body.gateway, body.vlanRange);
        const a = await db.$transaction(async (tx) => {
          await lockNamed(tx, 'kloudak.areas');
          await refuseOverlap(tx, cidr);
          return tx.area.create({ data: { name: body.name, subnet: body.subnet, gateway: body.gateway, vlanFirst, vlanLast } });
        });
        return areaView(a);
      },
    }),
    route({
      method: 'patch',
      path: '/areas/{name}',
      operationId: 'updateArea',
      summary: 'Change an area; its subnet and VLAN range are fixed once addresses or VLANs are allocated',
      tag: 'areas',
      access: 'admin',
      params: NameParams,
      body: Type.Partial(Type.Object(AreaFields), { additionalProperties: false, minProperties: 1 }),
      response: { status: 200, description: 'the area', schema: AreaSchema },
      errors: [404, 409],
      async handler({ params, body }) {
        const a = await db.$transaction(async (tx) => {
          await lockNamed(tx, 'kloudak.areas');
          const cur = await tx.area.findUnique({ where: { name: params.name } });
          if (!cur) throw new NotFoundError('area', params.name);
          const subnet = body.subnet ?? cur.subnet;
          const gateway = body.gateway ?? cur.gateway;
          const vlanRange = body.vlanRange ?? formatVlanRange(cur.vlanFirst, cur.vlanLast);
          const { cidr, vlanFirst, vlanLast } = checkArea(subnet, gateway, vlanRange);
          if (subnet !== cur.subnet || vlanFirst !== cur.vlanFirst || vlanLast !== cur.vlanLast) {
            const [ips, vlans] = await Promise.all([
              tx.ipAllocation.count({ where: { areaId: cur.id } }),
              tx.vlanAllocation.count({ where: { areaId: cur.id } }),
            ]);
            if (ips + vlans > 0) throw new ConflictError('subnet and VLAN range cannot change while addresses or VLANs are allocated');
          }
          if (subnet !== cur.subnet) await refuseOverlap(tx, cidr, cur.id);
          return tx.area.update({ where: { id: cur.id }, data: { name: body.name ?? cur.name, subnet, gateway, vlanFirst, vlanLast } });
        });
        return areaView(a);
      },
    }),
    deleteRoute('areas', 'area', async (name) => {
      await db.area.delete({ where: { id: (await areaByName(name)).id } });
    }),

    // ----- pools -----
    ...readRoutes(
      'pools',
      'pool',
      'admin',
      PoolSchema,
      async (q) => {
        const limit = q.limit ?? 100;
        const rows = await db.storagePool.findMany({ where: listQuery(q.after), include: { area: { select: { name: true } } }, orderBy: { name: 'asc' }, take: limit + 1 });
        return page(rows, limit, (r) => r.name, poolView);
      },
      async (name) => {
        const p = await db.storagePool.findUnique({ where: { name }, include: { area: { select: { name: true } } } });
        if (!p) throw new NotFoundError('pool', name);
        return poolView(p);
      },
    ),
    route({
      method: 'post',
      path: '/pools',
      operationId: 'createPool',
      summary: 'Register a storage pool, mounted at the same path on every host of its area',
      tag: 'pools',
      access: 'admin',
      body: Type.Object(
        { name: Name, area: Name, path: PoolPath, shared: Type.Optional(Type.Boolean({ default: true })), type: Type.Union(POOL_TYPES.map((t) => Type.Literal(t))) },
        { additionalProperties: false },
      ),
      response: { status: 201, description: 'the pool', schema: PoolSchema },
      errors: [409],
      async handler({ body }) {
        const aid = await areaId(body.area);
        const dup = await db.storagePool.findFirst({ where: { areaId: aid, path: body.path } });
        if (dup) throw new ConflictError(`pool '${dup.name}' already uses this path in area '${body.area}'`);
        const p = await db.storagePool.create({
          data: { name: body.name, areaId: aid, path: body.path, shared: body.shared ?? true, type: body.type },
          include: { area: { select: { name: true } } },
        });
        return poolView(p);
      },
    }),
    deleteRoute('pools', 'pool', async (name) => {
      const p = await db.storagePool.findUnique({ where: { name } });
      if (!p) throw new NotFoundError('pool', name);
      await db.storagePool.delete({ where: { id: p.id } });
    }),

    // ----- templates -----
    ...readRoutes(
      'templates',
      'template',
      'user',
      TemplateSchema,
      async (q) => {
        const limit = q.limit ?? 100;
        const rows = await db.template.findMany({ where: listQuery(q.after), orderBy: { name: 'asc' }, take: limit + 1 });
        return page(rows, limit, (r) => r.name, templateView);
      },
      async (name) => {
        const t = await db.template.findUnique({ where: { name } });
        if (!t) throw new NotFoundError('template', name);
        return templateView(t);
      },
    ),
    route({
      method: 'post',
      path: '/templates',
      operationId: 'createTemplate',
      summary: 'Create a VM template',
      tag: 'templates',
      access: 'admin',
      body: Type.Object({ ...TemplateFields, description: Type.Optional(Description) }, { additionalProperties: false }),
      response: { status: 201, description: 'the template', schema: TemplateSchema },
      errors: [409],
      async handler({ body }) {
        return templateView(await db.template.create({ data: { ...body, description: body.description ?? '' } }));
      },
    }),
    route({
      method: 'patch',
      path: '/templates/{name}',
      operationId: 'updateTemplate',
      summary: 'Change a template (existing VMs keep their size)',
      tag: 'templates',
      access: 'admin',
      params: NameParams,
      body: Type.Partial(Type.Object(TemplateFields), { additionalProperties: false, minProperties: 1 }),
      response: { status: 200, description: 'the template', schema: TemplateSchema },
      errors: [404, 409],
      async handler({ params, body }) {
        const t = await db.template.findUnique({ where: { name: params.name } });
        if (!t) throw new NotFoundError('template', params.name);
        return templateView(await db.template.update({ where: { id: t.id }, data: body }));
      },
    }),
    deleteRoute('templates', 'template', async (name) => {
      const t = await db.template.findUnique({ where: { name } });
      if (!t) throw new NotFoundError('template', name);
      await db.template.delete({ where: { id: t.id } });
    }),

    // ----- hosts (created by agent enrollment) -----
    route({
      method: 'get',
      path: '/hosts',
      operationId: 'listHosts',
      summary: 'List hosts with area, state, capacity and last heartbeat',
      tag: 'hosts',
      access: 'admin',
      query: ListQuery,
      response: { status: 200, description: 'a page of hosts', schema: Page(HostSchema) },
      async handler({ query }) {
        const limit = query.limit ?? 100;
        const rows = await db.host.findMany({ where: listQuery(query.after), include: hostInclude, orderBy: { name: 'asc' }, take: limit + 1 });
        return page(rows, limit, (r) => r.name, (r) => hostView(r, s.agents.status(r.id)));
      },
    }),
    route({
      method: 'get',
      path: '/hosts/{id}',
      operationId: 'getHost',
      summary: 'One host: state, capacity, current usage and last heartbeat',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 200, description: 'the host', schema: HostSchema },
      errors: [404],
      async handler({ params }) {
        const h = await db.host.findUnique({ where: { id: params.id }, include: hostInclude });
        if (!h) throw new NotFoundError('host', params.id);
        return hostView(h, s.agents.status(h.id));
      },
    }),
    route({
      method: 'patch',
      path: '/hosts/{id}',
      operationId: 'updateHost',
      summary: 'Put a host in or out of maintenance (no new VMs are placed on it)',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      body: Type.Object({ maintenance: Type.Boolean() }, { additionalProperties: false }),
      response: { status: 200, description: 'the host', schema: HostSchema },
      errors: [404],
      async handler({ params, body }) {
        const h = await db.host.findUnique({ where: { id: params.id } });
        if (!h) throw new NotFoundError('host', params.id);
        const updated = await db.host.update({
          where: { id: h.id },
          data: { adminState: body.maintenance ? 'maintenance' : 'active' },
          include: hostInclude,
        });
        return hostView(updated, s.agents.status(updated.id));
      },
    }),
    route({
      method: 'delete',
      path: '/hosts/{id}',
      operationId: 'deleteHost',
      summary: 'Forget a host that holds no VMs',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 204, description: 'deleted' },
      errors: [404, 409],
      async handler({ params }) {
        await db.$transaction(async (tx) => {
          const h = await tx.host.findUnique({ where: { id: params.id }, include: { _count: { select: { vms: true } } } });
          if (!h) throw new NotFoundError('host', params.id);
          if (h._count.vms > 0) throw new ConflictError(`host holds ${h._count.vms} VMs; move or delete them first`);
          await tx.host.delete({ where: { id: h.id } });
        });
        // Its agent's session ends now (PERMISSION_DENIED), and it can never connect again.
        s.agents.hostDeleted(params.id);
        return undefined;
      },
    }),
  ];
}
