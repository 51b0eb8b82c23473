// A workspace's VMs and their interfaces.
import type { Prisma, VmModel } from '@kloudak/prisma';
import type { DbOrTx } from './db.js';

const withNames = {
  area: { select: { name: true } },
  template: { select: { name: true } },
  host: { select: { name: true } },
  ips: { select: { address: true }, orderBy: { createdAt: 'asc' as const }, take: 1 },
  interfaces: { orderBy: { position: 'asc' as const }, include: { network: { select: { name: true, vlan: { select: { vlan: true } } } } } },
} satisfies Prisma.VmInclude;

/** A VM with the names of its area, template and host, its first address and its interfaces in order. */
export type VmRow = Prisma.VmGetPayload<{ include: typeof withNames }>;

/** A VM of a workspace by name, or null. */
export async function vmByName(db: DbOrTx, workspaceId: string, name: string): Promise<VmRow | null> {
  return db.vm.findUnique({ where: { workspaceId_name: { workspaceId, name } }, include: withNames });
}

/** Whether a workspace has a VM of that name. */
export async function vmNamed(db: DbOrTx, workspaceId: string, name: string): Promise<boolean> {
  return (await db.vm.findUnique({ where: { workspaceId_name: { workspaceId, name } }, select: { id: true } })) !== null;
}

/** A VM that exists (it was just written by the caller). */
export async function vmById(db: DbOrTx, id: string): Promise<VmRow> {
  return db.vm.findUniqueOrThrow({ where: { id }, include: withNames });
}

/** A workspace's VMs by name, at most `take` after `after`. */
export async function vmsOf(db: DbOrTx, workspaceId: string, q: { after?: string; take: number }): Promise<VmRow[]> {
  return db.vm.findMany({
    where: { workspaceId, ...(q.after ? { name: { gt: q.after } } : {}) },
    include: withNames,
    orderBy: { name: 'asc' },
    take: q.take,
  });
}

/** A placed VM to write: its claims (host, pool) are taken by the same transaction. */
export type NewVm = Pick<
  VmModel,
  'id' | 'workspaceId' | 'name' | 'description' | 'areaId' | 'templateId' | 'hostId' | 'poolId' | 'cpu' | 'ramMb' | 'diskGb' | 'haEnabled' | 'userData'
> & { sshKeys: string[] };

/** Write a placed VM (state scheduled). */
export async function insertVm(db: DbOrTx, v: NewVm): Promise<void> {
  await db.vm.create({ data: { ...v, state: 'scheduled' } });
}

/** Rename a VM or change its description. */
export async function editVm(db: DbOrTx, id: string, data: { name?: string; description?: string }): Promise<void> {
  await db.vm.update({ where: { id }, data });
}

/** Point a VM at its latest task (and, for a delete, mark it deleting). */
export async function setVmTask(db: DbOrTx, id: string, taskId: string, state?: 'deleting'): Promise<void> {
  await db.vm.update({ where: { id }, data: { lastTaskId: taskId, ...(state ? { state } : {}) } });
}

/** The position of a VM's next interface (0 for its first). */
export async function nextInterfacePosition(db: DbOrTx, vmId: string): Promise<number> {
  const max = await db.vmInterface.aggregate({ where: { vmId }, _max: { position: true } });
  return (max._max.position ?? -1) + 1;
}

/**
 * Claim an address in an address space ("area:<id>" or "network:<id>") for a VM's NIC on a
 * network; the unique key on (scope, address) makes a double claim fail.
 */
export async function claimAddress(db: DbOrTx, a: { areaId: string; scope: string; address: string; networkId: string; vmId: string }): Promise<void> {
  await db.ipAllocation.create({ data: a });
}

/** Which of `macs` (lower case) a NIC holds already. */
export async function macsInUse(db: DbOrTx, macs: string[]): Promise<Set<string>> {
  const rows = await db.vmInterface.findMany({ where: { mac: { in: macs } }, select: { mac: true } });
  return new Set(rows.map((r) => r.mac.toLowerCase()));
}

/** Write a VM's NIC on a network. */
export async function insertInterface(db: DbOrTx, i: { vmId: string; networkId: string; mac: string; ip: string; position: number }): Promise<void> {
  await db.vmInterface.create({ data: i });
}
