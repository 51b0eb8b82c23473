// A workspace's networks, their VLANs, and what is attached to them.
import type { NetworkModel as Network, Prisma } from '@kloudak/prisma';
import type { AreaRow } from './areas.js';
import type { DbOrTx } from './db.js';

const withArea = { area: { select: { name: true, subnet: true, gateway: true } }, vlan: { select: { vlan: true } } } satisfies Prisma.NetworkInclude;

/** A network with its area's name and addresses and its VLAN, as the API shows it. */
export type NetworkRow = Prisma.NetworkGetPayload<{ include: typeof withArea }>;

/** A network of a workspace by name, or null. */
export async function networkByName(db: DbOrTx, workspaceId: string, name: string): Promise<Network | null> {
  return db.network.findUnique({ where: { workspaceId_name: { workspaceId, name } } });
}

/** A network of a workspace by name with its area and VLAN, or null. */
export async function networkRowByName(db: DbOrTx, workspaceId: string, name: string): Promise<NetworkRow | null> {
  return db.network.findUnique({ where: { workspaceId_name: { workspaceId, name } }, include: withArea });
}

/** A network that exists (it was just written by the caller), with its area and VLAN. */
export async function networkById(db: DbOrTx, id: string): Promise<NetworkRow> {
  return db.network.findUniqueOrThrow({ where: { id }, include: withArea });
}

/** A workspace's networks by name, at most `take` after `after`. */
export async function networksOf(db: DbOrTx, workspaceId: string, q: { after?: string; take: number }): Promise<NetworkRow[]> {
  return db.network.findMany({
    where: { workspaceId, ...(q.after ? { name: { gt: q.after } } : {}) },
    include: withArea,
    orderBy: { name: 'asc' },
    take: q.take,
  });
}

/** The networks of a workspace among `names` (those that exist), each with its area. */
export async function networksNamed(db: DbOrTx, workspaceId: string, names: string[]): Promise<(Network & { area: AreaRow })[]> {
  return db.network.findMany({ where: { workspaceId, name: { in: names } }, include: { area: true } });
}

/** Names and own subnets of a workspace's networks (null: the area's). */
export async function networkSubnets(db: DbOrTx, workspaceId: string): Promise<{ name: string; subnet: string | null }[]> {
  return db.network.findMany({ where: { workspaceId }, select: { name: true, subnet: true } });
}

export async function insertNetwork(
  db: DbOrTx,
  n: { workspaceId: string; areaId: string; name: string; description: string; subnet: string | null; gateway: string | null },
): Promise<Network> {
  return db.network.create({ data: { ...n, state: 'pending' } });
}

/** Rename a network or change its description. */
export async function editNetwork(db: DbOrTx, id: string, data: { name?: string; description?: string }): Promise<NetworkRow> {
  return db.network.update({ where: { id }, data, include: withArea });
}

/** Point a network at its latest task (and, for a delete, mark it deleting). */
export async function setNetworkTask(db: DbOrTx, id: string, taskId: string, state?: 'deleting'): Promise<void> {
  await db.network.update({ where: { id }, data: { lastTaskId: taskId, ...(state ? { state } : {}) } });
}

/** How many VM interfaces are attached to a network. */
export async function interfacesOn(db: DbOrTx, networkId: string): Promise<number> {
  return db.vmInterface.count({ where: { networkId } });
}

/** VLAN ids already claimed in an area. */
export async function usedVlans(db: DbOrTx, areaId: string): Promise<number[]> {
  const rows = await db.vlanAllocation.findMany({ where: { areaId }, select: { vlan: true } });
  return rows.map((r) => r.vlan);
}

/** Claim a VLAN of an area for a network (the unique key makes a double claim fail). */
export async function claimVlan(db: DbOrTx, v: { areaId: string; vlan: number; networkId: string }): Promise<void> {
  await db.vlanAllocation.create({ data: v });
}
