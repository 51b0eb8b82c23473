// Hosts as admins see and change them (the agent link writes its own columns: agent-hosts.ts).
import type { DbOrTx } from './db.js';

/** A host row with its area's name and its VM count. */
export interface HostRow {
  id: string;
  name: string;
  areaId: string;
  state: string;
  adminState: string;
  cpuCount: number;
  ramMb: number;
  diskGb: number;
  memoryBytes: bigint;
  diskBytes: bigint;
  agentStartedAt: Date | null;
  certExpiresAt: Date | null;
  agentVersion: string;
  lastHeartbeatAt: Date | null;
  agentStoppedAt: Date | null;
  agentStoppedVmIds: string[];
  createdAt: Date;
  area: { name: string };
  _count: { vms: number };
}

const hostInclude = { area: { select: { name: true } }, _count: { select: { vms: true } } } as const;

export async function listHosts(db: DbOrTx, q: { after?: string; take: number }): Promise<HostRow[]> {
  return db.host.findMany({ where: q.after ? { name: { gt: q.after } } : {}, include: hostInclude, orderBy: { name: 'asc' }, take: q.take });
}

export async function hostById(db: DbOrTx, id: string): Promise<HostRow | null> {
  return db.host.findUnique({ where: { id }, include: hostInclude });
}

export async function hostByName(db: DbOrTx, name: string): Promise<HostRow | null> {
  return db.host.findUnique({ where: { name }, include: hostInclude });
}

/** Set a host's admin state; null when the host does not exist. */
export async function setAdminState(db: DbOrTx, id: string, adminState: 'active' | 'maintenance'): Promise<HostRow | null> {
  const n = await db.host.updateMany({ where: { id }, data: { adminState } });
  return n.count === 0 ? null : hostById(db, id);
}

export async function deleteHost(db: DbOrTx, id: string): Promise<void> {
  await db.host.delete({ where: { id } });
}

/** A usage point: one minute of averaged heartbeats. */
export interface UsageRow {
  at: Date;
  cpuPct: number;
  memUsedMb: number;
  memTotalMb: number;
  diskUsedGb: number;
  diskTotalGb: number;
  samples: number;
}

/** A host's per-minute usage between two instants, oldest first, at most `take` points. */
export async function usageOf(db: DbOrTx, hostId: string, from: Date, to: Date, take: number): Promise<UsageRow[]> {
  return db.hostUsageSample.findMany({
    where: { hostId, resolution: 60, at: { gte: from, lte: to } },
    orderBy: { at: 'asc' },
    take,
  });
}
