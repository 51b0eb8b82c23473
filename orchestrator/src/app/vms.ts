// A workspace's VMs: create (placed and claimed at once, then a task builds it), power actions,
// rename and live NIC changes, delete, the console log.
import { randomUUID } from 'node:crypto';
import { ConflictError, KloudakError, NotFoundError, ValidationError } from '@kloudak/common';
import { addressPoolFor, allocateAddresses, formatIpv4 } from '../domain/ipam.js';
import { macCandidates, pickMac } from '../domain/mac.js';
import { requireFlags } from '../domain/permissions.js';
import { schedule } from '../domain/placement.js';
import { areaById, areaByName } from '../store/areas.js';
import { areaPlacementSnapshot, lockForClaims, usedAddresses, workspaceUsage } from '../store/claims.js';
import { transaction, type DbOrTx, type TransactionLimits, type Tx } from '../store/db.js';
import { networksNamed } from '../store/networks.js';
import { insertTask, setTaskPlacement, taskById, tasksByIds, unfinishedTask } from '../store/tasks.js';
import { templateByName } from '../store/templates.js';
import {
  claimAddress,
  editVm,
  insertInterface,
  insertVm,
  macsInUse,
  nextInterfacePosition,
  setVmTask,
  vmById,
  vmByName,
  vmNamed,
  vmsOf,
  type VmRow,
} from '../store/vms.js';
import { VM_TASKS } from '../tasks/vm.js';
import { workspaceAccess } from './access.js';
import { DEFAULT_LIMIT, page, type ListInput, type Page } from './paging.js';
import { signedIn, type Caller } from './principal.js';
import { checkQuota } from './quotas.js';
import type { Services } from './services.js';
import { taskLimits } from './tasks.js';
import { taskView, vmView, type TaskView, type VmView } from './views.js';
import { record, taskQueued, withEvents, workspaceEvent, type EventInput } from './events.js';

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

/** A VM and the task changing it. */
export interface VmChange {
  vm: VmView;
  task: TaskView;
}

/** Claims wait on the workspace and area locks behind a burst of other creates: give them time. */
const CLAIMS: TransactionLimits = { maxWaitMs: 30_000, timeoutMs: 30_000 };

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
    await claimAddress(tx, { areaId: area.id, scope, address: ip, networkId: n.id, vmId });
    const position = firstPosition + i;
    // The MAC derived from the VM's id, or a salted one when another NIC holds it (domain/mac.ts).
    const mac = pickMac(vmId, position, await macsInUse(tx, macCandidates(vmId, position)));
    if (!mac) throw new KloudakError('conflict', `every MAC address candidate of NIC ${position} is in use; retry`);
    await insertInterface(tx, { vmId, networkId: n.id, mac, ip, position });
  }
}

async function findVm(db: DbOrTx, workspaceId: string, name: string): Promise<VmRow> {
  const vm = await vmByName(db, workspaceId, name);
  if (!vm) throw new NotFoundError('vm', name);
  return vm;
}

async function answer(s: Services, vmId: string, taskId: string): Promise<VmChange> {
  const [vm, task] = await Promise.all([vmById(s.db.client, vmId), taskById(s.db.client, taskId)]);
  return { vm: vmView(vm), task: taskView(task) };
}

/** userData is a cloud-config document or a script, without NUL characters. */
function checkUserData(userData: string): void {
  const first = userData.split('\n', 1)[0]!.trimEnd();
  if (first !== '#cloud-config' && !first.startsWith('#!')) {
    throw new ValidationError('userData must start with #cloud-config or a #! script line', { field: 'userData' });
  }
  if (userData.includes('\0')) throw new ValidationError('userData must not contain NUL characters', { field: 'userData' });
}

/**
 * Create a VM. One transaction claims everything — host and pool (placement over the area's live
 * claims), an address per network, the quota — writes the VM and queues its task; a burst of
 * creates serialises on the workspace and area locks, so no host is over-committed and no address
 * handed out twice. When nothing fits, the 409 lists which filter rejected which host.
 */
export async function createVm(s: Services, c: Caller, ws: string, input: CreateVmInput): Promise<VmChange> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'vm_can_add');
  const workspaceId = a.workspace.id;
  const template = await templateByName(s.db.client, input.template);
  if (!template) throw new ValidationError(`no template named '${input.template}'`, { field: 'template' });
  if (input.networks.length === 0) throw new ValidationError('a VM needs at least one network', { field: 'networks' });
  if (new Set(input.networks).size !== input.networks.length) throw new ValidationError('a network is listed twice', { field: 'networks' });
  const networks = await networksNamed(s.db.client, workspaceId, input.networks);
  for (const name of input.networks) {
    if (!networks.some((n) => n.name === name)) throw new ValidationError(`no network named '${name}' in this workspace`, { field: 'networks', network: name });
  }
  const ordered = input.networks.map((name) => networks.find((n) => n.name === name)!);
  for (const n of ordered) {
    if (n.state === 'deleting' || n.state === 'error') throw new ConflictError(`network '${n.name}' is ${n.state}`, { field: 'networks', network: n.name });
  }
  const areaName = input.area ?? ordered[0]!.area.name;
  const area = await areaByName(s.db.client, areaName);
  if (!area) throw new ValidationError(`no area named '${areaName}'`, { field: 'area' });
  const foreign = ordered.find((n) => n.areaId !== area.id);
  if (foreign) throw new ValidationError(`network '${foreign.name}' is in area '${foreign.area.name}', not '${area.name}'`, { field: 'networks', network: foreign.name });
  const cpu = input.cpu ?? template.cpu;
  const ramMb = input.ramMb ?? template.ramMb;
  const diskGb = Math.max(input.diskGb ?? template.diskGb, template.diskGb);
  if (input.diskGb !== undefined && input.diskGb < template.diskGb) {
    throw new ValidationError(`diskGb ${input.diskGb} is smaller than the template's disk (${template.diskGb} GB)`, { field: 'diskGb' });
  }
  if (input.userData !== undefined) checkUserData(input.userData);
  const ha = input.ha ?? true;
  const vmId = randomUUID();

  const taskId = await transaction(
    s.db.client,
    async (tx) => {
      await lockForClaims(tx, workspaceId, area.id);
      if (await vmNamed(tx, workspaceId, input.name)) {
        throw new ConflictError(`a VM named '${input.name}' already exists in this workspace`, { field: 'name' }, 'exists');
      }
      await checkQuota(tx, workspaceId, await workspaceUsage(tx, workspaceId), { vms: 1, cpu, ramMb, diskGb, addresses: ordered.length });
      const snapshot = await areaPlacementSnapshot(tx, area.id, (hostId) => s.agents.status(hostId).connected);
      const placed = schedule(snapshot, { areaId: area.id, workspaceId, cpu, ramMb, diskGb, ha }, s.placement);
      if (!placed.ok) {
        throw new ConflictError(placed.message, {
          reason: 'no_host',
          rejections: placed.rejections.map((r) => ({ host: r.hostName, filter: r.filter, message: r.message })),
        });
      }
      await insertVm(tx, {
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
        sshKeys: input.sshKeys ?? [],
        userData: input.userData ?? null,
      });
      await claimInterfaces(tx, vmId, area, ordered, 0);
      const t = await insertTask(tx, {
        kind: VM_TASKS.create,
        workspaceId,
        createdById: p.userId,
        targetType: 'vm',
        targetId: vmId,
        // Never the keys or user-data: they stay on the VM's row.
        input: { name: input.name, template: template.name, area: area.name, networks: input.networks, cpu, ramMb, diskGb, ha },
        ...taskLimits(s),
      });
      await setTaskPlacement(tx, t.id, { host: placed.hostName, pool: placed.poolName, ...placed.reason });
      await setVmTask(tx, vmId, t.id);
      await record(
        tx,
        workspaceEvent(workspaceId, 'vm', vmId, 'created', { name: input.name, state: 'scheduled', taskId: t.id, data: { host: placed.hostName } }),
        taskQueued(workspaceId, { id: t.id, kind: VM_TASKS.create, targetType: 'vm', targetId: vmId }),
      );
      return t.id;
    },
    CLAIMS,
  );
  s.tasks.kick();
  return answer(s, vmId, taskId);
}

/** The power actions of a VM. */
export type VmAction = 'start' | 'stop' | 'reboot';

const ACTION_TASK: Record<VmAction, string> = { start: VM_TASKS.start, stop: VM_TASKS.stop, reboot: VM_TASKS.reboot };
/** States from which each action may start. */
const ACTION_FROM: Record<VmAction, string[]> = { start: ['stopped'], stop: ['running'], reboot: ['running'] };

/** Start, stop or reboot a VM (409 from a state where the action makes no sense). */
export async function vmAction(s: Services, c: Caller, ws: string, name: string, action: VmAction): Promise<VmChange> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'vm_can_edit');
  const vm = await findVm(s.db.client, a.workspace.id, name);
  if (!ACTION_FROM[action].includes(vm.state)) {
    throw new ConflictError(`cannot ${action} a VM that is ${vm.state}`, { state: vm.state });
  }
  const taskId = await transaction(s.db.client, async (tx) => {
    const t = await insertTask(tx, {
      kind: ACTION_TASK[action],
      workspaceId: a.workspace.id,
      createdById: p.userId,
      targetType: 'vm',
      targetId: vm.id,
      input: { name: vm.name, action },
      ...taskLimits(s),
    });
    await setVmTask(tx, vm.id, t.id);
    await record(tx, taskQueued(a.workspace.id, { id: t.id, kind: ACTION_TASK[action], targetType: 'vm', targetId: vm.id }));
    return t.id;
  });
  s.tasks.kick();
  return answer(s, vm.id, taskId);
}

/**
 * Change a VM: name and description at once; `networks`, when given, is the full list of networks
 * it should be on — the difference is attached or detached live, one task per NIC.
 */
export async function updateVm(
  s: Services,
  c: Caller,
  ws: string,
  name: string,
  input: { name?: string; description?: string; networks?: string[] },
): Promise<{ vm: VmView; tasks: TaskView[] }> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'vm_can_edit');
  const workspaceId = a.workspace.id;
  const vm = await findVm(s.db.client, workspaceId, name);
  const taskIds: string[] = [];
  if (input.networks !== undefined) {
    const wanted = input.networks;
    if (new Set(wanted).size !== wanted.length) throw new ValidationError('a network is listed twice', { field: 'networks' });
    if (wanted.length === 0) throw new ValidationError('a VM needs at least one network', { field: 'networks' });
    const current = vm.interfaces.map((i) => i.network.name);
    const add = wanted.filter((n) => !current.includes(n));
    const remove = current.filter((n) => !wanted.includes(n));
    if ((add.length > 0 || remove.length > 0) && !['running', 'stopped'].includes(vm.state)) {
      throw new ConflictError(`cannot change the networks of a VM that is ${vm.state}`, { state: vm.state });
    }
    const nets = await networksNamed(s.db.client, workspaceId, add);
    for (const n of add) {
      const net = nets.find((x) => x.name === n);
      if (!net) throw new ValidationError(`no network named '${n}' in this workspace`, { field: 'networks', network: n });
      if (net.areaId !== vm.areaId) throw new ValidationError(`network '${n}' is in another area than the VM`, { field: 'networks', network: n });
      if (net.state === 'deleting' || net.state === 'error') throw new ConflictError(`network '${n}' is ${net.state}`, { field: 'networks', network: n });
    }
    const area = await areaById(s.db.client, vm.areaId);
    if (!area) throw new NotFoundError('area', vm.areaId);
    const queued: EventInput[] = [];
    await transaction(
      s.db.client,
      async (tx) => {
        await lockForClaims(tx, workspaceId, vm.areaId);
        if (add.length > 0) await checkQuota(tx, workspaceId, await workspaceUsage(tx, workspaceId), { addresses: add.length });
        let next = await nextInterfacePosition(tx, vm.id);
        for (const n of add) {
          const net = nets.find((x) => x.name === n)!;
          await claimInterfaces(tx, vm.id, area, [net], next++);
          const t = await insertTask(tx, {
            kind: VM_TASKS.attach,
            workspaceId,
            createdById: p.userId,
            targetType: 'vm',
            targetId: vm.id,
            input: { name: vm.name, network: n, networkId: net.id },
            ...taskLimits(s),
          });
          taskIds.push(t.id);
          queued.push(taskQueued(workspaceId, { id: t.id, kind: VM_TASKS.attach, targetType: 'vm', targetId: vm.id }));
        }
        for (const n of remove) {
          const i = vm.interfaces.find((x) => x.network.name === n)!;
          const t = await insertTask(tx, {
            kind: VM_TASKS.detach,
            workspaceId,
            createdById: p.userId,
            targetType: 'vm',
            targetId: vm.id,
            input: { name: vm.name, network: n, networkId: i.networkId },
            ...taskLimits(s),
          });
          taskIds.push(t.id);
          queued.push(taskQueued(workspaceId, { id: t.id, kind: VM_TASKS.detach, targetType: 'vm', targetId: vm.id }));
        }
        if (taskIds.length > 0) await setVmTask(tx, vm.id, taskIds[taskIds.length - 1]!);
        await record(tx, ...queued);
      },
      CLAIMS,
    );
  }
  if (input.name !== undefined || input.description !== undefined) {
    await withEvents(
      s,
      (tx) =>
        editVm(tx, vm.id, {
          ...(input.name !== undefined ? { name: input.name } : {}),
          ...(input.description !== undefined ? { description: input.description } : {}),
        }),
      () => workspaceEvent(workspaceId, 'vm', vm.id, 'updated', { name: input.name ?? vm.name, state: vm.state }),
    );
  }
  if (taskIds.length > 0) s.tasks.kick();
  const [updated, tasks] = await Promise.all([vmById(s.db.client, vm.id), tasksByIds(s.db.client, taskIds)]);
  return { vm: vmView(updated), tasks: tasks.map(taskView) };
}

/** Delete a VM: its task stops and deletes it on its host, then releases its claims and removes it. */
export async function deleteVm(s: Services, c: Caller, ws: string, name: string): Promise<VmChange> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  requireFlags(a.permissions, 'vm_can_delete');
  const vm = await findVm(s.db.client, a.workspace.id, name);
  // A drain is moving it between hosts: deleting it on the host its claim names could miss the
  // copy the migration is making. The drain ends in seconds (it is left running or on its new host).
  if (vm.state === 'migrating') throw new ConflictError('the VM is being moved to another host (its host is drained); try again once it is running', { state: vm.state });
  const taskId = await transaction(s.db.client, async (tx) => {
    if (vm.state === 'deleting') {
      const pending = await unfinishedTask(tx, vm.id, VM_TASKS.delete);
      if (pending) return pending.id;
    }
    const t = await insertTask(tx, {
      kind: VM_TASKS.delete,
      workspaceId: a.workspace.id,
      createdById: p.userId,
      targetType: 'vm',
      targetId: vm.id,
      input: { name: vm.name },
      ...taskLimits(s),
    });
    await setVmTask(tx, vm.id, t.id, 'deleting');
    await record(
      tx,
      workspaceEvent(a.workspace.id, 'vm', vm.id, 'state', { name: vm.name, state: 'deleting', taskId: t.id }),
      taskQueued(a.workspace.id, { id: t.id, kind: VM_TASKS.delete, targetType: 'vm', targetId: vm.id }),
    );
    return t.id;
  });
  s.tasks.kick();
  return answer(s, vm.id, taskId);
}

/** The tail of a VM's serial console log (read from its host through the agent). */
export async function vmConsole(s: Services, c: Caller, ws: string, name: string, maxBytes: number): Promise<{ text: string; truncated: boolean }> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const vm = await findVm(s.db.client, a.workspace.id, name);
  if (!vm.hostId) throw new ConflictError(`the VM is ${vm.state} and has no host yet`, { state: vm.state });
  // Without a session the command would wait out its deadline (and hold the VM's queue): say so now.
  if (!s.agents.status(vm.hostId).connected) throw new ConflictError("the VM's host is not connected now; try again once it is", { state: vm.state });
  const r = await s.agents.sendCommand(vm.hostId, { vmId: vm.id, action: { kind: 'readConsole', maxBytes } }, { deadline: s.clock.now() + 10_000 });
  if (!r.ok) {
    if (r.error?.code === 'not_found') return { text: '', truncated: false };
    throw new KloudakError('unavailable', `the VM's host did not answer: ${r.error?.message ?? 'unknown error'}`);
  }
  return { text: r.console?.data.toString('utf8') ?? '', truncated: r.console?.truncated ?? false };
}

/** A workspace's VMs, by name; any member may read them. */
export async function listVms(s: Services, c: Caller, ws: string, q: ListInput): Promise<Page<VmView>> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  const limit = q.limit ?? DEFAULT_LIMIT;
  const rows = await vmsOf(s.db.client, a.workspace.id, { ...(q.after ? { after: q.after } : {}), take: limit + 1 });
  return page(rows, limit, (v) => v.name, vmView);
}

/** One VM of a workspace. */
export async function getVm(s: Services, c: Caller, ws: string, name: string): Promise<VmView> {
  const a = await workspaceAccess(s.db.client, signedIn(c), ws);
  return vmView(await findVm(s.db.client, a.workspace.id, name));
}
