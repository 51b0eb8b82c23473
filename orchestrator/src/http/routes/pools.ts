import { Type } from '@sinclair/typebox';
import * as pools from '../../app/pools.js';
import type { Services } from '../../app/services.js';
import { route, type RouteSpec } from '../route.js';
import { Name, Timestamp, Uuid } from '../schemas.js';
import { deleteRoute, readRoutes } from './crud.js';

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

/** Storage pools (admin). */
export function poolRoutes(s: Services): RouteSpec[] {
  return [
    ...readRoutes('pools', 'pool', 'admin', PoolSchema, (c, q) => pools.listPools(s, c, q), (c, name) => pools.getPool(s, c, name)),
    route({
      method: 'post',
      path: '/pools',
      operationId: 'createPool',
      summary: 'Register a storage pool, mounted at the same path on every host of its area',
      tag: 'pools',
      access: 'admin',
      body: Type.Object(
        { name: Name, area: Name, path: PoolPath, shared: Type.Optional(Type.Boolean({ default: true })), type: Type.Union(pools.POOL_TYPES.map((t) => Type.Literal(t))) },
        { additionalProperties: false },
      ),
      response: { status: 201, description: 'the pool', schema: PoolSchema },
      errors: [409],
      handler: ({ caller, body }) => pools.createPool(s, caller, body),
    }),
    deleteRoute('pools', 'pool', (c, name) => pools.deletePool(s, c, name)),
  ];
}
