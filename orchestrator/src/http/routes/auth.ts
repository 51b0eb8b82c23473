import { Type } from '@sinclair/typebox';
import * as auth from '../../app/auth.js';
import type { Services } from '../../app/services.js';
import { route, type RouteSpec } from '../route.js';
import { Email, Password, Permissions, Timestamp, Username, Uuid } from '../schemas.js';

const UserSchema = Type.Object({ id: Uuid, username: Username, email: Email, isAdmin: Type.Boolean(), createdAt: Timestamp });
const TokenSchema = Type.Object({ token: Type.String(), expiresAt: Timestamp });

/** Sign-up, login, token refresh, logout, password change and "who am I". */
export function authRoutes(s: Services): RouteSpec[] {
  return [
    route({
      method: 'post',
      path: '/auth/signup',
      operationId: 'signup',
      summary: 'Create an account',
      description: 'Rate-limited per client address (429 with Retry-After): each sign-up hashes a password.',
      tag: 'auth',
      access: 'public',
      body: Type.Object({ username: Username, email: Email, password: Password }, { additionalProperties: false }),
      response: { status: 201, description: 'the new user', schema: UserSchema },
      errors: [403, 409, 429],
      handler: ({ caller, body }) => auth.signup(s, caller, body),
    }),
    route({
      method: 'post',
      path: '/auth/login',
      operationId: 'login',
      summary: 'Exchange a username and password for a token',
      description: 'Rate-limited per username and per client address (429 with Retry-After).',
      tag: 'auth',
      access: 'public',
      body: Type.Object(
        { username: Type.String({ minLength: 1, maxLength: 64 }), password: Password },
        { additionalProperties: false },
      ),
      response: { status: 200, description: 'a token', schema: TokenSchema },
      errors: [429],
      handler: ({ caller, body }) => auth.login(s, caller, body),
    }),
    route({
      method: 'get',
      path: '/auth/token',
      operationId: 'refreshToken',
      summary: 'A fresh token carrying the current permissions (the seed\'s /get_token/)',
      tag: 'auth',
      access: 'user',
      response: { status: 200, description: 'a token', schema: TokenSchema },
      handler: ({ caller }) => auth.refreshToken(s, caller),
    }),
    route({
      method: 'post',
      path: '/auth/logout',
      operationId: 'logout',
      summary: 'Revoke the token used for this request',
      tag: 'auth',
      access: 'user',
      response: { status: 204, description: 'revoked' },
      handler: ({ caller }) => auth.logout(s, caller),
    }),
    route({
      method: 'post',
      path: '/auth/password',
      operationId: 'changePassword',
      summary: 'Change the caller\'s password; every token issued before is refused from then on',
      tag: 'auth',
      access: 'user',
      description: 'Rate-limited per client address (429 with Retry-After).',
      body: Type.Object({ currentPassword: Password, newPassword: Password }, { additionalProperties: false }),
      response: { status: 204, description: 'changed' },
      errors: [403, 429],
      handler: ({ caller, body }) => auth.changePassword(s, caller, body),
    }),
    route({
      method: 'get',
      path: '/me',
      operationId: 'me',
      summary: 'The caller and their permissions per workspace',
      tag: 'auth',
      access: 'user',
      response: {
        status: 200,
        description: 'the caller',
        schema: Type.Object({ user: UserSchema, workspaces: Type.Record(Type.String(), Permissions) }),
      },
      handler: ({ caller }) => auth.me(s, caller),
    }),
  ];
}
