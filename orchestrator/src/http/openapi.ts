import type { TSchema } from '@sinclair/typebox';
import type { RouteSpec } from './route.js';
import { ErrorSchema } from './schemas.js';

const STATUS_TEXT: Record<number, string> = {
  400: 'invalid request',
  401: 'missing, invalid or revoked token',
  403: 'member lacks the permission, or caller is not an admin',
  404: 'not found (also for workspaces the caller does not belong to)',
  409: 'conflicts with current state',
  413: 'body too large',
  415: 'body is not JSON',
  429: 'too many attempts',
};

function parameters(where: 'path' | 'query', schema: TSchema | undefined): unknown[] {
  if (!schema) return [];
  const props = (schema as { properties?: Record<string, TSchema> }).properties ?? {};
  const required = new Set((schema as { required?: string[] }).required ?? []);
  return Object.entries(props).map(([name, s]) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    schema: s,
  }));
}

/** Build the OpenAPI 3.1 document from the registered routes. */
export function buildOpenApi(routes: readonly RouteSpec[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const errors = new Set([400, ...(r.access === 'public' ? [] : [401]), ...(r.errors ?? [])]);
    if (r.access === 'admin') errors.add(403);
    if (r.body) errors.add(413).add(415);
    const responses: Record<string, unknown> = {
      [String(r.response.status)]: {
        description: r.response.description,
        ...(r.response.schema ? { content: { 'application/json': { schema: r.response.schema } } } : {}),
      },
    };
    for (const s of [...errors].sort()) {
      responses[String(s)] = {
        description: STATUS_TEXT[s] ?? 'error',
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      };
    }
    const op: Record<string, unknown> = {
      operationId: r.operationId,
      summary: r.summary,
      tags: [r.tag],
      parameters: [...parameters('path', r.params), ...parameters('query', r.query)],
      responses,
      ...(r.description ? { description: r.description } : {}),
      ...(r.access === 'public' ? { security: [] } : {}),
      ...(r.access === 'admin' ? { 'x-kloudak-access': 'admin' } : {}),
    };
    if (r.body) op['requestBody'] = { required: true, content: { 'application/json': { schema: r.body } } };
    (paths[`/api/v1${r.path}`] ??= {})[r.method] = op;
  }
  // Strip TypeBox's symbol keys and defaults-only artefacts by a JSON round trip.
  return JSON.parse(
    JSON.stringify({
      openapi: '3.1.0',
      info: {
        title: 'Kloudak API',
        version,
        description:
          'Workspaces, permissions and the admin inventory of a Kloudak private cloud. Errors are ' +
          '{"error": {"code", "message", "details"}}. Authenticate with `Authorization: Bearer <token>` ' +
          'or the `token` header.',
      },
      servers: [{ url: '/' }],
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' },
          tokenHeader: { type: 'apiKey', in: 'header', name: 'token' },
        },
        schemas: { Error: ErrorSchema },
      },
      security: [{ bearer: [] }, { tokenHeader: [] }],
      paths,
    }),
  ) as Record<string, unknown>;
}
