// Workspace quotas: limits beside usage, and the check every claim makes against them.
import { ForbiddenError, KloudakError } from '@kloudak/common';
import { workspaceUsage, type WorkspaceUsage } from '../store/claims.js';
import { transaction, type Tx } from '../store/db.js';
import { quotaOf, setQuotaOf } from '../store/quotas.js';
import { workspaceAccess } from './access.js';
import { signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';

/** Limits of a workspace; null: unlimited. */
export type QuotaLimits = { [K in keyof WorkspaceUsage]: number | null };

/** Limits beside what the workspace uses. */
export interface QuotaView {
  limits: QuotaLimits;
  usage: WorkspaceUsage;
}

const KEYS: (keyof WorkspaceUsage)[] = ['vms', 'cpu', 'ramMb', 'diskGb', 'networks', 'addresses'];

/**
 * Refuse (409, naming the limit) a change that would take usage past a limit. Call it inside the
 * claims transaction, after the workspace row is locked, so concurrent creates count each other.
 */
export async function checkQuota(tx: Tx, workspaceId: string, usage: WorkspaceUsage, add: Partial<WorkspaceUsage>): Promise<void> {
  const q = await quotaOf(tx, workspaceId);
  if (!q) return;
  for (const k of KEYS) {
    const limit = q[k];
    const more = add[k] ?? 0;
    if (limit !== null && more > 0 && usage[k] + more > limit) {
      throw new KloudakError('conflict', `quota exceeded: ${k} would be ${usage[k] + more}, the workspace's limit is ${limit}`, {
        details: { quota: k, limit, usage: usage[k], requested: more },
        conflict: 'quota',
      });
    }
  }
}

/** A workspace's quota and usage; any member may read it. */
export async function getQuota(s: Services, c: Caller, ws: string): Promise<QuotaView> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  return transaction(s.db.client, async (tx) => {
    const q = await quotaOf(tx, a.workspace.id);
    const limits = Object.fromEntries(KEYS.map((k) => [k, q?.[k] ?? null])) as QuotaLimits;
    return { limits, usage: await workspaceUsage(tx, a.workspace.id) };
  });
}

/**
 * Set a workspace's limits (admins only). Limits below current usage are allowed: they stop growth.
 * A non-admin who is not a member still gets 404, so workspace names do not leak.
 */
export async function setQuota(s: Services, c: Caller, ws: string, limits: Partial<QuotaLimits>): Promise<QuotaView> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  if (!p.isAdmin) throw new ForbiddenError('only admins set quotas');
  const data = Object.fromEntries(KEYS.map((k) => [k, limits[k] ?? null])) as QuotaLimits;
  await setQuotaOf(s.db.client, a.workspace.id, data);
  return getQuota(s, c, ws);
}
