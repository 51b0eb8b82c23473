// Evacuations (one per host-down episode), the VMs of a dead host, and what a plan writes.
import type { Prisma, PrismaClient } from '@kloudak/prisma';
import type { AreaVm } from '../domain/drain.js';
import type { EvacuationLeftBehind, EvacuationMove, EvacuationPlan, EvacuationVm, KnownVm } from '../domain/evacuation.js';
import type { EventInput } from '../events/event.js';
import { appendEvents } from './outbox.js';
import { insertTask } from './tasks.js';

type Tx = Prisma.TransactionClient;

/** Lock an evacuation row; its state and host, or null when gone. */
export async function lockEvacuation(tx: Tx, id: string): Promise<{ hostId: string; state: string; episode: number } | null> {
  const rows = await tx.$queryRaw<{ hostId: string; state: string; episode: number }[]>`
    SELECT "hostId"::text AS "hostId", "state"::text AS "state", "episode" FROM "Evacuation" WHERE "id" = ${id}::uuid FOR UPDATE`;
  return rows[0] ?? null;
}

/** Ids of evacuations not planned yet (of one host, or of all), oldest first. */
export async function pendingEvacuations(db: PrismaClient, hostId?: string): Promise<string[]> {
  const rows = await db.evacuation.findMany({ where: { state: 'pending', ...(hostId ? { hostId } : {}) }, orderBy: { createdAt: 'asc' }, select: { id: true } });
  return rows.map((r) => r.id);
}

/** A host's area, name and state, or null. */
export async function hostForEvacuation(tx: Tx, hostId: string): Promise<{ id: string; name: string; areaId: string; state: string } | null> {
  return tx.host.findUnique({ where: { id: hostId }, select: { id: true, name: true, areaId: true, state: true } });
}

/** The VMs placed on a host, as the planner sees them. */
export async function vmsForEvacuation(tx: Tx, hostId: string): Promise<EvacuationVm[]> {
  const rows = await tx.vm.findMany({
    where: { hostId },
    select: { id: true, name: true, workspaceId: true, areaId: true, cpu: true, ramMb: true, diskGb: true, haEnabled: true, poolId: true, state: true, pool: { select: { shared: true } } },
  });
  return rows.map((v) => ({
    id: v.id,
    name: v.name,
    workspaceId: v.workspaceId,
    areaId: v.areaId,
    cpu: v.cpu,
    ramMb: v.ramMb,
    diskGb: v.diskGb,
    ha: v.haEnabled,
    poolId: v.poolId,
    poolShared: v.pool?.shared ?? false,
    state: v.state,
  }));
}

/** Ids of an area's hosts. */
export async function areaHostIds(db: Prisma.TransactionClient | PrismaClient, areaId: string): Promise<string[]> {
  return (await db.host.findMany({ where: { areaId }, select: { id: true } })).map((h) => h.id);
}

/** Every VM of an area that is placed on a host, as the n+1 check sees it. */
export async function areaVms(db: Prisma.TransactionClient | PrismaClient, areaId: string): Promise<AreaVm[]> {
  const rows = await db.vm.findMany({
    where: { areaId, hostId: { not: null } },
    select: { id: true, name: true, workspaceId: true, areaId: true, hostId: true, cpu: true, ramMb: true, diskGb: true, haEnabled: true, poolId: true, state: true, pool: { select: { shared: true } } },
  });
  return rows.map((v) => ({
    id: v.id,
    name: v.name,
    workspaceId: v.workspaceId,
    areaId: v.areaId,
    hostId: v.hostId,
    cpu: v.cpu,
    ramMb: v.ramMb,
    diskGb: v.diskGb,
    ha: v.haEnabled,
    poolId: v.poolId,
    poolShared: v.pool?.shared ?? false,
    state: v.state,
  }));
}

/** Down hosts that still hold lost HA VMs (the retry sweep's work). */
export async function downHostsWithLostHaVms(db: PrismaClient): Promise<string[]> {
  const rows = await db.vm.findMany({
    where: { state: 'lost', haEnabled: true, host: { state: 'down' }, pool: { shared: true } },
    distinct: ['hostId'],
    select: { hostId: true },
  });
  return rows.map((r) => r.hostId).filter((h): h is string => h !== null);
}

/**
 * Down hosts whose episode's evacuation is planned but that still hold VMs in a settled state
 * (running, stopped): VMs the plan skipped because a task was working on them (a drain's
 * migration, say) and that task has ended since, leaving them on the dead host.
 */
export async function downHostsWithLeftovers(db: PrismaClient): Promise<string[]> {
  const rows = await db.vm.findMany({
    where: {
      state: { in: ['running', 'stopped'] },
      host: { state: 'down', evacuations: { some: { state: 'planned' }, none: { state: 'pending' } } },
    },
    distinct: ['hostId'],
    select: { hostId: true },
  });
  return rows.map((r) => r.hostId).filter((h): h is string => h !== null);
}

/** Settings of the recover tasks a plan queues. */
export interface RecoverTaskSettings {
  kind: string;
  maxAttempts: number;
  deadline: Date;
  evacuationId: string | null;
}

/**
 * Write a plan's moves: each VM's host claim moves to its new host (addresses, MACs and disk stay:
 * they are the VM's rows, untouched), its state becomes `recovering`, and its recover task is
 * queued — all in the caller's transaction. A VM that changed meanwhile (no longer on `fromHostId`
 * or in another state) is left alone. Returns the moves written, with their task ids.
 */
export async function writeMoves(
  tx: Tx,
  fromHostId: string,
  moves: readonly EvacuationMove[],
  fromStates: readonly ('running' | 'stopped' | 'lost')[],
  task: RecoverTaskSettings,
): Promise<{ move: EvacuationMove; taskId: string }[]> {
  const out: { move: EvacuationMove; taskId: string }[] = [];
  const events: EventInput[] = [];
  for (const m of moves) {
    const r = await tx.vm.updateMany({
      where: { id: m.vmId, hostId: fromHostId, state: { in: [...fromStates] } },
      data: { hostId: m.toHostId, state: 'recovering', stateReason: `its host died: restarting on ${m.toHostName}` },
    });
    if (r.count === 0) continue;
    const t = await insertTask(tx, {
      kind: task.kind,
      workspaceId: m.workspaceId,
      createdById: null,
      targetType: 'vm',
      targetId: m.vmId,
      input: { name: m.vmName, fromHostId, toHostId: m.toHostId, toHost: m.toHostName, start: m.start, evacuationId: task.evacuationId },
      maxAttempts: task.maxAttempts,
      deadline: task.deadline,
    });
    await tx.vm.update({ where: { id: m.vmId }, data: { lastTaskId: t.id } });
    out.push({ move: m, taskId: t.id });
    events.push(
      { workspaceId: m.workspaceId, entity: 'vm', entityId: m.vmId, event: 'state', state: 'recovering', taskId: t.id, name: m.vmName, data: { reason: 'its host died: restarting on another host' } },
      {
        workspaceId: null,
        entity: 'vm',
        entityId: m.vmId,
        event: 'evacuated',
        state: 'recovering',
        taskId: t.id,
        name: m.vmName,
        data: { fromHostId, toHostId: m.toHostId, toHost: m.toHostName, start: m.start, evacuationId: task.evacuationId, placement: m.reason.message },
      },
    );
  }
  await appendEvents(tx, events);
  return out;
}

/**
 * Mark VMs lost (they stay listed, on their dead host, with the reason), with their events: a
 * workspace event for their members and an infrastructure one. VMs already lost or changed
 * meanwhile are left alone. Returns the ids marked.
 */
export async function writeLost(tx: Tx, hostId: string, left: readonly EvacuationLeftBehind[], evacuationId: string | null): Promise<string[]> {
  const out: string[] = [];
  const events: EventInput[] = [];
  for (const l of left) {
    const reason = l.code === 'no_capacity' ? `no host of the area can take it now (retried when room appears): ${l.message}` : l.message;
    const r = await tx.vm.updateMany({
      where: { id: l.vmId, hostId, state: { in: ['running', 'stopped'] } },
      data: { state: 'lost', stateReason: reason.slice(0, 1000) },
    });
    if (r.count === 0) continue;
    out.push(l.vmId);
    events.push(
      { workspaceId: l.workspaceId, entity: 'vm', entityId: l.vmId, event: 'state', state: 'lost', name: l.vmName, data: { code: l.code, reason: reason.slice(0, 1000) } },
      {
        workspaceId: null,
        entity: 'vm',
        entityId: l.vmId,
        event: 'lost',
        state: 'lost',
        name: l.vmName,
        data: { hostId, code: l.code, reason: reason.slice(0, 1000), evacuationId, rejections: (l.rejections ?? []).map((x) => ({ host: x.hostName, filter: x.filter, message: x.message })) },
      },
    );
  }
  await appendEvents(tx, events);
  return out;
}

/** Record an evacuation's plan (state planned), with its infrastructure event. */
export async function markPlanned(tx: Tx, id: string, hostId: string, hostName: string, plan: EvacuationPlan, at: Date, gate?: { restart: string }): Promise<void> {
  const summary = {
    moves: plan.moves.map((m) => ({ vmId: m.vmId, vm: m.vmName, toHostId: m.toHostId, toHost: m.toHostName, start: m.start })),
    unplaced: plan.unplaced.map((u) => ({ vmId: u.vmId, vm: u.vmName, code: u.code, message: u.message })),
    lost: plan.lost.map((u) => ({ vmId: u.vmId, vm: u.vmName, code: u.code, message: u.message })),
    skipped: plan.skipped.map((u) => ({ vmId: u.vmId, vm: u.vmName, code: u.code, message: u.message })),
  };
  await tx.evacuation.update({ where: { id }, data: { state: 'planned', plan: (gate ? { ...summary, restart: gate.restart } : summary) as Prisma.InputJsonValue, plannedAt: at } });
  await appendEvents(tx, [
    {
      workspaceId: null,
      entity: 'evacuation',
      entityId: id,
      event: 'planned',
      state: 'planned',
      name: hostName,
      data: { hostId, moves: summary.moves.length, unplaced: summary.unplaced.length, lost: summary.lost.length, skipped: summary.skipped.length, plan: summary },
    },
  ]);
}

/** A pending evacuation's host, with the other hosts of its area (the peers that read its pool lease files). */
export async function pendingEvacuationHost(db: PrismaClient, id: string): Promise<{ hostId: string; hostName: string; peers: string[]; held: boolean } | null> {
  const e = await db.evacuation.findUnique({ where: { id }, select: { state: true, evidence: true, host: { select: { id: true, name: true, areaId: true } } } });
  if (!e || e.state !== 'pending') return null;
  const peers = await db.host.findMany({ where: { areaId: e.host.areaId, id: { not: e.host.id } }, select: { id: true } });
  const evidence = (e.evidence ?? {}) as Record<string, unknown>;
  return { hostId: e.host.id, hostName: e.host.name, peers: peers.map((p) => p.id), held: evidence['held'] !== undefined };
}

/**
 * Record, once per evacuation, that its restart is held back by the host's pool lease files (in
 * its evidence, with an infrastructure event); later checks that still hold write nothing.
 * Returns whether this call recorded it.
 */
export async function recordHeld(db: PrismaClient, id: string, hostId: string, hostName: string, held: { message: string; evidence: unknown }, at: Date): Promise<boolean> {
  return db.$transaction(async (tx) => {
    const e = await lockEvacuation(tx, id);
    if (!e || e.state !== 'pending') return false;
    const row = await tx.evacuation.findUniqueOrThrow({ where: { id }, select: { evidence: true } });
    const evidence = (row.evidence ?? {}) as Record<string, unknown>;
    if (evidence['held'] !== undefined) return false;
    const record = { since: at.toISOString(), reason: held.message, poolLeases: held.evidence };
    await tx.evacuation.update({ where: { id }, data: { evidence: { ...evidence, held: record } as Prisma.InputJsonValue } });
    await appendEvents(tx, [
      { workspaceId: null, entity: 'evacuation', entityId: id, event: 'held', state: 'pending', name: hostName, data: { hostId, episode: e.episode, ...record } },
    ]);
    return true;
  });
}

/** The VMs with these ids (any host), for a returning host's clean-up. */
export async function knownVms(db: PrismaClient, ids: readonly string[]): Promise<Map<string, KnownVm>> {
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const valid = [...new Set(ids.filter((i) => UUID.test(i)).map((i) => i.toLowerCase()))];
  if (valid.length === 0) return new Map();
  const rows = await db.vm.findMany({ where: { id: { in: valid } }, select: { id: true, hostId: true, state: true, pool: { select: { name: true } } } });
  return new Map(rows.map((r) => [r.id, { id: r.id, hostId: r.hostId, state: r.state, poolName: r.pool?.name ?? null }]));
}

/**
 * A lost VM's host reported it: its state becomes what the host says (running or stopped), with
 * its events. Only while it is still lost and on that host.
 */
export async function reconcileLostVm(db: PrismaClient, hostId: string, vmId: string, state: 'running' | 'stopped'): Promise<boolean> {
  return db.$transaction(async (tx) => {
    const vm = await tx.vm.findFirst({ where: { id: vmId, hostId, state: 'lost' }, select: { workspaceId: true, name: true } });
    if (!vm) return false;
    await tx.vm.update({ where: { id: vmId }, data: { state, stateReason: null } });
    await appendEvents(tx, [
      { workspaceId: vm.workspaceId, entity: 'vm', entityId: vmId, event: 'state', state, name: vm.name, data: { reason: 'its host came back' } },
      { workspaceId: null, entity: 'vm', entityId: vmId, event: 'reconciled', state, name: vm.name, data: { hostId } },
    ]);
    return true;
  });
}

/** Record what was done to a returning host's domains (infrastructure event). */
export async function recordHostCleanUp(db: PrismaClient, hostId: string, data: Record<string, unknown>): Promise<void> {
  await db.$transaction((tx) => appendEvents(tx, [{ workspaceId: null, entity: 'host', entityId: hostId, event: 'cleaned', state: null, data }]));
}
