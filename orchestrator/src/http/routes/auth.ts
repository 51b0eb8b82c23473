import { Type } from '@sinclair/typebox';
import { ConflictError, KloudakError, RateLimitedError, UnauthenticatedError, ValidationError } from '@kloudak/common';
import { hashPassword, passwordWeakness, verifyPassword } from '../../auth/passwords.js';
import { bumpTokenVersion, MAX_TOKEN_WORKSPACES, userView, workspaceClaims } from '../../store/users.js';
import type { RateLimiter } from '../../auth/rate-limit.js';
import type { Services } from '../app.js';
import { route, type Principal, type RouteSpec } from '../route.js';
import { Email, Password, Permissions, Timestamp, Username, Uuid } from '../schemas.js';

const UserSchema = Type.Object({ id: Uuid, username: Username, email: Email, isAdmin: Type.Boolean(), createdAt: Timestamp });
const TokenSchema = Type.Object({ token: Type.String(), expiresAt: Timestamp });

// A hash to compare against when the username does not exist, so a login for an unknown user costs
// the same time as one for a known user and does not reveal which usernames exist.
let decoyHash: Promise<string> | undefined;

/** Count one attempt of `key`, or refuse it with 429 when its window is full. */
function limit(l: RateLimiter, key: string): void {
  const wait = l.retryAfter(key);
  if (wait > 0) throw new RateLimitedError(wait);
  l.hit(key);
}

/** Sign-up, login, token refresh, logout, password change and "who am I". */
export function authRoutes(s: Services): RouteSpec[] {
  const db = s.db.client;

  async function issueFor(userId: string): Promise<{ token: string; expiresAt: string }> {
    const u = await db.user.findUniqueOrThrow({ where: { id: userId } });
    const { token, expiresAt } = await s.tokens.issue({
      sub: u.id,
      username: u.username,
      email: u.email,
      admin: u.isAdmin,
      ver: u.tokenVersion,
      ...(await workspaceClaims(db, u.id, MAX_TOKEN_WORKSPACES)),
    });
    return { token, expiresAt: expiresAt.toISOString() };
  }

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
      async handler({ body, clientIp }) {
        if (!s.config.allowSignup) throw new KloudakError('forbidden', 'sign-up is disabled on this installation');
        limit(s.signupByAddress, clientIp);
        const weak = passwordWeakness(body.password, body.username);
        if (weak) throw new ValidationError(weak, { in: 'body', problems: [{ path: '/password', message: weak }] });
        const email = body.email.toLowerCase();
        const taken = await db.user.findFirst({ where: { OR: [{ username: body.username }, { email }] } });
        if (taken) throw new ConflictError('username or email already registered');
        const u = await db.user.create({
          data: { username: body.username, email, passwordHash: await hashPassword(body.password, s.config.passwordHashCost) },
        });
        return userView(u);
      },
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
      async handler({ body, clientIp }) {
        const userKey = body.username.toLowerCase();
        const wait = Math.max(s.loginByUser.retryAfter(userKey), s.loginByAddress.retryAfter(clientIp));
        if (wait > 0) throw new RateLimitedError(wait);
        s.loginByUser.hit(userKey);
        s.loginByAddress.hit(clientIp);
        const u = await db.user.findUnique({ where: { username: userKey } });
        decoyHash ??= hashPassword('decoy-password-never-matches', s.config.passwordHashCost);
        const ok = await verifyPassword(body.password, u ? u.passwordHash : await decoyHash);
        if (!u || !ok) throw new UnauthenticatedError('wrong username or password');
        s.loginByUser.reset(userKey);
        return issueFor(u.id);
      },
    }),
    route({
      method: 'get',
      path: '/auth/token',
      operationId: 'refreshToken',
      summary: 'A fresh token carrying the current permissions (the seed\'s /get_token/)',
      tag: 'auth',
      access: 'user',
      response: { status: 200, description: 'a token', schema: TokenSchema },
      async handler({ principal }) {
        return issueFor((principal as Principal).userId);
      },
    }),
    route({
      method: 'post',
      path: '/auth/logout',
      operationId: 'logout',
      summary: 'Revoke the token used for this request',
      tag: 'auth',
      access: 'user',
      response: { status: 204, description: 'revoked' },
      async handler({ principal }) {
        const p = principal as Principal;
        await db.revokedToken.upsert({
          where: { jti: p.jti },
          create: { jti: p.jti, userId: p.userId, expiresAt: new Date(p.exp * 1000) },
          update: {},
        });
        // Expired entries are useless: a token past its expiry is refused anyway.
        await db.revokedToken.deleteMany({ where: { expiresAt: { lt: new Date(s.clock.now()) } } });
        return undefined;
      },
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
      async handler({ body, principal, clientIp }) {
        const p = principal as Principal;
        limit(s.passwordChangeByAddress, clientIp);
        const u = await db.user.findUniqueOrThrow({ where: { id: p.userId } });
        if (!(await verifyPassword(body.currentPassword, u.passwordHash))) {
          throw new KloudakError('forbidden', 'current password is wrong');
        }
        const weak = passwordWeakness(body.newPassword, u.username);
        if (weak) throw new ValidationError(weak, { in: 'body', problems: [{ path: '/newPassword', message: weak }] });
        const hash = await hashPassword(body.newPassword, s.config.passwordHashCost);
        await db.$transaction(async (tx) => {
          await tx.user.update({ where: { id: u.id }, data: { passwordHash: hash } });
          await bumpTokenVersion(tx, [u.id]);
        });
        return undefined;
      },
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
      async handler({ principal }) {
        const p = principal as Principal;
        const u = await db.user.findUniqueOrThrow({ where: { id: p.userId } });
        return { user: userView(u), workspaces: (await workspaceClaims(db, u.id)).workspaces };
      },
    }),
  ];
}
