// Storage pools of an area.
import type { DbOrTx } from './db.js';

/** A pool row with its area's name. */
export interface PoolRow {
  id: string;
  name: string;
  path: string;
  shared: boolean;
  type: string;
  createdAt: Date;
  area: { name: string };
}

const withArea = { area: { select: { name: true } } } as const;

export async function listPools(db: DbOrTx, q: { after?: string; take: number }): Promise<PoolRow[]> {
  return db.storagePool.findMany({ where: q.after ? { name: { gt: q.after } } : {}, include: withArea, orderBy: { name: 'asc' }, take: q.take });
}

export async function poolByName(db: DbOrTx, name: string): Promise<PoolRow | null> {
  return db.storagePool.findUnique({ where: { name }, include: withArea });
}

/** The pool of an area at a path, if any. */
export async function poolAtPath(db: DbOrTx, areaId: string, path: string): Promise<{ name: string } | null> {
  return db.storagePool.findFirst({ where: { areaId, path }, select: { name: true } });
}

export async function createPool(db: DbOrTx, p: { name: string; areaId: string; path: string; shared: boolean; type: string }): Promise<PoolRow> {
  return db.storagePool.create({ data: p, include: withArea });
}

export async function deletePool(db: DbOrTx, id: string): Promise<void> {
  await db.storagePool.delete({ where: { id } });
}
