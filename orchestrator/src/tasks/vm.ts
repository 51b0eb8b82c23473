import type { PrismaClient } from '@kloudak/prisma';
import type { AgentChannel } from '../agent-api/channel.js';
import type { AgentCommand, NicSpec, VmDefinition } from '../domain/agent.js';
import { addressPoolFor, formatInterfaceAddress, formatIpv4 } from '../domain/ipam.js';
import { releaseVmClaims } from '../store/claims.js';
import { runCommand } from './commands.js';
import { changeWithEvents, targetEvent } from './events.js';
import { StepError, type StepContext, type TaskDefinition, type TaskView, type TxClient } from './types.js';

/** What the VM tasks need besides the database. */
export interface VmTaskDeps {
  agents: AgentChannel;
  /** How long a graceful stop may take before the domain is destroyed. */
  stopTimeoutMs: number;
  /** How often to ask the host whether a new VM runs yet. */
  pollMs: number;
}

/** Task kinds of VMs. */
export const VM_TASKS = {
  create: 'vm.create',
  delete: 'vm.delete',
  start: 'vm.start',
  stop: 'vm.stop',
  reboot: 'vm.reboot',
  attach: 'vm.attach',
  detach: 'vm.detach',
  /** Failover: restart an HA VM on the host its claim was moved to, from its disk on the shared pool. */
  recover: 'vm.recover',
} as const;

type VmState = 'pending' | 'scheduled' | 'creating' | 'running' | 'stopped' | 'deleting' | 'deleted' | 'error' | 'recovering' | 'lost';

async function loadVm(db: PrismaClient, id: string) {
  const vm = await db.vm.findUnique({
    where: { id },
    include: {
      host: { select: { id: true, name: true } },
      pool: { select: { name: true } },
      template: true,
      area: { select: { subnet: true, gateway: true } },
      interfaces: { orderBy: { position: 'asc' }, include: { network: { include: { vlan: true } } } },
    },
  });
  if (!vm) throw new StepError('the VM no longer exists', 'not_found', false);
  return vm;
}
type LoadedVm = Awaited<ReturnType<typeof loadVm>>;

function hostOf(vm: LoadedVm): string {
  if (!vm.hostId) throw new StepError('the VM has no host', 'failed_precondition', false);
  return vm.hostId;
}

/**
 * A VM as an agent defines it (hostname, size, pool, template, NICs, boot): what a recover or a
 * migration's destination needs. Throws a final StepError when the VM is gone or has no pool.
 */
export async function vmDefinition(db: PrismaClient, id: string): Promise<{ hostId: string | null; state: string; poolShared: boolean; def: VmDefinition }> {
  const vm = await loadVm(db, id);
  if (!vm.pool) throw new StepError('the VM has no pool', 'failed_precondition', false);
  const pool = await db.storagePool.findUnique({ where: { id: vm.poolId! }, select: { shared: true } });
  const t = vm.template;
  const boot = t.bootKernel && t.bootInitrd ? { kernel: t.bootKernel, initrd: t.bootInitrd, cmdline: t.bootCmdline ?? '' } : undefined;
  return {
    hostId: vm.hostId,
    state: vm.state,
    poolShared: pool?.shared ?? false,
    def: {
      hostname: vm.name,
      cpu: vm.cpu,
      ramMb: vm.ramMb,
      diskGb: vm.diskGb,
      pool: vm.pool.name,
      templateVolume: t.image,
      nics: vm.interfaces.map((i) => nicOf(vm, i)),
      sshAuthorizedKeys: Array.isArray(vm.sshKeys) ? (vm.sshKeys as string[]) : [],
      passwordHash: '',
      ha: vm.haEnabled,
      ...(boot ? { boot } : {}),
      ...(vm.userData ? { userData: vm.userData } : {}),
    },
  };
}

/** The NIC of an interface as the agent wants it: MAC, access VLAN, address with prefix, gateway. */
export function nicOf(vm: Pick<LoadedVm, 'area'>, i: LoadedVm['interfaces'][number]): NicSpec {
  const vlan = i.network.vlan?.vlan;
  if (vlan === undefined) throw new StepError(`network ${i.network.name} has no VLAN`, 'failed_precondition', false);
  const pool = addressPoolFor(vm.area, i.network);
  if ('error' in pool) throw new StepError(pool.error, 'failed_precondition', false);
  const addr = i.ip ? formatInterfaceAddress(parseDotted(i.ip), pool.subnet) : '';
  return {
    networkId: i.networkId,
    mac: i.mac,
    bridge: '',
    vlan,
    address: addr,
    gateway: pool.gateway !== null ? formatIpv4(pool.gateway) : '',
    dnsServers: [],
  };
}

/**
 * The agent's createVm for a VM as the database holds it: on its first creation, and with
 * `recover` to define (and start) it again from its existing disk on another host.
 */
function createVmCommand(vm: LoadedVm, extra: { recover?: { start: boolean } } = {}): AgentCommand {
  const t = vm.template;
  const boot = t.bootKernel && t.bootInitrd ? { kernel: t.bootKernel, initrd: t.bootInitrd, cmdline: t.bootCmdline ?? '' } : undefined;
  return {
    vmId: vm.id,
    action: {
      kind: 'createVm',
      hostname: vm.name,
      cpu: vm.cpu,
      ramMb: vm.ramMb,
      diskGb: vm.diskGb,
      pool: vm.pool?.name ?? '',
      templateVolume: t.image,
      nics: vm.interfaces.map((i) => nicOf(vm, i)),
      sshAuthorizedKeys: Array.isArray(vm.sshKeys) ? (vm.sshKeys as string[]) : [],
      passwordHash: '',
      ha: vm.haEnabled,
      ...extra,
      ...(boot ? { boot } : {}),
      ...(vm.userData ? { userData: vm.userData } : {}),
    },
  };
}

function parseDotted(ip: string): number {
  const p = ip.split('.').map(Number);
  return (((p[0]! << 24) >>> 0) + (p[1]! << 16) + (p[2]! << 8) + p[3]!) >>> 0;
}

/** Write a VM's state (and why, or null) and its event, in the caller's transaction or a new one. */
async function setState(db: PrismaClient | TxClient, task: TaskView, state: VmState, reason: string | null = null): Promise<void> {
  await changeWithEvents(
    db,
    (tx) => tx.vm.updateMany({ where: { id: task.targetId }, data: { state, stateReason: reason } }),
    reason === null ? targetEvent(task, 'state', state) : targetEvent(task, 'state', state).map((e) => ({ ...e, data: { reason } })),
  );
}

/**
 * Whether a create step's result reports the domain running recently enough to stand for a poll
 * of the host's inventory: its `runningAt` is at most `pollMs` before `now` (and not in the future).
 */
export function createdRunning(result: unknown, now: number, pollMs: number): boolean {
  const at = (result as { runningAt?: unknown } | null | undefined)?.runningAt;
  return typeof at === 'number' && at <= now && now - at <= pollMs;
}

/** The task definitions of VMs: create, delete, start, stop, reboot, attach and detach a NIC. */
export function vmTaskDefinitions(deps: VmTaskDeps): TaskDefinition[] {
  const { agents } = deps;

  const ensureNetworks = {
    name: 'networks',
    // The VLANs of the VM's networks on its host's uplink; shared with other VMs, so never undone.
    // Checked here (each network has its VLAN and address pool), not sent: the agent's createVm
    // and attachInterface ensure the bridge and the uplink VLAN of every NIC they are given
    // themselves, right before using them (HostOperations.ensureNicNetworks), so an ensureNetwork
    // sent first did the same OVS work twice — ~20 ms of ovs-vsctl/ovs-appctl per create
    // (bench/README.md, vm-create). A host that cannot carry the VLAN fails the next step instead.
    async run(ctx: StepContext) {
      const vm = await loadVm(ctx.db, ctx.task.targetId);
      hostOf(vm);
      for (const i of vm.interfaces) nicOf(vm, i);
      return { networks: vm.interfaces.length };
    },
  };

  /** Until the host reports the domain running (see the create task's `running` step). */
  const waitRunning = (after: string) => async (ctx: StepContext) => {
    const vm = await loadVm(ctx.db, ctx.task.targetId);
    if (createdRunning(ctx.results[after], Date.now(), deps.pollMs)) return { seenBy: after };
    const host = hostOf(vm);
    for (let n = 0; ; n++) {
      const r = await runCommand(agents, ctx, host, { action: { kind: 'getInventory' } }, n);
      const d = r.inventory?.domains.find((x) => x.vmId.toLowerCase() === vm.id.toLowerCase());
      if (d?.state === 'running') return { seenBy: 'inventory', domain: d.name };
      if (Date.now() + deps.pollMs >= ctx.deadline.getTime()) throw new StepError(`the domain is ${d?.state ?? 'missing'}, not running`, 'deadline_exceeded', true);
      await new Promise((res) => setTimeout(res, deps.pollMs));
      if (ctx.signal.aborted) throw new Error('aborted');
    }
  };

  const create: TaskDefinition = {
    kind: VM_TASKS.create,
    steps: [
      {
        name: 'claim',
        // Host, pool, addresses and quota were claimed with the VM, in the request's transaction
        // (so a full area answers 409 at once). This step checks the claim and is what rollback
        // releases, last, once nothing on the host can still use it.
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          return { hostId: hostOf(vm), host: vm.host?.name ?? null, pool: vm.pool?.name ?? null };
        },
        async undo(ctx) {
          await ctx.db.$transaction((tx) => releaseVmClaims(tx, ctx.task.targetId));
        },
      },
      ensureNetworks,
      {
        name: 'create',
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          await setState(ctx.db, ctx.task, 'creating');
          await runCommand(agents, ctx, hostOf(vm), createVmCommand(vm));
          // The agent answers createVm once libvirt has started the domain: that answer is the
          // host's report that it runs, as fresh as a poll of its inventory would be.
          return { created: true, runningAt: Date.now() };
        },
        // Delete the domain, its volumes and its ports (idempotent on the agent: a missing VM is success).
        async undo(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          if (!vm.hostId) return;
          await runCommand(agents, ctx, vm.hostId, { vmId: vm.id, action: { kind: 'deleteVm', pool: vm.pool?.name ?? '', bridges: [] } });
        },
      },
      {
        name: 'running',
        // Until the host reports the domain running. The create step's answer counts when it is
        // younger than one poll period (the usual case: this step runs right after it); one found
        // older — the task resumed after a restart — is checked through the host's inventory,
        // read through the agent, every pollMs. Skipping that first inventory saves its ~70 ms
        // (all domains' stats, pools and OVS bridges of the host) per create.
        run: waitRunning('create'),
      },
    ],
    async onSucceeded(task, tx) {
      await setState(tx, task, 'running');
    },
    async onRolledBack(task, tx) {
      // Rolled back completely: nothing is left on any host and the claims are released; the VM
      // stays, in error, so its owner sees why (the task says) and deletes it. Incomplete: the
      // host may still hold it, so its claims stay until a delete succeeds.
      await setState(tx, task, 'error');
    },
  };

  const del: TaskDefinition = {
    kind: VM_TASKS.delete,
    steps: [
      {
        name: 'delete',
        // Stop and delete it on its host (the agent destroys, undefines, and removes volumes and ports).
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          await setState(ctx.db, ctx.task, 'deleting');
          if (!vm.hostId) return { host: null };
          await runCommand(agents, ctx, vm.hostId, { vmId: vm.id, action: { kind: 'deleteVm', pool: vm.pool?.name ?? '', bridges: [] } });
          return { host: vm.host?.name ?? null };
        },
      },
    ],
    async onSucceeded(task, tx) {
      // Gone from the API: the row goes, and with it its interfaces and addresses (cascade).
      await changeWithEvents(tx, (t) => t.vm.deleteMany({ where: { id: task.targetId } }), targetEvent(task, 'deleted', 'deleted'));
    },
    async onRolledBack(task, tx) {
      await setState(tx, task, 'error');
    },
  };

  const power = (kind: string, name: string, after: VmState, action: 'startVm' | 'stopVm' | 'rebootVm'): TaskDefinition => ({
    kind,
    steps: [
      {
        name,
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          const a = action === 'stopVm' ? { kind: 'stopVm' as const, timeoutMs: deps.stopTimeoutMs, force: false } : { kind: action };
          await runCommand(agents, ctx, hostOf(vm), { vmId: vm.id, action: a });
          return { done: true };
        },
        timeoutMs: deps.stopTimeoutMs + 30_000,
      },
    ],
    async onSucceeded(task, tx) {
      await setState(tx, task, after);
    },
  });

  const nicChange = (kind: string, attach: boolean): TaskDefinition => ({
    kind,
    steps: [
      ...(attach ? [ensureNetworks] : []),
      {
        name: attach ? 'attach' : 'detach',
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          const networkId = String(ctx.task.input['networkId'] ?? '');
          const i = vm.interfaces.find((x) => x.networkId === networkId);
          if (!i) {
            if (attach) throw new StepError('the interface is gone', 'not_found', false);
            return { done: true };
          }
          await runCommand(agents, ctx, hostOf(vm), { vmId: vm.id, action: { kind: attach ? 'attachInterface' : 'detachInterface', index: i.position, nic: nicOf(vm, i) } });
          return { done: true };
        },
        async undo(ctx) {
          if (!attach) return;
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          const i = vm.interfaces.find((x) => x.networkId === String(ctx.task.input['networkId'] ?? ''));
          if (!i || !vm.hostId) return;
          await runCommand(agents, ctx, vm.hostId, { vmId: vm.id, action: { kind: 'detachInterface', index: i.position, nic: nicOf(vm, i) } });
        },
      },
    ],
    async onSucceeded(task, tx) {
      // A detached NIC (and its address) goes once the host no longer has it.
      if (!attach) await tx.vmInterface.deleteMany({ where: { vmId: task.targetId, networkId: String(task.input['networkId'] ?? '') } });
      await changeWithEvents(tx, async () => undefined, targetEvent(task, 'updated', null));
    },
    async onRolledBack(task, tx) {
      // An attach that failed leaves no NIC record behind (nor its address).
      if (attach) {
        const networkId = String(task.input['networkId'] ?? '');
        await tx.ipAllocation.deleteMany({ where: { vmId: task.targetId, networkId } });
        await tx.vmInterface.deleteMany({ where: { vmId: task.targetId, networkId } });
      }
    },
  });

  // Failover (ha/failover.ts): the evacuation's transaction moved the VM's host claim to the new
  // host (addresses, MACs and disk are the VM's rows: unchanged) and set it recovering. This task
  // defines and starts it there from its existing root volume on the shared pool — never a new
  // clone — and its rollback never deletes that volume.
  const recover: TaskDefinition = {
    kind: VM_TASKS.recover,
    steps: [
      {
        name: 'claim',
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          const to = String(ctx.task.input['toHostId'] ?? '');
          if (vm.hostId !== to) throw new StepError('the VM is no longer placed on the host it was to restart on', 'failed_precondition', false);
          if (vm.state !== 'recovering') throw new StepError(`the VM is ${vm.state}, not recovering`, 'failed_precondition', false);
          if (!vm.pool) throw new StepError('the VM has no pool', 'failed_precondition', false);
          return { hostId: to, host: vm.host?.name ?? null, pool: vm.pool.name };
        },
      },
      ensureNetworks,
      {
        name: 'recover',
        async run(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          const start = ctx.task.input['start'] !== false;
          try {
            await runCommand(agents, ctx, hostOf(vm), createVmCommand(vm, { recover: { start } }));
          } catch (err) {
            // No root volume there: the pool is not shared with that host after all. Retrying the
            // same host cannot help (and a recover never clones a new disk).
            if (err instanceof StepError && err.code === 'not_found') throw new StepError(err.message, 'not_found', false, { cause: err });
            throw err;
          }
          return start ? { recovered: true, runningAt: Date.now() } : { recovered: true, defined: true };
        },
        // Remove the domain and its ports from that host, never its volumes (the VM's disk).
        async undo(ctx) {
          const vm = await loadVm(ctx.db, ctx.task.targetId);
          if (!vm.hostId) return;
          await runCommand(agents, ctx, vm.hostId, { vmId: vm.id, action: { kind: 'evictVm', bridges: [] } });
        },
      },
      {
        name: 'running',
        async run(ctx) {
          if (ctx.task.input['start'] === false) return { seenBy: 'not started: the VM was stopped' };
          return waitRunning('recover')(ctx);
        },
      },
    ],
    async onSucceeded(task, tx) {
      await setState(tx, task, task.input['start'] === false ? 'stopped' : 'running');
    },
    async onRolledBack(task, tx, reason, complete) {
      // Back on its dead host, lost: the sweep retries an HA VM there when a host has room (and
      // the host's return reconciles it). An incomplete rollback may have left the domain on the
      // new host: the claim stays there, so that host's return cleans nothing it still needs.
      const from = String(task.input['fromHostId'] ?? '');
      if (from && complete) await tx.vm.updateMany({ where: { id: task.targetId, state: 'recovering' }, data: { hostId: from } });
      await tx.vm.updateMany({ where: { id: task.targetId, state: 'recovering' }, data: { lostFrom: task.input['start'] === false ? 'stopped' : 'running' } });
      await setState(tx, task, 'lost', `the restart on another host failed: ${reason}`.slice(0, 1000));
    },
  };

  return [
    create,
    recover,
    del,
    power(VM_TASKS.start, 'start', 'running', 'startVm'),
    power(VM_TASKS.stop, 'stop', 'stopped', 'stopVm'),
    power(VM_TASKS.reboot, 'reboot', 'running', 'rebootVm'),
    nicChange(VM_TASKS.attach, true),
    nicChange(VM_TASKS.detach, false),
  ];
}
