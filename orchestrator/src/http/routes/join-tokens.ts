import { Type } from '@sinclair/typebox';
import * as joinTokens from '../../app/join-tokens.js';
import type { Services } from '../../app/services.js';
import { route, type RouteSpec } from '../route.js';
import { Name, Page, Timestamp, Uuid } from '../schemas.js';

const JoinTokenCreated = Type.Object({
  id: Uuid,
  token: Type.String({ description: 'kjt1.<id>.<secret>.<caFingerprint>; shown only now' }),
  area: Name,
  areaId: Uuid,
  expiresAt: Timestamp,
  caFingerprint: Type.String({ description: 'SHA-256 of the agent CA certificate (DER), hex' }),
  hostId: Type.Union([Uuid, Type.Null()], { description: 'the existing host this token re-enrolls; null: it enrolls a new host' }),
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
  hostId: Type.Union([Uuid, Type.Null()], { description: 'the existing host this token re-enrolls; null: it enrolls a new host' }),
});

const IdParams = Type.Object({ id: Uuid }, { additionalProperties: false });

/** Join tokens (admin), below /hosts: registered before /hosts/{id}, which would take "join-tokens" for an id. */
export function joinTokenRoutes(s: Services): RouteSpec[] {
  return [
    route({
      method: 'post',
      path: '/hosts/join-tokens',
      operationId: 'createJoinToken',
      summary: 'Create a single-use join token with which one new host enrolls in an area, or an existing host enrolls again',
      description:
        'The token string is returned once; only a hash of its secret is kept. `area` is the area\'s name, as on every other route (its id is accepted too). With `host` (an existing host\'s id or name) the token re-enrolls that host: same id, VMs and history, a new certificate, every earlier one revoked; `area` may then be left out (a re-enrollment keeps the host\'s area).',
      tag: 'hosts',
      access: 'admin',
      body: Type.Object(
        {
          area: Type.Optional(Name),
          expiresIn: Type.Optional(Type.Integer({ minimum: 60, maximum: 604_800, default: joinTokens.DEFAULT_JOIN_TOKEN_SECONDS, description: 'seconds' })),
          host: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'id or name of the existing host to re-enroll' })),
        },
        { additionalProperties: false },
      ),
      response: { status: 201, description: 'the token', schema: JoinTokenCreated },
      handler: ({ caller, body }) => joinTokens.createJoinToken(s, caller, body),
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
      handler: ({ caller, query }) => joinTokens.listJoinTokens(s, caller, query),
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
      handler: ({ caller, params }) => joinTokens.revokeJoinToken(s, caller, params.id),
    }),
  ];
}
