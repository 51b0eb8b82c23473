import type { TSchema } from '@sinclair/typebox';
import type { Caller } from '../../app/principal.js';
import type { ListInput } from '../../app/paging.js';
import { route, type Access, type RouteSpec } from '../route.js';
import { ListQuery, NameParams, Page } from '../schemas.js';

/** `area` → `Area`: operationIds are camelCase (`listAreas`, `getArea`), as client generators expect. */
function capital(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/** GET /{tag} (a page) and GET /{tag}/{name} of an inventory resource, over its two use cases. */
export function readRoutes(
  tag: string,
  kind: string,
  access: Exclude<Access, 'public'>,
  schema: TSchema,
  list: (c: Caller, q: ListInput) => Promise<unknown>,
  get: (c: Caller, name: string) => Promise<unknown>,
): RouteSpec[] {
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
      handler: ({ caller, query }) => list(caller, query),
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
      handler: ({ caller, params }) => get(caller, params.name),
    }),
  ];
}

/** DELETE /{tag}/{name} (admin) over its use case. */
export function deleteRoute(tag: string, kind: string, del: (c: Caller, name: string) => Promise<void>): RouteSpec {
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
    handler: ({ caller, params }) => del(caller, params.name),
  });
}
