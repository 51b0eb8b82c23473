// Accounts and tokens: sign-up, login, refresh, logout, password change, "who am I", and the
// authentication every other use case starts from.
import { ConflictError, KloudakError, RateLimitedError, UnauthenticatedError } from '@kloudak/common';
import { hashPassword, passwordWeakness, verifyPassword } from '../auth/passwords.js';
import type { RateLimiter } from '../auth/rate-limit.js';
import type { Permissions } from '../domain/permissions.js';
import { transaction } from '../store/db.js';
import {
  bumpTokenVersion,
  createUser,
  MAX_TOKEN_WORKSPACES,
  revokeToken,
  setPasswordHash,
  tokenHolder,
  userById,
  userByUsername,
  userByUsernameOrEmail,
  userView,
  workspaceClaims,
  type UserView,
} from '../store/users.js';
import { invalidField } from './errors.js';
import { signedIn, type Caller, type Principal } from './principal.js';
import type { Services } from './services.js';
import { infraEvent, record, withEvents } from './events.js';

export type { UserView };

/** A signed token and when it expires. */
export interface TokenView {
  token: string;
  expiresAt: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// A hash to compare against when the username does not exist, so a login for an unknown user costs
// the same time as one for a known user and does not reveal which usernames exist.
let decoyHash: Promise<string> | undefined;

/** Count one attempt of `key`, or refuse it with 429 when its window is full. */
function limit(l: RateLimiter, key: string): void {
  const wait = l.retryAfter(key);
  if (wait > 0) throw new RateLimitedError(wait);
  l.hit(key);
}

/**
 * The principal a token stands for: signature, expiry, issuer and audience checked, then the user
 * must still exist, with the token's version (a password change or a removal since refuses it)
 * and the token not logged out. Every failure is the same 401.
 */
export async function authenticate(s: Services, token: string): Promise<Principal> {
  // The same token again within a few seconds: the checks below passed then, and whatever has
  // refused the token since has removed it from the cache (see PrincipalCache).
  const cached = s.principals.get(token);
  if (cached) return cached;
  const generation = s.principals.generation;
  const claims = await s.tokens.verify(token);
  if (!UUID.test(claims.sub)) throw new UnauthenticatedError('invalid or expired token');
  const user = await tokenHolder(s.db.client, claims.sub, claims.jti);
  if (!user || user.tokenVersion !== claims.ver || user.revoked) throw new UnauthenticatedError('invalid or expired token');
  const principal = { userId: user.id, username: user.username, email: user.email, isAdmin: user.isAdmin, jti: claims.jti, exp: claims.exp };
  s.principals.put(token, principal, generation);
  return principal;
}

/**
 * These users' tokens were just refused in the database (logout, password change, removal from
 * a workspace, workspace deletion): forget them in this orchestrator's cache at once. The other
 * orchestrators forget them on the `user.revoked` events the change recorded in its transaction
 * (events/revocations.ts). Call after the change committed.
 */
export function tokensRevoked(s: Services, userIds: readonly string[]): void {
  s.principals.forgetUsers(userIds);
}

async function issueFor(s: Services, userId: string): Promise<TokenView> {
  const u = await userById(s.db.client, userId);
  if (!u) throw new UnauthenticatedError('invalid or expired token');
  const { token, expiresAt } = await s.tokens.issue({
    sub: u.id,
    username: u.username,
    email: u.email,
    admin: u.isAdmin,
    ver: u.tokenVersion,
    ...(await workspaceClaims(s.db.client, u.id, MAX_TOKEN_WORKSPACES)),
  });
  return { token, expiresAt: expiresAt.toISOString() };
}

/** Create an account (public; limited per client address, since each costs a scrypt hash). */
export async function signup(s: Services, c: Caller, input: { username: string; email: string; password: string }): Promise<UserView> {
  if (!s.config.allowSignup) throw new KloudakError('forbidden', 'sign-up is disabled on this installation');
  limit(s.limits.signupByAddress, c.address);
  const weak = passwordWeakness(input.password, input.username);
  if (weak) throw invalidField('/password', weak);
  const email = input.email.toLowerCase();
  if (await userByUsernameOrEmail(s.db.client, input.username, email)) throw new ConflictError('username or email already registered', undefined, 'exists');
  const passwordHash = await hashPassword(input.password, s.config.passwordHashCost);
  const u = await createUser(s.db.client, { username: input.username, email, passwordHash });
  c.log.info({ user_id: u.id }, 'user signed up');
  return userView(u);
}

/** Exchange a username and password for a token (public; limited per username and per address). */
export async function login(s: Services, c: Caller, input: { username: string; password: string }): Promise<TokenView> {
  const userKey = input.username.toLowerCase();
  const wait = Math.max(s.limits.loginByUser.retryAfter(userKey), s.limits.loginByAddress.retryAfter(c.address));
  if (wait > 0) throw new RateLimitedError(wait);
  s.limits.loginByUser.hit(userKey);
  s.limits.loginByAddress.hit(c.address);
  const u = await userByUsername(s.db.client, userKey);
  decoyHash ??= hashPassword('decoy-password-never-matches', s.config.passwordHashCost);
  const ok = await verifyPassword(input.password, u ? u.passwordHash : await decoyHash);
  if (!u || !ok) throw new UnauthenticatedError('wrong username or password');
  s.limits.loginByUser.reset(userKey);
  return issueFor(s, u.id);
}

/** A fresh token carrying the caller's current workspaces and flags. */
export async function refreshToken(s: Services, c: Caller): Promise<TokenView> {
  return issueFor(s, signedIn(c).userId);
}

/** Revoke the token the caller used. */
export async function logout(s: Services, c: Caller): Promise<void> {
  const p = signedIn(c);
  // The event closes the token's open event streams (and tells caches the token is gone).
  await withEvents(
    s,
    (tx) => revokeToken(tx, { jti: p.jti, userId: p.userId, expiresAt: new Date(p.exp * 1000) }, new Date(s.clock.now())),
    () => infraEvent('user', p.userId, 'revoked', { name: p.username, data: { jti: p.jti } }),
  );
  tokensRevoked(s, [p.userId]);
}

/** Change the caller's password; every token issued before is refused from then on. Limited per address. */
export async function changePassword(s: Services, c: Caller, input: { currentPassword: string; newPassword: string }): Promise<void> {
  const p = signedIn(c);
  limit(s.limits.passwordChangeByAddress, c.address);
  const u = await userById(s.db.client, p.userId);
  if (!u) throw new UnauthenticatedError('invalid or expired token');
  if (!(await verifyPassword(input.currentPassword, u.passwordHash))) throw new KloudakError('forbidden', 'current password is wrong');
  const weak = passwordWeakness(input.newPassword, u.username);
  if (weak) throw invalidField('/newPassword', weak);
  const hash = await hashPassword(input.newPassword, s.config.passwordHashCost);
  await transaction(s.db.client, async (tx) => {
    await setPasswordHash(tx, u.id, hash);
    await bumpTokenVersion(tx, [u.id]);
    await record(tx, infraEvent('user', u.id, 'revoked', { name: u.username }));
  });
  tokensRevoked(s, [u.id]);
  c.log.info({ user_id: u.id }, 'password changed');
}

/** The caller and their flags in every workspace they belong to. */
export async function me(s: Services, c: Caller): Promise<{ user: UserView; workspaces: Record<string, Permissions> }> {
  const p = signedIn(c);
  const u = await userById(s.db.client, p.userId);
  if (!u) throw new UnauthenticatedError('invalid or expired token');
  return { user: userView(u), workspaces: (await workspaceClaims(s.db.client, u.id)).workspaces };
}
