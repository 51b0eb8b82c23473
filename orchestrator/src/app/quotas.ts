import { ForbiddenError, KloudakError } from '@kloudak/common';
import type { Prisma } from '@kloudak/prisma';
import { workspaceAccess } from './access.js';
import { workspaceUsage, type WorkspaceUsage } from '../store/claims.js';
import type { Actor, ComputeDeps } from './compute-deps.js';

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
export async function checkQuota(tx: Prisma.TransactionClient, workspaceId: string, usage: WorkspaceUsage, add: Partial<WorkspaceUsage>): Promise<void> {
  const q = await tx.workspaceQuota.findUnique({ where: { workspaceId } });
  if (!q) return;
  for (const k of KEYS) {
    const limit = q[k];
    const more = add[k] ?? 0;
    if (limit !== null && more > 0 && usage[k] + more > limit) {
      throw new KloudakError('conflict', `quota exceeded: ${k} would be ${usage[k] + more}, the workspace's limit is ${limit}`, {
        details: { quota: k, limit, usage: usage[k], requested: more },
      });
    }
  }
}

/** A workspace's quota and usage; any member may read it. */
export async function getQuota(d: ComputeDeps, caller: Actor, ws: string): Promise<QuotaView> {
  const access = await workspaceAccess(d.db, caller, ws);
  return d.db.$transaction(async (tx) => {
    const q = await tx.workspaceQuota.findUnique({ where: { workspaceId: access.workspace.id } });
    const limits = Object.fromEntries(KEYS.map((k) => [k, q?.[k] ?? null])) as QuotaLimits;
    return { limits, usage: await workspaceUsage(tx, access.workspace.id) };
  });
}

/** Set a workspace's limits (admins only). Limits below current usage are allowed: they stop growth. */
export async function setQuota(d: ComputeDeps, caller: Actor, ws: string, limits: Partial<QuotaLimits>): Promise<QuotaView> {
  if (!caller.isAdmin) {
    await workspaceAccess(d.db, caller, ws); // a non-member still gets 404
    throw new ForbiddenError('only admins set quotas');
  }
  const access = await workspaceAccess(d.db, caller, ws);
  const data = Object.fromEntries(KEYS.map((k) => [k, limits[k] ?? null])) as QuotaLimits;
  await d.db.workspaceQuota.upsert({ where: { workspaceId: access.workspace.id }, create: { workspaceId: access.workspace.id, ...data }, update: data });
  return getQuota(d, caller, ws);
}
