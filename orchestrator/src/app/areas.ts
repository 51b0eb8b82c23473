// Areas (failover domains with a subnet and a VLAN range): users read them, admins manage them.
import { ConflictError, NotFoundError } from '@kloudak/common';
import { checkNPlusOne, type NPlusOneReport } from '../domain/drain.js';
import { checkArea, formatVlanRange, overlappingArea, type Cidr } from '../domain/inventory-rules.js';
import { areaPlacementSnapshot } from '../store/claims.js';
import { areaHostIds, areaVms } from '../store/evacuations.js';
import { connectedHosts } from '../store/instances.js';
import { lockNamed } from '../store/access.js';
import { allocationsIn, areaByName, areaSubnets, createArea as insertArea, deleteArea as removeArea, listAreas as areaRows, updateArea as writeArea, type AreaRow } from '../store/areas.js';
import { transaction, type Tx } from '../store/db.js';
import { invalidField } from './errors.js';
import { infraEvent, record, withEvents } from './events.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { admin, signedIn, type Caller } from './principal.js';
import type { Services } from './services.js';

/** An area as the API shows it. */
export interface AreaView {
  id: string;
  name: string;
  subnet: string;
  gateway: string;
  vlanRange: string;
  createdAt: string;
}

/** What an admin sets on an area. */
export interface AreaInput {
  name: string;
  subnet: string;
  gateway: string;
  vlanRange: string;
}

// Area writes take this lock: two areas created at once must still not overlap.
const AREAS_LOCK = 'kloudak.areas';

function view(a: AreaRow): AreaView {
  return { id: a.id, name: a.name, subnet: a.subnet, gateway: a.gateway, vlanRange: formatVlanRange(a.vlanFirst, a.vlanLast), createdAt: a.createdAt.toISOString() };
}

function checked(subnet: string, gateway: string, vlanRange: string): { cidr: Cidr; vlanFirst: number; vlanLast: number } {
  const c = checkArea(subnet, gateway, vlanRange);
  if (!c.ok) throw invalidField(c.field, c.problem);
  return c;
}

async function refuseOverlap(tx: Tx, cidr: Cidr, exceptId?: string): Promise<void> {
  const o = overlappingArea(cidr, await areaSubnets(tx, exceptId));
  if (o) throw new ConflictError(`subnet overlaps area '${o.name}' (${o.subnet})`, { area: o.name });
}

/** An area by name, or 404. */
export async function areaNamed(s: Services, name: string): Promise<AreaRow> {
  const a = await areaByName(s.db.client, name);
  if (!a) throw new NotFoundError('area', name);
  return a;
}

export async function listAreas(s: Services, c: Caller, q: ListInput): Promise<Page<AreaView>> {
  signedIn(c);
  const limit = q.limit ?? DEFAULT_LIMIT;
  return page(await areaRows(s.db.client, { ...(q.after ? { after: q.after } : {}), take: limit + 1 }), limit, (r) => r.name, view);
}

export async function getArea(s: Services, c: Caller, name: string): Promise<AreaView> {
  signedIn(c);
  return view(await areaNamed(s, name));
}

/** The n+1 check of an area, as the API shows it. */
export interface AreaCapacityView extends NPlusOneReport {
  area: string;
  checkedAt: string;
}

/**
 * The n+1 check (admin): would the area survive the loss of its largest host (by the vCPU and RAM
 * its VMs claim)? The evacuation planner places that host's HA VMs, then all of its VMs, on the
 * other hosts as they are now (capacity, state, maintenance, connection, the VMs' pools), and the
 * answer names the VMs that would not fit and why. Read without the claims lock: a snapshot.
 */
export async function areaCapacity(s: Services, c: Caller, name: string): Promise<AreaCapacityView> {
  admin(c);
  const a = await areaNamed(s, name);
  const db = s.db.client;
  const hostIds = await areaHostIds(db, a.id);
  // Connected to this orchestrator, or to another one (its registration says so).
  const elsewhere = await connectedHosts(db, hostIds);
  const snapshot = await areaPlacementSnapshot(db, a.id, (id) => s.agents.status(id).connected || elsewhere.has(id));
  const report = checkNPlusOne(a.id, snapshot, await areaVms(db, a.id), s.placement);
  return { area: a.name, checkedAt: new Date(s.clock.now()).toISOString(), ...report };
}

/** Create an area; its subnet may not overlap another area's (admin). */
export async function createArea(s: Services, c: Caller, input: AreaInput): Promise<AreaView> {
  const p = admin(c);
  const { cidr, vlanFirst, vlanLast } = checked(input.subnet, input.gateway, input.vlanRange);
  const a = await transaction(s.db.client, async (tx) => {
    await lockNamed(tx, AREAS_LOCK);
    await refuseOverlap(tx, cidr);
    const a = await insertArea(tx, { name: input.name, subnet: input.subnet, gateway: input.gateway, vlanFirst, vlanLast });
    await record(tx, infraEvent('area', a.id, 'created', { name: a.name, data: { by: p.username } }));
    return a;
  });
  return view(a);
}

/** Change an area (admin); its subnet and VLAN range are fixed once addresses or VLANs are allocated. */
export async function updateArea(s: Services, c: Caller, name: string, input: Partial<AreaInput>): Promise<AreaView> {
  const p = admin(c);
  const a = await transaction(s.db.client, async (tx) => {
    await lockNamed(tx, AREAS_LOCK);
    const cur = await areaByName(tx, name);
    if (!cur) throw new NotFoundError('area', name);
    const subnet = input.subnet ?? cur.subnet;
    const gateway = input.gateway ?? cur.gateway;
    const { cidr, vlanFirst, vlanLast } = checked(subnet, gateway, input.vlanRange ?? formatVlanRange(cur.vlanFirst, cur.vlanLast));
    if (subnet !== cur.subnet || vlanFirst !== cur.vlanFirst || vlanLast !== cur.vlanLast) {
      const used = await allocationsIn(tx, cur.id);
      if (used.addresses + used.vlans > 0) throw new ConflictError('subnet and VLAN range cannot change while addresses or VLANs are allocated');
    }
    if (subnet !== cur.subnet) await refuseOverlap(tx, cidr, cur.id);
    const a = await writeArea(tx, cur.id, { name: input.name ?? cur.name, subnet, gateway, vlanFirst, vlanLast });
    await record(tx, infraEvent('area', a.id, 'updated', { name: a.name, data: { by: p.username } }));
    return a;
  });
  return view(a);
}

/** Delete an area no pool, host or network uses (admin; 409 otherwise). */
export async function deleteArea(s: Services, c: Caller, name: string): Promise<void> {
  const p = admin(c);
  const a = await areaNamed(s, name);
  await withEvents(s, (tx) => removeArea(tx, a.id), () => infraEvent('area', a.id, 'deleted', { name: a.name, data: { by: p.username } }));
}
