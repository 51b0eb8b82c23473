// Areas: failover domains with a subnet and a VLAN range.
import type { DbOrTx } from './db.js';

/** An area row. */
export interface AreaRow {
  id: string;
  name: string;
  subnet: string;
  gateway: string;
  vlanFirst: number;
  vlanLast: number;
  createdAt: Date;
}

export async function listAreas(db: DbOrTx, q: { after?: string; take: number }): Promise<AreaRow[]> {
  return db.area.findMany({ where: q.after ? { name: { gt: q.after } } : {}, orderBy: { name: 'asc' }, take: q.take });
}

export async function areaByName(db: DbOrTx, name: string): Promise<AreaRow | null> {
  return db.area.findUnique({ where: { name } });
}

export async function areaById(db: DbOrTx, id: string): Promise<AreaRow | null> {
  return db.area.findUnique({ where: { id } });
}

/** Name and subnet of every area but one (overlap checks). */
export async function areaSubnets(db: DbOrTx, exceptId?: string): Promise<{ name: string; subnet: string }[]> {
  return db.area.findMany({ where: exceptId ? { id: { not: exceptId } } : {}, select: { name: true, subnet: true } });
}

export async function createArea(db: DbOrTx, a: Omit<AreaRow, 'id' | 'createdAt'>): Promise<AreaRow> {
  return db.area.create({ data: a });
}

export async function updateArea(db: DbOrTx, id: string, a: Omit<AreaRow, 'id' | 'createdAt'>): Promise<AreaRow> {
  return db.area.update({ where: { id }, data: a });
}

/** Delete an area; one still used (pools, hosts, networks) fails with a reference conflict. */
export async function deleteArea(db: DbOrTx, id: string): Promise<void> {
  await db.area.delete({ where: { id } });
}

/** Addresses and VLANs allocated in an area. */
export async function allocationsIn(db: DbOrTx, areaId: string): Promise<{ addresses: number; vlans: number }> {
  const [addresses, vlans] = await Promise.all([
    db.ipAllocation.count({ where: { areaId } }),
    db.vlanAllocation.count({ where: { areaId } }),
  ]);
  return { addresses, vlans };
}
