import { Type } from '@sinclair/typebox';
import { NotFoundError } from '@kloudak/common';
import { workspaceAccess } from '../../store/access.js';
import type { Services } from '../app.js';
import { route, type Principal, type RouteSpec } from '../route.js';
import { ListQuery, Name, Page, Timestamp, Uuid, WsParams } from '../schemas.js';
import { page } from './paging.js';

const NetworkSchema = Type.Object({
  id: Uuid,
  name: Name,
  description: Type.String(),
  area: Name,
  state: Type.String(),
  vlan: Type.Union([Type.Integer(), Type.Null()]),
  createdAt: Timestamp,
});
const VmSchema = Type.Object({
  id: Uuid,
  name: Name,
  description: Type.String(),
  area: Name,
  template: Name,
  host: Type.Union([Type.String(), Type.Null()]),
  state: Type.String(),
  cpu: Type.Integer(),
  ramMb: Type.Integer(),
  diskGb: Type.Integer(),
  ip: Type.Union([Type.String(), Type.Null()]),
  networks: Type.Array(Type.Object({ network: Name, mac: Type.String(), ip: Type.Union([Type.String(), Type.Null()]) })),
  createdAt: Timestamp,
});
const ItemParams = Type.Object({ ws: Name, name: Name }, { additionalProperties: false });

const networkInclude = { area: { select: { name: true } }, vlan: { select: { vlan: true } } } as const;
const vmInclude = {
  area: { select: { name: true } },
  template: { select: { name: true } },
  host: { select: { name: true } },
  ips: { select: { address: true }, orderBy: { createdAt: 'asc' as const }, take: 1 },
  interfaces: { select: { mac: true, ip: true, network: { select: { name: true } } } },
} as const;

type NetworkRow = {
  id: string; name: string; description: string; state: string; createdAt: Date;
  area: { name: string }; vlan: { vlan: number } | null;
};
function networkView(n: NetworkRow) {
  return {
    id: n.id, name: n.name, description: n.description, area: n.area.name, state: n.state,
    vlan: n.vlan ? n.vlan.vlan : null, createdAt: n.createdAt.toISOString(),
  };
}
type VmRow = {
  id: string; name: string; description: string; state: string; cpu: number; ramMb: number; diskGb: number; createdAt: Date;
  area: { name: string }; template: { name: string }; host: { name: string } | null; ips: { address: string }[];
  interfaces: { mac: string; ip: string | null; network: { name: string } }[];
};
function vmView(v: VmRow) {
  return {
    id: v.id, name: v.name, description: v.description, area: v.area.name, template: v.template.name,
    host: v.host ? v.host.name : null, state: v.state, cpu: v.cpu, ramMb: v.ramMb, diskGb: v.diskGb,
    ip: v.ips[0]?.address ?? null,
    networks: v.interfaces.map((i) => ({ network: i.network.name, mac: i.mac, ip: i.ip })),
    createdAt: v.createdAt.toISOString(),
  };
}

/** Read endpoints of a workspace's networks and VMs (creating them comes with the controller). */
export function resourceRoutes(s: Services): RouteSpec[] {
  const db = s.db.client;
  const ws = (p: Principal | null, name: string) => workspaceAccess(db, p as Principal, name);
  return [
    route({
      method: 'get',
      path: '/workspaces/{ws}/networks',
      operationId: 'listNetworks',
      summary: 'Networks of a workspace',
      tag: 'networks',
      access: 'user',
      params: WsParams,
      query: ListQuery,
      response: { status: 200, description: 'a page of networks', schema: Page(NetworkSchema) },
      errors: [404],
      async handler({ params, query, principal }) {
        const a = await ws(principal, params.ws);
        const limit = query.limit ?? 100;
        const rows = await db.network.findMany({
          where: { workspaceId: a.workspace.id, ...(query.after ? { name: { gt: query.after } } : {}) },
          include: networkInclude,
          orderBy: { name: 'asc' },
          take: limit + 1,
        });
        return page(rows, limit, (r) => r.name, networkView);
      },
    }),
    route({
      method: 'get',
      path: '/workspaces/{ws}/networks/{name}',
      operationId: 'getNetwork',
      summary: 'One network of a workspace',
      tag: 'networks',
      access: 'user',
      params: ItemParams,
      response: { status: 200, description: 'the network', schema: NetworkSchema },
      errors: [404],
      async handler({ params, principal }) {
        const a = await ws(principal, params.ws);
        const n = await db.network.findUnique({
          where: { workspaceId_name: { workspaceId: a.workspace.id, name: params.name } },
          include: networkInclude,
        });
        if (!n) throw new NotFoundError('network', params.name);
        return networkView(n);
      },
    }),
    route({
      method: 'get',
      path: '/workspaces/{ws}/vms',
      operationId: 'listVms',
      summary: 'VMs of a workspace',
      tag: 'vms',
      access: 'user',
      params: WsParams,
      query: ListQuery,
      response: { status: 200, description: 'a page of VMs', schema: Page(VmSchema) },
      errors: [404],
      async handler({ params, query, principal }) {
        const a = await ws(principal, params.ws);
        const limit = query.limit ?? 100;
        const rows = await db.vm.findMany({
          where: { workspaceId: a.workspace.id, ...(query.after ? { name: { gt: query.after } } : {}) },
          include: vmInclude,
          orderBy: { name: 'asc' },
          take: limit + 1,
        });
        return page(rows, limit, (r) => r.name, vmView);
      },
    }),
    route({
      method: 'get',
      path: '/workspaces/{ws}/vms/{name}',
      operationId: 'getVm',
      summary: 'One VM of a workspace',
      tag: 'vms',
      access: 'user',
      params: ItemParams,
      response: { status: 200, description: 'the VM', schema: VmSchema },
      errors: [404],
      async handler({ params, principal }) {
        const a = await ws(principal, params.ws);
        const v = await db.vm.findUnique({
          where: { workspaceId_name: { workspaceId: a.workspace.id, name: params.name } },
          include: vmInclude,
        });
        if (!v) throw new NotFoundError('vm', params.name);
        return vmView(v);
      },
    }),
  ];
}
