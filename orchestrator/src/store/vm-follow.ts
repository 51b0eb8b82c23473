// A VM's state following its domain (domain/vm-follow.ts): what one observation writes.
import type { Prisma, PrismaClient } from '@kloudak/prisma';
import { followDomain, HA_RESTART_WINDOW_MS, type FollowAction, type ObservedDomain } from '../domain/vm-follow.js';
import type { EventInput } from '../events/event.js';
import { appendEvents } from './outbox.js';
import { hasUnfinishedTask, insertTask } from './tasks.js';

/** The start task an HA restart queues. */
export interface RestartTaskSettings {
  kind: string;
  maxAttempts: number;
  deadline: Date;
}

/**
 * An HA VM started again on the host it is placed on (after a crash there, or after that host
 * fenced it): it becomes `stopped` with `reason`, and a `vm.start` task (input reason
 * `ha_restart`, no user) is queued and becomes its last task. Returns the task's id and the
 * events (the VM's state for its workspace, `ha_restart` with `data` for admins) for the caller
 * to append last in its transaction.
 */
export async function queueHaStart(
  tx: Prisma.TransactionClient,
  vm: { id: string; workspaceId: string; name: string },
  task: RestartTaskSettings,
  reason: string,
  data: Record<string, unknown>,
): Promise<{ taskId: string; events: EventInput[] }> {
  const t = await insertTask(tx, {
    kind: task.kind,
    workspaceId: vm.workspaceId,
    createdById: null,
    targetType: 'vm',
    targetId: vm.id,
    input: { name: vm.name, action: 'start', reason: 'ha_restart' },
    maxAttempts: task.maxAttempts,
    deadline: task.deadline,
  });
  await tx.vm.update({ where: { id: vm.id }, data: { state: 'stopped', stateReason: reason, lostFrom: null, lastTaskId: t.id } });
  return {
    taskId: t.id,
    events: [
      { workspaceId: vm.workspaceId, entity: 'vm', entityId: vm.id, event: 'state', state: 'stopped', taskId: t.id, name: vm.name, data: { reason } },
      { workspaceId: null, entity: 'vm', entityId: vm.id, event: 'ha_restart', state: 'stopped', taskId: t.id, name: vm.name, data },
    ],
  };
}

/** What {@link followVmDomain} did: the decision, and the start task it queued. */
export interface FollowOutcome {
  action: FollowAction;
  taskId: string | null;
}

/**
 * Records what `hostId` observed of VM `vmId`'s domain, in one transaction under the VM's row lock
 * (a live event and a Hello's report of the same domain never both act): the decision of
 * {@link followDomain}, its state change and events, and for an HA restart the `vm.start` task
 * (input reason `ha_restart`, the same as a restart after fencing, so both count towards the
 * limit). A VM that is not on that host is left alone. `hostMustBeUp` is false for a returning
 * host, whose row may not say `up` yet while its Hello is handled.
 */
export async function followVmDomain(
  db: PrismaClient,
  hostId: string,
  vmId: string,
  observed: ObservedDomain,
  cause: string,
  opts: { task: RestartTaskSettings; now: Date; hostMustBeUp: boolean },
): Promise<FollowOutcome> {
  return db.$transaction(async (tx) => {
    const rows = await tx.$queryRaw<{ state: string; haEnabled: boolean; hostId: string | null; workspaceId: string; name: string }[]>`
      SELECT "state"::text AS "state", "haEnabled", "hostId"::text AS "hostId", "workspaceId"::text AS "workspaceId", "name"
      FROM "Vm" WHERE "id" = ${vmId}::uuid FOR UPDATE`;
    const vm = rows[0];
    if (!vm || vm.hostId !== hostId) return { action: { kind: 'none', why: 'it is not on this host' }, taskId: null };
    const host = await tx.host.findUnique({ where: { id: hostId }, select: { state: true } });
    const busy = await hasUnfinishedTask(tx, 'vm', vmId);
    // Counted since the window's start or the last start a user asked for, whichever is later:
    // a user who starts a VM HA gave up on (its cause fixed) gives it its restarts back.
    const userStart = await tx.task.findFirst({
      where: { targetType: 'vm', targetId: vmId, kind: opts.task.kind, createdById: { not: null } },
      orderBy: { seq: 'desc' },
      select: { createdAt: true },
    });
    const windowStart = new Date(opts.now.getTime() - HA_RESTART_WINDOW_MS);
    const since = userStart && userStart.createdAt > windowStart ? userStart.createdAt : windowStart;
    const recentHaRestarts = await tx.task.count({
      where: { targetType: 'vm', targetId: vmId, kind: opts.task.kind, input: { path: ['reason'], equals: 'ha_restart' }, createdAt: { gt: since } },
    });
    const action = followDomain(observed, cause, {
      vmState: vm.state,
      ha: vm.haEnabled,
      busy,
      hostUp: !opts.hostMustBeUp || host?.state === 'up',
      recentHaRestarts,
    });
    if (action.kind === 'none') return { action, taskId: null };
    if (action.kind === 'restart') {
      const q = await queueHaStart(tx, { id: vmId, workspaceId: vm.workspaceId, name: vm.name }, opts.task, action.reason, { hostId, cause, restartsBefore: recentHaRestarts });
      await appendEvents(tx, q.events);
      return { action, taskId: q.taskId };
    }
    const state = action.kind === 'running' ? 'running' : 'stopped';
    await tx.vm.update({ where: { id: vmId }, data: { state, stateReason: action.kind === 'running' ? null : action.reason } });
    await appendEvents(tx, [
      { workspaceId: vm.workspaceId, entity: 'vm', entityId: vmId, event: 'state', state, name: vm.name, data: { reason: action.reason } },
      { workspaceId: null, entity: 'vm', entityId: vmId, event: 'followed', state, name: vm.name, data: { hostId, observed, cause } },
    ]);
    return { action, taskId: null };
  });
}
