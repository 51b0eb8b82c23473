// Join tokens (admin): single-use secrets with which one new host enrolls in an area.
import { ConflictError, NotFoundError } from '@kloudak/common';
import { areaById, areaByName } from '../store/areas.js';
import {
  createJoinToken as insertJoinToken,
  joinTokenById,
  joinTokenView,
  listJoinTokens as tokenRows,
  revokeUnusedJoinToken,
  type JoinTokenView,
} from '../store/join-tokens.js';
import { invalidField } from './errors.js';
import { infraEvent, withEvents } from './events.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { admin, type Caller } from './principal.js';
import type { Services } from './services.js';

export type { JoinTokenView };

/** A new token: the token string exists only in this answer. */
export interface JoinTokenCreatedView {
  id: string;
  /** `kjt1.<id>.<secret>.<caFingerprint>`: shown once, never stored or logged. */
  token: string;
  area: string;
  areaId: string;
  expiresAt: string;
  caFingerprint: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Lifetime of a token when the admin does not say. */
export const DEFAULT_JOIN_TOKEN_SECONDS = 3600;

/**
 * Create a token for an area, named like on every other route (its id, what this took first, is
 * still accepted). Only SHA-256 of its secret is kept.
 */
export async function createJoinToken(s: Services, c: Caller, input: { area: string; expiresIn?: number }): Promise<JoinTokenCreatedView> {
  const p = admin(c);
  const area = (await areaByName(s.db.client, input.area)) ?? (UUID.test(input.area) ? await areaById(s.db.client, input.area) : null);
  if (!area) throw invalidField('/area', `area '${input.area}' does not exist`);
  const expiresAt = new Date(s.clock.now() + (input.expiresIn ?? DEFAULT_JOIN_TOKEN_SECONDS) * 1000);
  const { row, token } = await withEvents(
    s,
    (tx) => insertJoinToken(tx, { areaId: area.id, expiresAt, createdById: p.userId, caFingerprint: s.agents.caFingerprint }),
    ({ row }) => infraEvent('join-token', row.id, 'created', { data: { area: area.name, expiresAt: row.expiresAt.toISOString(), by: p.username } }),
  );
  c.log.info({ join_token_id: row.id, area: area.name }, 'join token created');
  return { id: row.id, token, area: area.name, areaId: row.areaId, expiresAt: row.expiresAt.toISOString(), caFingerprint: s.agents.caFingerprint };
}

/** Tokens by id, never their secrets. */
export async function listJoinTokens(s: Services, c: Caller, q: ListInput): Promise<Page<JoinTokenView>> {
  admin(c);
  const limit = q.limit ?? DEFAULT_LIMIT;
  const rows = await tokenRows(s.db.client, { ...(q.after ? { after: q.after } : {}), take: limit + 1 });
  const now = s.clock.now();
  return page(rows, limit, (r) => r.id, (r) => joinTokenView(r, now));
}

/** Revoke a token that has not been used (revoking twice is fine; a used one is 409: delete its host instead). */
export async function revokeJoinToken(s: Services, c: Caller, id: string): Promise<void> {
  const p = admin(c);
  const t = await joinTokenById(s.db.client, id);
  if (!t) throw new NotFoundError('join token', id);
  if (t.usedAt) throw new ConflictError('the token was already used; delete the host it enrolled instead', { usedByHostId: t.usedByHostId });
  if (t.revokedAt) return;
  const revoked = await withEvents(
    s,
    (tx) => revokeUnusedJoinToken(tx, t.id, new Date(s.clock.now())),
    (ok) => (ok ? [infraEvent('join-token', t.id, 'revoked', { data: { by: p.username } })] : []),
  );
  if (!revoked) {
    const again = await joinTokenById(s.db.client, t.id);
    if (again?.usedAt) throw new ConflictError('the token was already used; delete the host it enrolled instead');
    return;
  }
  c.log.info({ join_token_id: t.id }, 'join token revoked');
}
