import { Prisma } from '@kloudak/prisma';
import { buildPlacementSnapshot, type LocalPoolUsage, type PlacementHost, type PlacementPool, type PlacementSnapshot } from '../domain/placement.js';

/** An interactive transaction. */
type Tx = Prisma.TransactionClient;

const GIB = 1024 ** 3;

/**
 * Serialise claims: every transaction that places VMs or hands out addresses or VLANs in an area,
 * or counts a workspace's quota, first locks the workspace row, then the area row (always in this
 * order, so two such transactions cannot deadlock). Concurrent creates in one area then queue
 * here for a few milliseconds each, and each one's placement sees every earlier claim: a burst can
 * never over-commit a host, hand an address out twice or pass a quota.
 */
export async function lockForClaims(tx: Tx, workspaceId: string, areaId: string): Promise<void> {
  await tx.$queryRaw`SELECT 1 FROM "Workspace" WHERE "id" = ${workspaceId}::uuid FOR UPDATE`;
  await tx.$queryRaw`SELECT 1 FROM "Area" WHERE "id" = ${areaId}::uuid FOR UPDATE`;
}

/** Lock only an area (network VLANs, which no quota of VMs depends on, still count per workspace). */
export async function lockArea(tx: Tx, areaId: string): Promise<void> {
  await tx.$queryRaw`SELECT 1 FROM "Area" WHERE "id" = ${areaId}::uuid FOR UPDATE`;
}

/**
 * The placement snapshot of one area, read inside the claims transaction: its hosts with what the
 * VMs placed on them claim, and its pools with what is claimed in them. `connected` says whether a
 * host's agent holds a session now (the agent link knows; the database does not).
 */
export async function areaPlacementSnapshot(tx: Tx, areaId: string, connected: (hostId: string) => boolean): Promise<PlacementSnapshot> {
  const [hosts, pools, perHost, perPool, perHostPool, haPerHost, moving] = await Promise.all([
    tx.host.findMany({ where: { areaId }, select: { id: true, name: true, areaId: true, state: true, adminState: true, cpuCount: true, ramMb: true, pools: true } }),
    tx.storagePool.findMany({ where: { areaId }, select: { id: true, name: true, areaId: true, shared: true, sizeGb: true } }),
    tx.vm.groupBy({ by: ['hostId'], where: { areaId, hostId: { not: null } }, _sum: { cpu: true, ramMb: true } }),
    tx.vm.groupBy({ by: ['poolId'], where: { areaId, poolId: { not: null } }, _sum: { diskGb: true } }),
    // What each host's VMs claim of a host-local pool: its disks live on that host only.
    tx.vm.groupBy({ by: ['hostId', 'poolId'], where: { areaId, hostId: { not: null }, poolId: { not: null }, pool: { shared: false } }, _sum: { diskGb: true } }),
    tx.vm.groupBy({ by: ['hostId', 'workspaceId'], where: { areaId, hostId: { not: null }, haEnabled: true }, _count: { _all: true } }),
    // A VM a drain is moving claims its destination too, until its claim moves there.
    tx.vm.groupBy({ by: ['migratingToHostId'], where: { areaId, migratingToHostId: { not: null } }, _sum: { cpu: true, ramMb: true } }),
  ]);
  const claimed = new Map(perHost.map((r) => [r.hostId!, { cpu: r._sum.cpu ?? 0, ramMb: r._sum.ramMb ?? 0 }]));
  for (const r of moving) {
    const c = claimed.get(r.migratingToHostId!) ?? { cpu: 0, ramMb: 0 };
    claimed.set(r.migratingToHostId!, { cpu: c.cpu + (r._sum.cpu ?? 0), ramMb: c.ramMb + (r._sum.ramMb ?? 0) });
  }
  const poolClaimed = new Map(perPool.map((r) => [r.poolId!, r._sum.diskGb ?? 0]));
  const ha = new Map<string, Map<string, number>>();
  for (const r of haPerHost) {
    const m = ha.get(r.hostId!) ?? new Map<string, number>();
    m.set(r.workspaceId, r._count._all);
    ha.set(r.hostId!, m);
  }
  const localClaimed = new Map(perHostPool.map((r) => [`${r.hostId!}/${r.poolId!}`, r._sum.diskGb ?? 0]));
  // Pools the hosts reported active in their Hello, by name; and the largest capacity any host saw
  // for a shared pool whose size the admin left at 0. A host-local pool is a separate storage on
  // each host: its capacity is what that host reported (or the admin's size, the same on each
  // host), and only that host's VMs claim it.
  const poolByName = new Map(pools.map((p) => [p.name, p]));
  const reportedGb = new Map<string, number>();
  const placementHosts: PlacementHost[] = hosts.map((h) => {
    const active = new Set<string>();
    const local = new Map<string, LocalPoolUsage>();
    for (const rp of asPoolList(h.pools)) {
      const p = poolByName.get(rp.name);
      if (!p || !rp.active) continue;
      active.add(p.id);
      const gb = Math.floor(rp.capacityBytes / GIB);
      if (p.shared) reportedGb.set(p.id, Math.max(reportedGb.get(p.id) ?? 0, gb));
      else local.set(p.id, { capacityGb: p.sizeGb > 0 ? p.sizeGb : gb, claimedGb: localClaimed.get(`${h.id}/${p.id}`) ?? 0 });
    }
    const c = claimed.get(h.id);
    return {
      id: h.id,
      name: h.name,
      areaId: h.areaId,
      state: h.state,
      adminState: h.adminState,
      connected: connected(h.id),
      cpuCount: h.cpuCount,
      ramMb: h.ramMb,
      claimedCpu: c?.cpu ?? 0,
      claimedRamMb: c?.ramMb ?? 0,
      activePools: active,
      localPools: local,
      haVmsByWorkspace: ha.get(h.id) ?? new Map(),
    };
  });
  const placementPools: PlacementPool[] = pools.map((p) => ({
    id: p.id,
    name: p.name,
    areaId: p.areaId,
    shared: p.shared,
    // For a host-local pool these two are unused: its capacity and claims are per host (localPools).
    capacityGb: p.shared ? (p.sizeGb > 0 ? p.sizeGb : (reportedGb.get(p.id) ?? 0)) : 0,
    claimedGb: p.shared ? (poolClaimed.get(p.id) ?? 0) : 0,
  }));
  return buildPlacementSnapshot(placementHosts, placementPools);
}

/** Addresses already handed out in an address space ("area:<id>" or "network:<id>"). */
export async function usedAddresses(tx: Tx, scope: string): Promise<string[]> {
  const rows = await tx.ipAllocation.findMany({ where: { scope }, select: { address: true } });
  return rows.map((r) => r.address);
}

/** A workspace's usage, for its quota. */
export interface WorkspaceUsage {
  vms: number;
  cpu: number;
  ramMb: number;
  diskGb: number;
  networks: number;
  addresses: number;
}

/** What a workspace uses now (every VM and network that exists, whatever its state). */
export async function workspaceUsage(tx: Tx, workspaceId: string): Promise<WorkspaceUsage> {
  const [vms, networks, addresses] = await Promise.all([
    tx.vm.aggregate({ where: { workspaceId }, _count: { _all: true }, _sum: { cpu: true, ramMb: true, diskGb: true } }),
    tx.network.count({ where: { workspaceId } }),
    tx.ipAllocation.count({ where: { vm: { workspaceId } } }),
  ]);
  return {
    vms: vms._count._all,
    cpu: vms._sum.cpu ?? 0,
    ramMb: vms._sum.ramMb ?? 0,
    diskGb: vms._sum.diskGb ?? 0,
    networks,
    addresses,
  };
}

/** Release what a VM claims: its addresses, its host and pool. Idempotent. */
export async function releaseVmClaims(tx: Tx, vmId: string): Promise<void> {
  await tx.ipAllocation.deleteMany({ where: { vmId } });
  await tx.vmInterface.updateMany({ where: { vmId }, data: { ip: null } });
  await tx.vm.updateMany({ where: { id: vmId }, data: { hostId: null, poolId: null } });
}

function asPoolList(v: unknown): { name: string; active: boolean; capacityBytes: number }[] {
  if (!Array.isArray(v)) return [];
  return v
    .filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null && typeof (x as { name?: unknown }).name === 'string')
    .map((x) => ({ name: x['name'] as string, active: x['active'] !== false, capacityBytes: Number(x['capacityBytes'] ?? 0) || 0 }));
}
