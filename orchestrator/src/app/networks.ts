// A workspace's networks: create (a VLAN claimed, then a task makes it active), rename, delete.
import { ConflictError, NotFoundError, ValidationError } from '@kloudak/common';
import { checkNetworkSubnet, defaultGateway, formatIpv4, parseCidr } from '../domain/ipam.js';
import { requireFlags } from '../domain/permissions.js';
import { allocateVlan } from '../domain/vlan.js';
import { areaByName, areaSubnets } from '../store/areas.js';
import { lockArea, lockForClaims, workspaceUsage } from '../store/claims.js';
import { transaction } from '../store/db.js';
import {
  claimVlan,
  editNetwork,
  insertNetwork,
  interfacesOn,
  networkById,
  networkByName,
  networkRowByName,
  networkSubnets,
  networksOf,
  setNetworkTask,
  usedVlans,
} from '../store/networks.js';
import { insertTask, taskById, unfinishedTask } from '../store/tasks.js';
import { NETWORK_TASKS } from '../tasks/network.js';
import { workspaceAccess } from './access.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { signedIn, type Caller } from './principal.js';
import { checkQuota } from './quotas.js';
import type { Services } from './services.js';
import { taskLimits } from './tasks.js';
import { networkView, taskView, type NetworkView, type TaskView } from './views.js';
import { record, taskQueued, withEvents, workspaceEvent } from './events.js';

/** Input of {@link createNetwork}. */
export interface CreateNetworkInput {
  name: string;
  area: string;
  description?: string;
  /** Own subnet (CIDR) outside every area's; absent: the area's subnet. */
  subnet?: string;
}

/** A network and the task changing it. */
export interface NetworkChange {
  network: NetworkView;
  task: TaskView;
}

async function answer(s: Services, networkId: string, taskId: string): Promise<NetworkChange> {
  const [network, task] = await Promise.all([networkById(s.db.client, networkId), taskById(s.db.client, taskId)]);
  return { network: networkView(network), task: taskView(task) };
}

/**
 * Create a network: its VLAN is allocated from the area's range in the same transaction as the
 * network and its task (a 409 at once when the range is exhausted), then the task makes it active.
 */
export async function createNetwork(s: Services, c: Caller, ws: string, input: CreateNetworkInput): Promise<NetworkChange> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'network_can_add');
  const workspaceId = a.workspace.id;
  const area = await areaByName(s.db.client, input.area);
  if (!area) throw new ValidationError(`no area named '${input.area}'`, { field: 'area' });
  let subnet: string | null = null;
  let gateway: string | null = null;
  if (input.subnet !== undefined) {
    const [areas, nets] = await Promise.all([areaSubnets(s.db.client), networkSubnets(s.db.client, workspaceId)]);
    const ok = checkNetworkSubnet(input.subnet, areas, nets);
    if (!ok.ok) {
      if (ok.kind === 'network') throw new ConflictError(ok.message, { field: 'subnet' });
      throw new ValidationError(ok.message, { field: 'subnet' });
    }
    const cidr = parseCidr(input.subnet);
    if ('error' in cidr) throw new ValidationError(cidr.error, { field: 'subnet' });
    subnet = input.subnet;
    gateway = formatIpv4(defaultGateway(cidr));
  }
  const { networkId, taskId } = await transaction(s.db.client, async (tx) => {
    // The workspace for its quota of networks, the area for its VLANs.
    await lockForClaims(tx, workspaceId, area.id);
    await checkQuota(tx, workspaceId, await workspaceUsage(tx, workspaceId), { networks: 1 });
    if (await networkByName(tx, workspaceId, input.name)) {
      throw new ConflictError(`a network named '${input.name}' already exists in this workspace`, { field: 'name' }, 'exists');
    }
    const v = allocateVlan({ first: area.vlanFirst, last: area.vlanLast }, await usedVlans(tx, area.id));
    if (!v.ok) throw new ConflictError(v.message, { field: 'area' });
    const n = await insertNetwork(tx, { workspaceId, areaId: area.id, name: input.name, description: input.description ?? '', subnet, gateway });
    await claimVlan(tx, { areaId: area.id, vlan: v.vlan, networkId: n.id });
    const t = await insertTask(tx, {
      kind: NETWORK_TASKS.create,
      workspaceId,
      createdById: p.userId,
      targetType: 'network',
      targetId: n.id,
      input: { name: n.name, area: area.name, vlan: v.vlan },
      ...taskLimits(s),
    });
    await setNetworkTask(tx, n.id, t.id);
    await record(
      tx,
      workspaceEvent(workspaceId, 'network', n.id, 'created', { name: n.name, state: 'pending', taskId: t.id, data: { vlan: v.vlan } }),
      taskQueued(workspaceId, { id: t.id, kind: NETWORK_TASKS.create, targetType: 'network', targetId: n.id }),
    );
    return { networkId: n.id, taskId: t.id };
  });
  s.tasks.kick();
  return answer(s, networkId, taskId);
}

/** Rename a network or change its description. */
export async function updateNetwork(s: Services, c: Caller, ws: string, name: string, input: { name?: string; description?: string }): Promise<NetworkView> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  requireFlags(a.permissions, 'network_can_edit');
  const n = await networkByName(s.db.client, a.workspace.id, name);
  if (!n) throw new NotFoundError('network', name);
  return networkView(
    await withEvents(
      s,
      (tx) =>
        editNetwork(tx, n.id, {
          ...(input.name !== undefined ? { name: input.name } : {}),
          ...(input.description !== undefined ? { description: input.description } : {}),
        }),
      (u) => workspaceEvent(a.workspace.id, 'network', u.id, 'updated', { name: u.name, state: u.state }),
    ),
  );
}

/** Delete a network: 409 while VMs are attached; its task removes the VLAN from the hosts, then the row. */
export async function deleteNetwork(s: Services, c: Caller, ws: string, name: string): Promise<NetworkChange> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'network_can_delete');
  const workspaceId = a.workspace.id;
  const { networkId, taskId } = await transaction(s.db.client, async (tx) => {
    const n = await networkByName(tx, workspaceId, name);
    if (!n) throw new NotFoundError('network', name);
    // Attachments are claims in the area: none can be added while this runs.
    await lockArea(tx, n.areaId);
    const attached = await interfacesOn(tx, n.id);
    if (attached > 0) throw new ConflictError(`network '${name}' is attached to ${attached} VM interface(s); detach or delete them first`);
    if (n.state === 'deleting') {
      const pending = await unfinishedTask(tx, n.id, NETWORK_TASKS.delete);
      if (pending) return { networkId: n.id, taskId: pending.id };
    }
    const t = await insertTask(tx, {
      kind: NETWORK_TASKS.delete,
      workspaceId,
      createdById: p.userId,
      targetType: 'network',
      targetId: n.id,
      input: { name: n.name },
      ...taskLimits(s),
    });
    await setNetworkTask(tx, n.id, t.id, 'deleting');
    await record(
      tx,
      workspaceEvent(workspaceId, 'network', n.id, 'state', { name: n.name, state: 'deleting', taskId: t.id }),
      taskQueued(workspaceId, { id: t.id, kind: NETWORK_TASKS.delete, targetType: 'network', targetId: n.id }),
    );
    return { networkId: n.id, taskId: t.id };
  });
  s.tasks.kick();
  return answer(s, networkId, taskId);
}

/** A workspace's networks, by name; any member may read them. */
export async function listNetworks(s: Services, c: Caller, ws: string, q: ListInput): Promise<Page<NetworkView>> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const limit = q.limit ?? DEFAULT_LIMIT;
  const rows = await networksOf(s.db.client, a.workspace.id, { ...(q.after ? { after: q.after } : {}), take: limit + 1 });
  return page(rows, limit, (n) => n.name, networkView);
}

/** One network of a workspace. */
export async function getNetwork(s: Services, c: Caller, ws: string, name: string): Promise<NetworkView> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const n = await networkRowByName(s.db.client, a.workspace.id, name);
  if (!n) throw new NotFoundError('network', name);
  return networkView(n);
}
