import { Type } from '@sinclair/typebox';
import * as areas from '../../app/areas.js';
import type { Services } from '../../app/services.js';
import { route, type RouteSpec } from '../route.js';
import { Name, NameParams, Timestamp, Uuid } from '../schemas.js';
import { deleteRoute, readRoutes } from './crud.js';

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

const LeftBehind = Type.Object({
  vmId: Uuid,
  vmName: Type.String(),
  workspaceId: Uuid,
  code: Type.String({ description: 'no_capacity, local_pool, no_pool, busy or already_lost' }),
  message: Type.String(),
  rejections: Type.Optional(Type.Array(Type.Object({ hostId: Uuid, hostName: Type.String(), filter: Type.String(), message: Type.String() }))),
});
const Outcome = Type.Object({
  vms: Type.Integer(),
  placed: Type.Integer(),
  left: Type.Array(LeftBehind, { description: 'the VMs the other hosts would not take, and why' }),
  survives: Type.Boolean(),
});
const CapacitySchema = Type.Object({
  area: Name,
  areaId: Uuid,
  checkedAt: Timestamp,
  largestHost: Type.Union([
    Type.Object({ id: Uuid, name: Type.String(), claimedCpu: Type.Integer(), claimedRamMb: Type.Integer(), vms: Type.Integer() }),
    Type.Null(),
  ]),
  ha: Outcome,
  all: Outcome,
  survives: Type.Boolean({ description: 'every HA VM of the largest host would run again on the other hosts' }),
});

/** Areas: users read them, admins manage them. */
export function areaRoutes(s: Services): RouteSpec[] {
  return [
    ...readRoutes('areas', 'area', 'user', AreaSchema, (c, q) => areas.listAreas(s, c, q), (c, name) => areas.getArea(s, c, name)),
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
      handler: ({ caller, body }) => areas.createArea(s, caller, body),
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
      handler: ({ caller, params, body }) => areas.updateArea(s, caller, params.name, body),
    }),
    deleteRoute('areas', 'area', (c, name) => areas.deleteArea(s, c, name)),
    route({
      method: 'get',
      path: '/areas/{name}/capacity',
      operationId: 'getAreaCapacity',
      summary: 'The n+1 check: would the area survive the loss of its largest host?',
      description:
        'Takes the area\'s largest host (by the vCPU and RAM its VMs claim) and plans, with the failover planner and the placement rules, where its HA VMs — then all of its VMs — would go on the other hosts as they are now (up, active, connected, with room, with the VM\'s pool). `survives` is true when every HA VM would run again; `ha.left` and `all.left` name the VMs that would not, with each host\'s rejection.',
      tag: 'areas',
      access: 'admin',
      params: NameParams,
      response: { status: 200, description: 'the n+1 answer', schema: CapacitySchema },
      errors: [404],
      handler: ({ caller, params }) => areas.areaCapacity(s, caller, params.name),
    }),
  ];
}
