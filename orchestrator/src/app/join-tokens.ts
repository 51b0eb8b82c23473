// Join tokens (admin): single-use secrets with which one new host enrolls in an area.
import { ConflictError, NotFoundError } from '@kloudak/common';
import { areaById, areaByName } from '../store/areas.js';
import { hostById, hostByName } from '../store/hosts.js';
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
  /** The existing host this token re-enrolls; null: it enrolls a new host. */
  hostId: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Lifetime of a token when the admin does not say. */
export const DEFAULT_JOIN_TOKEN_SECONDS = 3600;

/**
 * Create a token for an area, named like on every other route (its id, what this took first, is
 * still accepted), or, with `host` (its id or name), a re-enrollment token for that existing
 * host: its agent enrolls again under the same id, with a new certificate (the area is then the
 * host's; one given must be it). Only SHA-256 of its secret is kept.
 */
export async function createJoinToken(s: Services, c: Caller, input: { area?: string; expiresIn?: number; host?: string }): Promise<JoinTokenCreatedView> {
  const p = admin(c);
  let host: { id: string; name: string; areaId: string } | null = null;
  if (input.host !== undefined) {
    host = (await hostByName(s.db.client, input.host)) ?? (UUID.test(input.host) ? await hostById(s.db.client, input.host.toLowerCase()) : null);
    if (!host) throw invalidField('/host', `host '${input.host}' does not exist`);
  }
  if (input.area === undefined && !host) throw invalidField('/area', 'an area is required (or `host`, to re-enroll an existing host)');
  const area = input.area === undefined
    ? await areaById(s.db.client, host!.areaId)
    : ((await areaByName(s.db.client, input.area)) ?? (UUID.test(input.area) ? await areaById(s.db.client, input.area) : null));
  if (!area) throw invalidField('/area', `area '${input.area}' does not exist`);
  if (host && area.id !== host.areaId) throw invalidField('/area', `host '${host.name}' is not in area '${area.name}'; a re-enrollment keeps the host's area`);
  const expiresAt = new Date(s.clock.now() + (input.expiresIn ?? DEFAULT_JOIN_TOKEN_SECONDS) * 1000);
  const { row, token } = await withEvents(
    s,
    (tx) => insertJoinToken(tx, { areaId: area.id, expiresAt, createdById: p.userId, caFingerprint: s.agents.caFingerprint, forHostId: host?.id ?? null }),
    ({ row }) =>
      infraEvent('join-token', row.id, 'created', {
        data: { area: area.name, expiresAt: row.expiresAt.toISOString(), by: p.username, ...(host ? { hostId: host.id, hostName: host.name } : {}) },
      }),
  );
  c.log.info({ join_token_id: row.id, area: area.name, host_id: host?.id }, host ? 're-enrollment token created' : 'join token created');
  return {
    id: row.id,
    token,
    area: area.name,
    areaId: row.areaId,
    expiresAt: row.expiresAt.toISOString(),
    caFingerprint: s.agents.caFingerprint,
    hostId: row.forHostId,
  };
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
