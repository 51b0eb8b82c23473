import type { AgentChannel } from '../agent-api/channel.js';
import { runCommand } from './commands.js';
import { changeWithEvents, targetEvent } from './events.js';
import { StepError, type TaskDefinition, type TaskView, type TxClient } from './types.js';

/** What the network tasks need besides the database. */
export interface NetworkTaskDeps {
  agents: AgentChannel;
  /** Whether a host's agent holds a session now. */
  connected(hostId: string): boolean;
}

/** Task kinds of networks. */
export const NETWORK_TASKS = { create: 'network.create', delete: 'network.delete' } as const;

async function setState(tx: TxClient, task: TaskView, state: 'active' | 'error' | 'deleting'): Promise<void> {
  await changeWithEvents(tx, (t) => t.network.updateMany({ where: { id: task.targetId }, data: { state } }), targetEvent(task, 'state', state));
}

/**
 * The task definitions of networks. A network's VLAN is allocated with it, in the request's
 * transaction; hosts get the VLAN on their uplink when a VM of the network is placed there (the
 * VM's "networks" step), so creating a network touches no host. Deleting one removes its VLAN
 * from the uplink of every connected host of its area (idempotent; a host that is away keeps a
 * harmless trunk entry until the VLAN is used again).
 */
export function networkTaskDefinitions(deps: NetworkTaskDeps): TaskDefinition[] {
  const { agents } = deps;
  const create: TaskDefinition = {
    kind: NETWORK_TASKS.create,
    steps: [
      {
        name: 'vlan',
        async run(ctx) {
          const n = await ctx.db.network.findUnique({ where: { id: ctx.task.targetId }, include: { vlan: true } });
          if (!n) throw new StepError('the network no longer exists', 'not_found', false);
          if (!n.vlan) throw new StepError('the network has no VLAN', 'failed_precondition', false);
          return { vlan: n.vlan.vlan };
        },
      },
    ],
    async onSucceeded(task, tx) {
      await setState(tx, task, 'active');
    },
    async onRolledBack(task, tx) {
      await setState(tx, task, 'error');
    },
  };
  const del: TaskDefinition = {
    kind: NETWORK_TASKS.delete,
    steps: [
      {
        name: 'hosts',
        async run(ctx) {
          const n = await ctx.db.network.findUnique({ where: { id: ctx.task.targetId }, include: { vlan: true } });
          if (!n) return { hosts: 0 };
          await ctx.db.network.update({ where: { id: n.id }, data: { state: 'deleting' } });
          if (!n.vlan) return { hosts: 0 };
          const hosts = (await ctx.db.host.findMany({ where: { areaId: n.areaId }, select: { id: true } })).filter((h) => deps.connected(h.id));
          let i = 0;
          for (const h of hosts) {
            await runCommand(agents, ctx, h.id, { action: { kind: 'deleteNetwork', networkId: n.id, vlan: n.vlan.vlan, bridge: '' } }, i++);
          }
          return { hosts: hosts.length };
        },
      },
    ],
    async onSucceeded(task, tx) {
      // The VLAN is free again, and the name too: the row goes (its tasks stay readable).
      await tx.vlanAllocation.deleteMany({ where: { networkId: task.targetId } });
      await changeWithEvents(tx, (t) => t.network.deleteMany({ where: { id: task.targetId } }), targetEvent(task, 'deleted', 'deleted'));
    },
    async onRolledBack(task, tx) {
      await setState(tx, task, 'error');
    },
  };
  return [create, del];
}
