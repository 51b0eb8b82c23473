import { randomUUID } from 'node:crypto';
import { ConflictError, KloudakError, NotFoundError, ValidationError } from '@kloudak/common';
import type { Prisma } from '@kloudak/prisma';
import { addressPoolFor, allocateAddresses, formatIpv4 } from '../domain/ipam.js';
import { deriveMac } from '../domain/mac.js';
import { schedule } from '../domain/placement.js';
import { requireFlags } from '../domain/permissions.js';
import { workspaceAccess } from './access.js';
import { areaPlacementSnapshot, lockForClaims, usedAddresses, workspaceUsage } from '../store/claims.js';
import { insertTask } from '../store/tasks.js';
import { VM_TASKS } from '../tasks/vm.js';
import type { Actor, ComputeDeps } from './compute-deps.js';
import { checkQuota } from './quotas.js';
import { taskInclude, taskView, vmInclude, vmView, type TaskView, type VmView } from './views.js';

/** Input of {@link createVm}. Sizes default to the template's. */
export interface CreateVmInput {
  name: string;
  template: string;
  /** Defaults to the area of the networks. */
  area?: string;
  networks: string[];
  cpu?: number;
  ramMb?: number;
  diskGb?: number;
  description?: string;
  sshKeys?: string[];
  userData?: string;
  ha?: boolean;
}

type Tx = Prisma.TransactionClient;

/** The NIC rows of new interfaces on `networks`, each with an address from its network's pool. */
async function claimInterfaces(
  tx: Tx,
  vmId: string,
  area: { id: string; subnet: string; gateway: string },
  networks: { id: string; name: string; subnet: string | null }[],
  firstPosition: number,
): Promise<void> {
  for (const [i, n] of networks.entries()) {
    const pool = addressPoolFor(area, n);
    if ('error' in pool) throw new KloudakError('internal', `network ${n.name}: ${pool.error}`);
    const scope = n.subnet ? `network:${n.id}` : `area:${area.id}`;
    const got = allocateAddresses(pool, await usedAddresses(tx, scope), 1);
    if (!got.ok) throw new ConflictError(`no free address on network '${n.name}': ${got.message}`, { field: 'networks', network: n.name });
    const ip = formatIpv4(got.addresses[0]!);
    await tx.ipAllocation.create({ data: { areaId: area.id, scope, address: ip, networkId: n.id, vmId } });
    const position = firstPosition + i;
    await tx.vmInterface.create({ data: { vmId, networkId: n.id, mac: deriveMac(vmId, position), ip, position } });
  }
}

async function findVm(d: ComputeDeps, workspaceId: string, name: string) {
  const vm = await d.db.vm.findUnique({ where: { workspaceId_name: { workspaceId, name } }, include: vmInclude });
  if (!vm) throw new NotFoundError('vm', name);
  return vm;
}

async function answer(d: ComputeDeps, vmId: string, taskId: string): Promise<{ vm: VmView; task: TaskView }> {
  const [vm, task] = await Promise.all([
    d.db.vm.findUniqueOrThrow({ where: { id: vmId }, include: vmInclude }),
    d.db.task.findUniqueOrThrow({ where: { id: taskId }, include: taskInclude }),
  ]);
  return { vm: vmView(vm), task: taskView(task) };
}

/**
 * Create a VM. One transaction claims everything — host and pool (placement over the area's live
 * claims), an address per network, the quota — writes the VM and queues its task; a burst of
 * creates serialises on the workspace and area locks, so no host is over-committed and no address
 * handed out twice. When nothing fits, the 409 lists which filter rejected which host.
 */
export async function createVm(d: ComputeDeps, caller: Actor, ws: string, input: CreateVmInput): Promise<{ vm: VmView; task: TaskView }> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'vm_can_add');
  const workspaceId = access.workspace.id;
  const template = await d.db.template.findUnique({ where: { name: input.template } });
  if (!template) throw new ValidationError(`no template named '${input.template}'`, { field: 'template' });
  if (input.networks.length === 0) throw new ValidationError('a VM needs at least one network', { field: 'networks' });
  if (new Set(input.networks).size !== input.networks.length) throw new ValidationError('a network is listed twice', { field: 'networks' });
  const networks = await d.db.network.findMany({ where: { workspaceId, name: { in: input.networks } }, include: { area: true } });
  for (const name of input.networks) {
    if (!networks.some((n) => n.name === name)) throw new ValidationError(`no network named '${name}' in this workspace`, { field: 'networks', network: name });
  }
  const ordered = input.networks.map((name) => networks.find((n) => n.name === name)!);
  for (const n of ordered) {
    if (n.state === 'deleting' || n.state === 'error') throw new ConflictError(`network '${n.name}' is ${n.state}`, { field: 'networks', network: n.name });
  }
  const areaName = input.area ?? ordered[0]!.area.name;
  const area = await d.db.area.findUnique({ where: { name: areaName } });
  if (!area) throw new ValidationError(`no area named '${areaName}'`, { field: 'area' });
  const foreign = ordered.find((n) => n.areaId !== area.id);
  if (foreign) throw new ValidationError(`network '${foreign.name}' is in area '${foreign.area.name}', not '${area.name}'`, { field: 'networks', network: foreign.name });
  const cpu = input.cpu ?? template.cpu;
  const ramMb = input.ramMb ?? template.ramMb;
  const diskGb = Math.max(input.diskGb ?? template.diskGb, template.diskGb);
  if (input.diskGb !== undefined && input.diskGb < template.diskGb) {
    throw new ValidationError(`diskGb ${input.diskGb} is smaller than the template's disk (${template.diskGb} GB)`, { field: 'diskGb' });
  }
  if (input.userData !== undefined) {
    const first = input.userData.split('\n', 1)[0]!.trimEnd();
    if (first !== '#cloud-config' && !first.startsWith('#!')) {
      throw new ValidationError('userData must start with #cloud-config or a #! script line', { field: 'userData' });
    }
    if (input.userData.includes('\0')) throw new ValidationError('userData must not contain NUL characters', { field: 'userData' });
  }
  const ha = input.ha ?? true;
  const vmId = randomUUID();

  const taskId = await d.db.$transaction(
    async (tx) => {
      await lockForClaims(tx, workspaceId, area.id);
      if (await tx.vm.findUnique({ where: { workspaceId_name: { workspaceId, name: input.name } } })) {
        throw new ConflictError(`a VM named '${input.name}' already exists in this workspace`, { field: 'name' });
      }
      await checkQuota(tx, workspaceId, await workspaceUsage(tx, workspaceId), { vms: 1, cpu, ramMb, diskGb, addresses: ordered.length });
      const snapshot = await areaPlacementSnapshot(tx, area.id, d.connected);
      const placed = schedule(snapshot, { areaId: area.id, workspaceId, cpu, ramMb, diskGb, ha }, d.placement);
      if (!placed.ok) {
        throw new ConflictError(placed.message, {
          reason: 'no_host',
          rejections: placed.rejections.map((r) => ({ host: r.hostName, filter: r.filter, message: r.message })),
        });
      }
      await tx.vm.create({
        data: {
          id: vmId,
          workspaceId,
          name: input.name,
          description: input.description ?? '',
          areaId: area.id,
          templateId: template.id,
          hostId: placed.hostId,
          poolId: placed.poolId,
          cpu,
          ramMb,
          diskGb,
          haEnabled: ha,
          state: 'scheduled',
          sshKeys: input.sshKeys ?? [],
          userData: input.userData ?? null,
        },
      });
      await claimInterfaces(tx, vmId, area, ordered, 0);
      const t = await insertTask(tx, {
        kind: VM_TASKS.create,
        workspaceId,
        createdById: caller.userId,
        targetType: 'vm',
        targetId: vmId,
        // Never the keys or user-data: they stay on the VM's row.
        input: { name: input.name, template: template.name, area: area.name, networks: input.networks, cpu, ramMb, diskGb, ha },
        maxAttempts: d.taskMaxAttempts,
        deadline: new Date(d.clock.now() + d.taskTimeoutMs),
      });
      await tx.task.update({ where: { id: t.id }, data: { placement: { host: placed.hostName, pool: placed.poolName, ...placed.reason } } });
      await tx.vm.update({ where: { id: vmId }, data: { lastTaskId: t.id } });
      return t.id;
    },
    { timeout: 30_000, maxWait: 30_000 },
  );
  d.kick();
  return answer(d, vmId, taskId);
}

/** The power actions of a VM. */
export type VmAction = 'start' | 'stop' | 'reboot';

const ACTION_TASK: Record<VmAction, string> = { start: VM_TASKS.start, stop: VM_TASKS.stop, reboot: VM_TASKS.reboot };
/** States from which each action may start. */
const ACTION_FROM: Record<VmAction, string[]> = { start: ['stopped'], stop: ['running'], reboot: ['running'] };

/** Start, stop or reboot a VM (409 from a state where the action makes no sense). */
export async function vmAction(d: ComputeDeps, caller: Actor, ws: string, name: string, action: VmAction): Promise<{ vm: VmView; task: TaskView }> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'vm_can_edit');
  const vm = await findVm(d, access.workspace.id, name);
  if (!ACTION_FROM[action].includes(vm.state)) {
    throw new ConflictError(`cannot ${action} a VM that is ${vm.state}`, { state: vm.state });
  }
  const taskId = await d.db.$transaction(async (tx) => {
    const t = await insertTask(tx, {
      kind: ACTION_TASK[action],
      workspaceId: access.workspace.id,
      createdById: caller.userId,
      targetType: 'vm',
      targetId: vm.id,
      input: { name: vm.name, action },
      maxAttempts: d.taskMaxAttempts,
      deadline: new Date(d.clock.now() + d.taskTimeoutMs),
    });
    await tx.vm.update({ where: { id: vm.id }, data: { lastTaskId: t.id } });
    return t.id;
  });
  d.kick();
  return answer(d, vm.id, taskId);
}

/**
 * Change a VM: name and description at once; `networks`, when given, is the full list of networks
 * it should be on — the difference is attached or detached live, one task per NIC.
 */
export async function updateVm(
  d: ComputeDeps,
  caller: Actor,
  ws: string,
  name: string,
  input: { name?: string; description?: string; networks?: string[] },
): Promise<{ vm: VmView; tasks: TaskView[] }> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'vm_can_edit');
  const workspaceId = access.workspace.id;
  const vm = await findVm(d, workspaceId, name);
  const taskIds: string[] = [];
  if (input.networks !== undefined) {
    if (new Set(input.networks).size !== input.networks.length) throw new ValidationError('a network is listed twice', { field: 'networks' });
    if (input.networks.length === 0) throw new ValidationError('a VM needs at least one network', { field: 'networks' });
    const current = vm.interfaces.map((i) => i.network.name);
    const add = input.networks.filter((n) => !current.includes(n));
    const remove = current.filter((n) => !input.networks!.includes(n));
    if ((add.length > 0 || remove.length > 0) && !['running', 'stopped'].includes(vm.state)) {
      throw new ConflictError(`cannot change the networks of a VM that is ${vm.state}`, { state: vm.state });
    }
    const nets = await d.db.network.findMany({ where: { workspaceId, name: { in: add } } });
    for (const n of add) {
      const net = nets.find((x) => x.name === n);
      if (!net) throw new ValidationError(`no network named '${n}' in this workspace`, { field: 'networks', network: n });
      if (net.areaId !== vm.areaId) throw new ValidationError(`network '${n}' is in another area than the VM`, { field: 'networks', network: n });
      if (net.state === 'deleting' || net.state === 'error') throw new ConflictError(`network '${n}' is ${net.state}`, { field: 'networks', network: n });
    }
    const area = await d.db.area.findUniqueOrThrow({ where: { id: vm.areaId } });
    await d.db.$transaction(
      async (tx) => {
        await lockForClaims(tx, workspaceId, vm.areaId);
        if (add.length > 0) await checkQuota(tx, workspaceId, await workspaceUsage(tx, workspaceId), { addresses: add.length });
        const maxPos = await tx.vmInterface.aggregate({ where: { vmId: vm.id }, _max: { position: true } });
        let next = (maxPos._max.position ?? -1) + 1;
        for (const n of add) {
          const net = nets.find((x) => x.name === n)!;
          await claimInterfaces(tx, vm.id, area, [net], next++);
          const t = await insertTask(tx, {
            kind: VM_TASKS.attach,
            workspaceId,
            createdById: caller.userId,
            targetType: 'vm',
            targetId: vm.id,
            input: { name: vm.name, network: n, networkId: net.id },
            maxAttempts: d.taskMaxAttempts,
            deadline: new Date(d.clock.now() + d.taskTimeoutMs),
          });
          taskIds.push(t.id);
        }
        for (const n of remove) {
          const i = vm.interfaces.find((x) => x.network.name === n)!;
          const t = await insertTask(tx, {
            kind: VM_TASKS.detach,
            workspaceId,
            createdById: caller.userId,
            targetType: 'vm',
            targetId: vm.id,
            input: { name: vm.name, network: n, networkId: i.networkId },
            maxAttempts: d.taskMaxAttempts,
            deadline: new Date(d.clock.now() + d.taskTimeoutMs),
          });
          taskIds.push(t.id);
        }
        if (taskIds.length > 0) await tx.vm.update({ where: { id: vm.id }, data: { lastTaskId: taskIds[taskIds.length - 1]! } });
      },
      { timeout: 30_000, maxWait: 30_000 },
    );
  }
  if (input.name !== undefined || input.description !== undefined) {
    await d.db.vm.update({
      where: { id: vm.id },
      data: { ...(input.name !== undefined ? { name: input.name } : {}), ...(input.description !== undefined ? { description: input.description } : {}) },
    });
  }
  if (taskIds.length > 0) d.kick();
  const tasks = await d.db.task.findMany({ where: { id: { in: taskIds } }, include: taskInclude, orderBy: { seq: 'asc' } });
  return { vm: vmView(await d.db.vm.findUniqueOrThrow({ where: { id: vm.id }, include: vmInclude })), tasks: tasks.map(taskView) };
}

/** Delete a VM: its task stops and deletes it on its host, then releases its claims and removes it. */
export async function deleteVm(d: ComputeDeps, caller: Actor, ws: string, name: string): Promise<{ vm: VmView; task: TaskView }> {
  const access = await workspaceAccess(d.db, caller, ws);
  requireFlags(access.permissions, 'vm_can_delete');
  const vm = await findVm(d, access.workspace.id, name);
  const taskId = await d.db.$transaction(async (tx) => {
    if (vm.state === 'deleting') {
      const pending = await tx.task.findFirst({ where: { targetId: vm.id, kind: VM_TASKS.delete, state: { in: ['queued', 'running', 'rolling_back'] } } });
      if (pending) return pending.id;
    }
    const t = await insertTask(tx, {
      kind: VM_TASKS.delete,
      workspaceId: access.workspace.id,
      createdById: caller.userId,
      targetType: 'vm',
      targetId: vm.id,
      input: { name: vm.name },
      maxAttempts: d.taskMaxAttempts,
      deadline: new Date(d.clock.now() + d.taskTimeoutMs),
    });
    await tx.vm.update({ where: { id: vm.id }, data: { lastTaskId: t.id, state: 'deleting' } });
    return t.id;
  });
  d.kick();
  return answer(d, vm.id, taskId);
}

/** The tail of a VM's serial console log (read from its host through the agent). */
export async function vmConsole(d: ComputeDeps, caller: Actor, ws: string, name: string, maxBytes: number): Promise<{ text: string; truncated: boolean }> {
  const access = await workspaceAccess(d.db, caller, ws);
  const vm = await findVm(d, access.workspace.id, name);
  if (!vm.hostId) throw new ConflictError(`the VM is ${vm.state} and has no host yet`, { state: vm.state });
  // Without a session the command would wait out its deadline (and hold the VM's queue): say so now.
  if (!d.connected(vm.hostId)) throw new ConflictError("the VM's host is not connected now; try again once it is", { state: vm.state });
  const r = await d.agents.sendCommand(vm.hostId, { vmId: vm.id, action: { kind: 'readConsole', maxBytes } }, { deadline: d.clock.now() + 10_000 });
  if (!r.ok) {
    if (r.error?.code === 'not_found') return { text: '', truncated: false };
    throw new KloudakError('unavailable', `the VM's host did not answer: ${r.error?.message ?? 'unknown error'}`);
  }
  return { text: r.console?.data.toString('utf8') ?? '', truncated: r.console?.truncated ?? false };
}

/** A workspace's VMs, by name; any member may read them. */
export async function listVms(d: ComputeDeps, caller: Actor, ws: string, q: { limit: number; after?: string }): Promise<{ items: VmView[]; nextCursor: string | null }> {
  const access = await workspaceAccess(d.db, caller, ws);
  const rows = await d.db.vm.findMany({
    where: { workspaceId: access.workspace.id, ...(q.after ? { name: { gt: q.after } } : {}) },
    include: vmInclude,
    orderBy: { name: 'asc' },
    take: q.limit + 1,
  });
  const items = rows.slice(0, q.limit);
  return { items: items.map(vmView), nextCursor: rows.length > q.limit ? (items[items.length - 1]?.name ?? null) : null };
}

/** One VM of a workspace. */
export async function getVm(d: ComputeDeps, caller: Actor, ws: string, name: string): Promise<VmView> {
  const access = await workspaceAccess(d.db, caller, ws);
  return vmView(await findVm(d, access.workspace.id, name));
}
