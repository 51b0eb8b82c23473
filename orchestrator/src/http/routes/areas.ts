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
  ];
}
