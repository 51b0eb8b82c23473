import { Type } from '@sinclair/typebox';
import { ConflictError, NotFoundError, ValidationError } from '@kloudak/common';
import { createJoinToken, joinTokenView } from '../../store/join-tokens.js';
import type { Services } from '../app.js';
import { route, type RouteSpec } from '../route.js';
import { Name, Page, Timestamp, Uuid } from '../schemas.js';
import { page } from './paging.js';

/** Longest span one usage query may cover. */
const MAX_USAGE_SPAN_MS = 31 * 86_400_000;

const JoinTokenCreated = Type.Object({
  id: Uuid,
  token: Type.String({ description: 'kjt1.<id>.<secret>.<caFingerprint>; shown only now' }),
  area: Name,
  areaId: Uuid,
  expiresAt: Timestamp,
  caFingerprint: Type.String({ description: 'SHA-256 of the agent CA certificate (DER), hex' }),
});

const JoinTokenSchema = Type.Object({
  id: Uuid,
  areaId: Uuid,
  expiresAt: Timestamp,
  createdAt: Timestamp,
  createdBy: Type.Union([Uuid, Type.Null()]),
  used: Type.Boolean(),
  usedAt: Type.Union([Timestamp, Type.Null()]),
  usedByHostId: Type.Union([Uuid, Type.Null()]),
  revoked: Type.Boolean(),
  revokedAt: Type.Union([Timestamp, Type.Null()]),
  expired: Type.Boolean(),
});

const UsagePoint = Type.Object({
  at: Timestamp,
  cpuPct: Type.Number(),
  memUsedMb: Type.Integer(),
  memTotalMb: Type.Integer(),
  diskUsedGb: Type.Number(),
  diskTotalGb: Type.Number(),
  samples: Type.Integer({ description: 'heartbeats averaged into this point' }),
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const IdParams = Type.Object({ id: Uuid }, { additionalProperties: false });

function parseInstant(v: string | undefined, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  const t = Date.parse(v);
  if (!/^\d{4}-\d{2}-\d{2}T/.test(v) || Number.isNaN(t)) {
    throw new ValidationError('invalid query', { in: 'query', problems: [{ path: `/${name}`, message: 'must be an ISO 8601 date-time' }] });
  }
  return t;
}

/** Join tokens (admin) and the host usage series. The routes are registered before /hosts/{id}. */
export function agentRoutes(s: Services): RouteSpec[] {
  const db = s.db.client;
  return [
    route({
      method: 'post',
      path: '/hosts/join-tokens',
      operationId: 'createJoinToken',
      summary: 'Create a single-use join token with which one new host enrolls in an area',
      description: 'The token string is returned once; only a hash of its secret is kept. `area` is the area\'s name, as on every other route (its id is accepted too).',
      tag: 'hosts',
      access: 'admin',
      body: Type.Object(
        {
          area: Name,
          expiresIn: Type.Optional(Type.Integer({ minimum: 60, maximum: 604_800, default: 3600, description: 'seconds' })),
        },
        { additionalProperties: false },
      ),
      response: { status: 201, description: 'the token', schema: JoinTokenCreated },
      async handler({ body, principal }) {
        // By name like every other route; an id (what this route took first) is still accepted.
        const area =
          (await db.area.findUnique({ where: { name: body.area }, select: { id: true, name: true } })) ??
          (UUID.test(body.area) ? await db.area.findUnique({ where: { id: body.area }, select: { id: true, name: true } }) : null);
        if (!area) throw new ValidationError('invalid body', { in: 'body', problems: [{ path: '/area', message: `area '${body.area}' does not exist` }] });
        const expiresAt = new Date(s.clock.now() + (body.expiresIn ?? 3600) * 1000);
        const { row, token } = await createJoinToken(db, {
          areaId: area.id,
          expiresAt,
          createdById: principal?.userId ?? null,
          caFingerprint: s.agents.caFingerprint,
        });
        return { id: row.id, token, area: area.name, areaId: row.areaId, expiresAt: row.expiresAt.toISOString(), caFingerprint: s.agents.caFingerprint };
      },
    }),
    route({
      method: 'get',
      path: '/hosts/join-tokens',
      operationId: 'listJoinTokens',
      summary: 'List join tokens (never their secrets)',
      tag: 'hosts',
      access: 'admin',
      query: Type.Object(
        { limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })), after: Type.Optional(Uuid) },
        { additionalProperties: false },
      ),
      response: { status: 200, description: 'a page of tokens, by id', schema: Page(JoinTokenSchema) },
      async handler({ query }) {
        const limit = query.limit ?? 100;
        const rows = await db.joinToken.findMany({
          where: query.after ? { id: { gt: query.after } } : {},
          orderBy: { id: 'asc' },
          take: limit + 1,
        });
        const now = s.clock.now();
        return page(rows, limit, (r) => r.id, (r) => joinTokenView(r, now));
      },
    }),
    route({
      method: 'delete',
      path: '/hosts/join-tokens/{id}',
      operationId: 'revokeJoinToken',
      summary: 'Revoke a join token that has not been used',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      response: { status: 204, description: 'revoked (also when it already was)' },
      errors: [404, 409],
      async handler({ params, log }) {
        const t = await db.joinToken.findUnique({ where: { id: params.id } });
        if (!t) throw new NotFoundError('join token', params.id);
        if (t.usedAt) throw new ConflictError('the token was already used; delete the host it enrolled instead', { usedByHostId: t.usedByHostId });
        if (!t.revokedAt) {
          // Conditional: an enrollment consuming the token at this very moment wins or loses as a whole.
          const n = await db.joinToken.updateMany({ where: { id: t.id, usedAt: null, revokedAt: null }, data: { revokedAt: new Date(s.clock.now()) } });
          if (n.count === 0) {
            const again = await db.joinToken.findUnique({ where: { id: t.id } });
            if (again?.usedAt) throw new ConflictError('the token was already used; delete the host it enrolled instead');
          }
          log.info({ join_token_id: t.id }, 'join token revoked');
        }
        return undefined;
      },
    }),
    route({
      method: 'get',
      path: '/hosts/{id}/usage',
      operationId: 'getHostUsage',
      summary: 'Usage of a host over time: one point per minute (averaged heartbeats)',
      tag: 'hosts',
      access: 'admin',
      params: IdParams,
      query: Type.Object(
        {
          from: Type.Optional(Type.String({ maxLength: 40, description: 'ISO 8601 date-time; default: one hour before `to`' })),
          to: Type.Optional(Type.String({ maxLength: 40, description: 'ISO 8601 date-time; default: now' })),
        },
        { additionalProperties: false },
      ),
      response: {
        status: 200,
        description: 'the series',
        schema: Type.Object({ hostId: Uuid, from: Timestamp, to: Timestamp, resolution: Type.Integer(), points: Type.Array(UsagePoint) }),
      },
      errors: [404],
      async handler({ params, query }) {
        const to = parseInstant(query.to, 'to', s.clock.now());
        const from = parseInstant(query.from, 'from', to - 3600_000);
        if (from > to) throw new ValidationError('invalid query', { in: 'query', problems: [{ path: '/from', message: 'must not be after `to`' }] });
        if (to - from > MAX_USAGE_SPAN_MS) throw new ValidationError('invalid query', { in: 'query', problems: [{ path: '/from', message: 'the span may be at most 31 days' }] });
        const host = await db.host.findUnique({ where: { id: params.id }, select: { id: true } });
        if (!host) throw new NotFoundError('host', params.id);
        const rows = await db.hostUsageSample.findMany({
          where: { hostId: host.id, resolution: 60, at: { gte: new Date(from), lte: new Date(to) } },
          orderBy: { at: 'asc' },
          take: 50_000,
        });
        return {
          hostId: host.id,
          from: new Date(from).toISOString(),
          to: new Date(to).toISOString(),
          resolution: 60,
          points: rows.map((r) => ({
            at: r.at.toISOString(),
            cpuPct: r.cpuPct,
            memUsedMb: r.memUsedMb,
            memTotalMb: r.memTotalMb,
            diskUsedGb: r.diskUsedGb,
            diskTotalGb: r.diskTotalGb,
            samples: r.samples,
          })),
        };
      },
    }),
  ];
}
