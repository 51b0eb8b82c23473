import type { TSchema } from '@sinclair/typebox';
import type { RouteSpec } from './route.js';
import { ErrorSchema, WsParams } from './schemas.js';

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

/** An event as NATS, WebSocket, SSE and gRPC (its `json` field) carry it (events/event.ts KloudakEvent). */
const EventSchema = {
  type: 'object',
  required: ['seq', 'time', 'workspace', 'entity', 'id', 'event', 'state', 'task'],
  properties: {
    seq: { type: 'integer', minimum: 1, description: 'Orders all events of a deployment; resume after the last one seen (`since`, Last-Event-ID).' },
    time: { type: 'string', format: 'date-time', description: 'When the change committed.' },
    workspace: { type: ['string', 'null'], format: 'uuid', description: 'Workspace id; null for infrastructure events.' },
    entity: { type: 'string', description: 'vm, network, task, member, workspace, host, fence, area, pool, template, join-token, user…' },
    id: { type: 'string', description: 'Id of the object that changed (a username for a member).' },
    event: { type: 'string', description: 'What happened: created, state, deleted, updated, added, removed, step…' },
    state: { type: ['string', 'null'], description: "The object's new state, when it has one." },
    task: { type: ['string', 'null'], description: 'The task that made the change, if any.' },
    name: { type: 'string', description: "The object's name, when it has one." },
    data: { type: 'object', additionalProperties: true, description: 'Further details: ids, names and states, never a secret.' },
  },
  additionalProperties: false,
};

/** The first message of a stream that could not resume after `since` (app/events.ts resetJson). */
const StreamResetSchema = {
  type: 'object',
  required: ['type', 'since', 'oldest', 'seq', 'reason'],
  properties: {
    type: { const: 'reset' },
    since: { type: 'integer', description: 'The sequence the client asked to resume after.' },
    oldest: { type: ['integer', 'null'], description: 'The oldest sequence still retained; null when none is.' },
    seq: { type: 'integer', description: 'The stream goes on after this sequence (the `since` of a later resume).' },
    reason: { type: 'string' },
  },
  additionalProperties: false,
};

const STREAM_DESCRIPTION =
  'A live stream of events, as a **WebSocket** (send `Upgrade: websocket`; each text message is one Event as JSON) or as ' +
  '**Server-Sent Events** (send `Accept: text/event-stream`; each event has `id: <seq>` and `data: <Event JSON>`). ' +
  'Authenticate with `Authorization: Bearer <token>`, the `token` header, `?token=`, or — WebSocket from a browser — the token ' +
  'as the first message (`<token>` or `{"token": "<token>"}`). With `since` (or the `Last-Event-ID` header) the stream first ' +
  'sends every retained event after that sequence, then the live ones, with no gap and no duplicate; without it, only what ' +
  'happens from now on. When events after `since` are no longer retained (older than the retention, ' +
  '`KLOUDAK_EVENT_MAX_AGE_SECONDS`, 24 h by default), the first message is a StreamReset instead — a WebSocket message ' +
  '`{"type":"reset",…}`, an SSE event named `reset` — and the stream goes on after its `seq`: reload the state, then apply ' +
  'the events that follow. The stream ends when the caller loses access: WebSocket close code 4404 (removed from the ' +
  'workspace, or it was deleted), 4401 (token revoked or expired), 1001 (server shutting down), 1008 (client reads too ' +
  'slowly); SSE sends an event named `close` with `{"reason"}`. A plain GET (neither) answers 400 once access is checked.';

function streamOperation(operationId: string, summary: string, params: unknown[], errors: number[], adminOnly = false): Record<string, unknown> {
  const responses: Record<string, unknown> = {
    '101': { description: 'WebSocket: switching protocols; then one text message per Event (a StreamReset first after a pruned `since`).' },
    '200': {
      description: 'Server-Sent Events (`Accept: text/event-stream`): `id: <seq>` / `data: <Event>` per event, `event: reset` first after a pruned `since`.',
      content: { 'text/event-stream': { schema: { type: 'string' }, 'x-kloudak-event': { $ref: '#/components/schemas/Event' } } },
    },
  };
  for (const st of errors) {
    responses[String(st)] = { description: STATUS_TEXT[st] ?? 'error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
  }
  return {
    get: {
      operationId,
      summary,
      description: STREAM_DESCRIPTION,
      tags: ['events'],
      parameters: [
        ...params,
        { name: 'since', in: 'query', required: false, description: 'Resume after this event sequence.', schema: { type: 'string', pattern: '^[0-9]{1,19}$' } },
        { name: 'token', in: 'query', required: false, description: 'The bearer token, for clients that cannot set headers (EventSource, browser WebSocket).', schema: { type: 'string' } },
        { name: 'Last-Event-ID', in: 'header', required: false, description: 'SSE resume point (EventSource sends it by itself); the same as `since`.', schema: { type: 'string', pattern: '^[0-9]{1,19}$' } },
        { name: 'Upgrade', in: 'header', required: false, description: '`websocket` for a WebSocket stream.', schema: { type: 'string' } },
        { name: 'Accept', in: 'header', required: false, description: '`text/event-stream` for Server-Sent Events.', schema: { type: 'string' } },
      ],
      responses,
      ...(adminOnly ? { 'x-kloudak-access': 'admin' } : {}),
      'x-kloudak-stream-messages': { oneOf: [{ $ref: '#/components/schemas/Event' }, { $ref: '#/components/schemas/StreamReset' }] },
    },
  };
}

/** The event stream endpoints (http/events.ts: WebSocket and SSE beside Koa, so not in the route table). */
function eventPaths(): Record<string, Record<string, unknown>> {
  return {
    '/api/v1/workspaces/{ws}/events': streamOperation('watchWorkspaceEvents', "A workspace's events, for its members", parameters('path', WsParams), [400, 401, 404]),
    '/api/v1/events': streamOperation('watchInfraEvents', 'Infrastructure events (hosts, fences, areas, pools, templates, join tokens, users), for admins', [], [400, 401, 403], true),
  };
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
  Object.assign(paths, eventPaths());
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
        schemas: { Error: ErrorSchema, Event: EventSchema, StreamReset: StreamResetSchema },
      },
      security: [{ bearer: [] }, { tokenHeader: [] }],
      paths,
    }),
  ) as Record<string, unknown>;
}
