import { ConflictError, NotFoundError, ValidationError } from '@kloudak/common';
import { checkNetworkSubnet, parseCidr, formatIpv4, defaultGateway } from '../domain/ipam.js';
import { allocateVlan } from '../domain/vlan.js';
import { requireFlags } from '../domain/permissions.js';
import { workspaceAccess } from './access.js';
import { lockArea, workspaceUsage } from '../store/claims.js';
import { insertTask } from '../store/tasks.js';
import { NETWORK_TASKS } from '../tasks/network.js';
import type { Actor, ComputeDeps } from './compute-deps.js';
import { checkQuota } from './quotas.js';
import { networkInclude, networkView, taskInclude, taskView, type NetworkView, type TaskView } from './views.js';

/** Input of {@link createNetwork}. */
export interface CreateNetworkInput {
  name: string;
  area: string;
  description?: string;
  /** Own subnet (CIDR) outside every area's; absent: the area's subnet. */
  subnet?: string;
}

/**
 * Create a network: its VLAN is allocated from the area's range in the same transaction as the
 * network and its task (a 409 at once when the range is exhausted), then the task makes it active.
 */
export async function createNetwork(d: ComputeDeps, caller: Actor, ws: string, input: CreateNetworkInput): Promise<{ network: NetworkView; task: TaskView }> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'network_can_add');
  const area = await d.db.area.findUnique({ where: { name: input.area } });
  if (!area) throw new ValidationError(`no area named '${input.area}'`, { field: 'area' });
  let subnet: string | null = null;
  let gateway: string | null = null;
  if (input.subnet !== undefined) {
    const [areas, nets] = await Promise.all([
      d.db.area.findMany({ select: { name: true, subnet: true } }),
      d.db.network.findMany({ where: { workspaceId: access.workspace.id }, select: { name: true, subnet: true } }),
    ]);
    const ok = checkNetworkSubnet(input.subnet, areas, nets);
    if (!ok.ok) {
      if (ok.kind === 'network') throw new ConflictError(ok.message, { field: 'subnet' });
      throw new ValidationError(ok.message, { field: 'subnet' });
    }
    const c = parseCidr(input.subnet);
    if ('error' in c) throw new ValidationError(c.error, { field: 'subnet' });
    subnet = input.subnet;
    gateway = formatIpv4(defaultGateway(c));
  }
  const workspaceId = access.workspace.id;
  const { network, taskId } = await d.db.$transaction(async (tx) => {
    await tx.$queryRaw`SELECT 1 FROM "Workspace" WHERE "id" = ${workspaceId}::uuid FOR UPDATE`;
    await lockArea(tx, area.id);
    await checkQuota(tx, workspaceId, await workspaceUsage(tx, workspaceId), { networks: 1 });
    if (await tx.network.findUnique({ where: { workspaceId_name: { workspaceId, name: input.name } } })) {
      throw new ConflictError(`a network named '${input.name}' already exists in this workspace`, { field: 'name' });
    }
    const used = await tx.vlanAllocation.findMany({ where: { areaId: area.id }, select: { vlan: true } });
    const v = allocateVlan({ first: area.vlanFirst, last: area.vlanLast }, used.map((u) => u.vlan));
    if (!v.ok) throw new ConflictError(v.message, { field: 'area' });
    const n = await tx.network.create({
      data: { workspaceId, areaId: area.id, name: input.name, description: input.description ?? '', subnet, gateway, state: 'pending' },
    });
    await tx.vlanAllocation.create({ data: { areaId: area.id, vlan: v.vlan, networkId: n.id } });
    const t = await insertTask(tx, {
      kind: NETWORK_TASKS.create,
      workspaceId,
      createdById: caller.userId,
      targetType: 'network',
      targetId: n.id,
      input: { name: n.name, area: area.name, vlan: v.vlan },
      maxAttempts: d.taskMaxAttempts,
      deadline: new Date(d.clock.now() + d.taskTimeoutMs),
    });
    await tx.network.update({ where: { id: n.id }, data: { lastTaskId: t.id } });
    return { network: n, taskId: t.id };
  });
  d.kick();
  return {
    network: networkView(await d.db.network.findUniqueOrThrow({ where: { id: network.id }, include: networkInclude })),
    task: taskView(await d.db.task.findUniqueOrThrow({ where: { id: taskId }, include: taskInclude })),
  };
}

/** Rename a network or change its description. */
export async function updateNetwork(d: ComputeDeps, caller: Actor, ws: string, name: string, input: { name?: string; description?: string }): Promise<NetworkView> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'network_can_edit');
  const n = await d.db.network.findUnique({ where: { workspaceId_name: { workspaceId: access.workspace.id, name } } });
  if (!n) throw new NotFoundError('network', name);
  const updated = await d.db.network.update({
    where: { id: n.id },
    data: { ...(input.name !== undefined ? { name: input.name } : {}), ...(input.description !== undefined ? { description: input.description } : {}) },
    include: networkInclude,
  });
  return networkView(updated);
}

/** Delete a network: 409 while VMs are attached; its task removes the VLAN from the hosts, then the row. */
export async function deleteNetwork(d: ComputeDeps, caller: Actor, ws: string, name: string): Promise<{ network: NetworkView; task: TaskView }> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'network_can_delete');
  const workspaceId = access.workspace.id;
  const { id, taskId } = await d.db.$transaction(async (tx) => {
    const n = await tx.network.findUnique({ where: { workspaceId_name: { workspaceId, name } } });
    if (!n) throw new NotFoundError('network', name);
    await lockArea(tx, n.areaId);
    const attached = await tx.vmInterface.count({ where: { networkId: n.id } });
    if (attached > 0) throw new ConflictError(`network '${name}' is attached to ${attached} VM interface(s); detach or delete them first`);
    if (n.state === 'deleting') {
      const pending = await tx.task.findFirst({ where: { targetId: n.id, kind: NETWORK_TASKS.delete, state: { in: ['queued', 'running', 'rolling_back'] } } });
      if (pending) return { id: n.id, taskId: pending.id };
    }
    await tx.network.update({ where: { id: n.id }, data: { state: 'deleting' } });
    const t = await insertTask(tx, {
      kind: NETWORK_TASKS.delete,
      workspaceId,
      createdById: caller.userId,
      targetType: 'network',
      targetId: n.id,
      input: { name: n.name },
      maxAttempts: d.taskMaxAttempts,
      deadline: new Date(d.clock.now() + d.taskTimeoutMs),
    });
    await tx.network.update({ where: { id: n.id }, data: { lastTaskId: t.id } });
    return { id: n.id, taskId: t.id };
  });
  d.kick();
  return {
    network: networkView(await d.db.network.findUniqueOrThrow({ where: { id }, include: networkInclude })),
    task: taskView(await d.db.task.findUniqueOrThrow({ where: { id: taskId }, include: taskInclude })),
  };
}

/** A workspace's networks, by name; any member may read them. */
export async function listNetworks(d: ComputeDeps, caller: Actor, ws: string, q: { limit: number; after?: string }): Promise<{ items: NetworkView[]; nextCursor: string | null }> {
  const access = await workspaceAccess(d.db, caller, ws);
  const rows = await d.db.network.findMany({
    where: { workspaceId: access.workspace.id, ...(q.after ? { name: { gt: q.after } } : {}) },
    include: networkInclude,
    orderBy: { name: 'asc' },
    take: q.limit + 1,
  });
  const items = rows.slice(0, q.limit);
  return { items: items.map(networkView), nextCursor: rows.length > q.limit ? (items[items.length - 1]?.name ?? null) : null };
}

/** One network of a workspace. */
export async function getNetwork(d: ComputeDeps, caller: Actor, ws: string, name: string): Promise<NetworkView> {
  const access = await workspaceAccess(d.db, caller, ws);
  const n = await d.db.network.findUnique({ where: { workspaceId_name: { workspaceId: access.workspace.id, name } }, include: networkInclude });
  if (!n) throw new NotFoundError('network', name);
  return networkView(n);
}
