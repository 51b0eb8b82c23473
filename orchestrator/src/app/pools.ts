// Storage pools (admin): mounted at the same path on every host of their area.
import { ConflictError, NotFoundError } from '@kloudak/common';
import { areaByName } from '../store/areas.js';
import { createPool as insertPool, deletePool as removePool, listPools as poolRows, poolAtPath, poolByName, type PoolRow } from '../store/pools.js';
import { invalidField } from './errors.js';
import { infraEvent, withEvents } from './events.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { admin, type Caller } from './principal.js';
import type { Services } from './services.js';

/** The kinds of libvirt storage pool Kloudak knows. */
export const POOL_TYPES = ['dir', 'fs', 'netfs', 'logical', 'iscsi', 'rbd', 'gluster'] as const;
export type PoolType = (typeof POOL_TYPES)[number];

/** A pool as the API shows it. */
export interface PoolView {
  id: string;
  name: string;
  area: string;
  path: string;
  shared: boolean;
  type: string;
  createdAt: string;
}

function view(p: PoolRow): PoolView {
  return { id: p.id, name: p.name, area: p.area.name, path: p.path, shared: p.shared, type: p.type, createdAt: p.createdAt.toISOString() };
}

async function poolNamed(s: Services, name: string): Promise<PoolRow> {
  const p = await poolByName(s.db.client, name);
  if (!p) throw new NotFoundError('pool', name);
  return p;
}

export async function listPools(s: Services, c: Caller, q: ListInput): Promise<Page<PoolView>> {
  admin(c);
  const limit = q.limit ?? DEFAULT_LIMIT;
  return page(await poolRows(s.db.client, { ...(q.after ? { after: q.after } : {}), take: limit + 1 }), limit, (r) => r.name, view);
}

export async function getPool(s: Services, c: Caller, name: string): Promise<PoolView> {
  admin(c);
  return view(await poolNamed(s, name));
}

/** Register a pool in an area (named; 400 when it does not exist); one path per area. */
export async function createPool(
  s: Services,
  c: Caller,
  input: { name: string; area: string; path: string; shared?: boolean; type: PoolType },
): Promise<PoolView> {
  const p = admin(c);
  const area = await areaByName(s.db.client, input.area);
  if (!area) throw invalidField('/area', `area '${input.area}' does not exist`);
  const dup = await poolAtPath(s.db.client, area.id, input.path);
  if (dup) throw new ConflictError(`pool '${dup.name}' already uses this path in area '${input.area}'`, undefined, 'exists');
  const pool = await withEvents(
    s,
    (tx) => insertPool(tx, { name: input.name, areaId: area.id, path: input.path, shared: input.shared ?? true, type: input.type }),
    (pool) => infraEvent('pool', pool.id, 'created', { name: pool.name, data: { area: area.name, by: p.username } }),
  );
  return view(pool);
}

/** Delete a pool no VM uses (409 otherwise). */
export async function deletePool(s: Services, c: Caller, name: string): Promise<void> {
  const p = admin(c);
  const pool = await poolNamed(s, name);
  await withEvents(s, (tx) => removePool(tx, pool.id), () => infraEvent('pool', pool.id, 'deleted', { name: pool.name, data: { by: p.username } }));
}
