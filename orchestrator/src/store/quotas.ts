// Workspace quotas (limits; usage is counted from the claims, store/claims.ts workspaceUsage).
import type { DbOrTx } from './db.js';

/** A workspace's limits; null: unlimited. */
export interface QuotaRow {
  vms: number | null;
  cpu: number | null;
  ramMb: number | null;
  diskGb: number | null;
  networks: number | null;
  addresses: number | null;
}

/** A workspace's limits, or null when it has none (unlimited). */
export async function quotaOf(db: DbOrTx, workspaceId: string): Promise<QuotaRow | null> {
  return db.workspaceQuota.findUnique({ where: { workspaceId } });
}

/** Set all of a workspace's limits at once. */
export async function setQuotaOf(db: DbOrTx, workspaceId: string, limits: QuotaRow): Promise<void> {
  await db.workspaceQuota.upsert({ where: { workspaceId }, create: { workspaceId, ...limits }, update: limits });
}
