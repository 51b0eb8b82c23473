// Evacuations (one per host-down episode), the VMs of a dead host, and what a plan writes.
import type { Prisma, PrismaClient } from '@kloudak/prisma';
import type { AreaVm } from '../domain/drain.js';
import type { EvacuationLeftBehind, EvacuationMove, EvacuationPlan, EvacuationVm, KnownVm } from '../domain/evacuation.js';
import type { EventInput } from '../events/event.js';
import { appendEvents } from './outbox.js';
import { hasUnfinishedTask, insertTask } from './tasks.js';
import { queueHaStart, type RestartTaskSettings } from './vm-follow.js';

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
    select: { id: true, name: true, workspaceId: true, areaId: true, cpu: true, ramMb: true, diskGb: true, haEnabled: true, poolId: true, state: true, lostFrom: true, pool: { select: { shared: true } } },
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
    lostFrom: v.lostFrom,
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

/** Restarts of one lost VM that failed (see {@link failedRecovers}). */
export interface FailedRecovers {
  count: number;
  /** When the last one ended (ms since the epoch). */
  lastAt: number;
  /** The hosts they were tried on. */
  hosts: Set<string>;
}

/**
 * The restarts (`kind` tasks) of these VMs off `hostId` that failed since the host's current down
 * episode began (its evacuation's creation), per VM. A VM with none is absent.
 */
export async function failedRecovers(tx: Tx, hostId: string, vmIds: readonly string[], kind: string): Promise<Map<string, FailedRecovers>> {
  const out = new Map<string, FailedRecovers>();
  if (vmIds.length === 0) return out;
  const host = await tx.host.findUnique({ where: { id: hostId }, select: { downEpisode: true } });
  const evacuation = host ? await tx.evacuation.findUnique({ where: { hostId_episode: { hostId, episode: host.downEpisode } }, select: { createdAt: true } }) : null;
  if (!evacuation) return out;
  const tasks = await tx.task.findMany({
    where: { kind, targetType: 'vm', targetId: { in: [...vmIds] }, state: { in: ['failed', 'rolled_back'] }, createdAt: { gte: evacuation.createdAt } },
    select: { targetId: true, input: true, finishedAt: true, updatedAt: true },
  });
  for (const t of tasks) {
    const input = (t.input ?? {}) as Record<string, unknown>;
    if (input['fromHostId'] !== hostId) continue;
    const at = (t.finishedAt ?? t.updatedAt).getTime();
    const f = out.get(t.targetId) ?? { count: 0, lastAt: 0, hosts: new Set<string>() };
    f.count++;
    f.lastAt = Math.max(f.lastAt, at);
    if (typeof input['toHostId'] === 'string') f.hosts.add(input['toHostId']);
    out.set(t.targetId, f);
  }
  return out;
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
    // Which state it is lost from is kept (lostFrom): a running HA VM starts again on its host's return.
    let count = 0;
    for (const from of ['running', 'stopped'] as const) {
      if (count > 0) break;
      count = (await tx.vm.updateMany({ where: { id: l.vmId, hostId, state: from }, data: { state: 'lost', stateReason: reason.slice(0, 1000), lostFrom: from } })).count;
    }
    if (count === 0) continue;
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

/** What {@link pendingEvacuationHost} tells of a pending evacuation and its host. */
export interface PendingEvacuationHead {
  hostId: string;
  hostName: string;
  /** The host's liveness now: a hold is over when it is not down any more (the host came back). */
  hostState: string;
  /** The other hosts of its area (the peers that read its pool lease files). */
  peers: string[];
  /** Why it was held back, when it was (recordHeld); null: never held. */
  heldWhy: string | null;
  /** The host's agent said Goodbye and left these VMs running (store/agent-hosts.ts recordGoodbye). */
  agentStopped: { at: string; vmIds: string[] } | null;
  /** An admin confirmed the host is off (confirmHostOff). */
  confirmedOff: { by: string; at: string } | null;
}

/** A pending evacuation, its host and what may hold its restart back; null when not pending. */
export async function pendingEvacuationHost(db: PrismaClient, id: string): Promise<PendingEvacuationHead | null> {
  const e = await db.evacuation.findUnique({
    where: { id },
    select: { state: true, evidence: true, host: { select: { id: true, name: true, areaId: true, state: true, agentStoppedAt: true, agentStoppedVmIds: true } } },
  });
  if (!e || e.state !== 'pending') return null;
  const peers = await db.host.findMany({ where: { areaId: e.host.areaId, id: { not: e.host.id } }, select: { id: true } });
  const evidence = (e.evidence ?? {}) as Record<string, unknown>;
  const held = evidence['held'] as { why?: string } | undefined;
  const confirmed = evidence['confirmedOff'] as { by: string; at: string } | undefined;
  return {
    hostId: e.host.id,
    hostName: e.host.name,
    hostState: e.host.state,
    peers: peers.map((p) => p.id),
    heldWhy: held ? (held.why ?? 'lease_file_renewed') : null,
    agentStopped: e.host.agentStoppedAt ? { at: e.host.agentStoppedAt.toISOString(), vmIds: e.host.agentStoppedVmIds } : null,
    confirmedOff: confirmed ? { by: confirmed.by, at: confirmed.at } : null,
  };
}

/**
 * A held evacuation whose host came back (it is not down any more): nothing is evacuated, the
 * host keeps its VMs. Cancelled with its infrastructure event, only while still pending.
 */
export async function cancelEvacuation(db: PrismaClient, id: string, hostName: string, why: string, at: Date): Promise<boolean> {
  return db.$transaction(async (tx) => {
    const event = await cancelPending(tx, id, hostName, why, at);
    if (event) await appendEvents(tx, [event]);
    return event !== null;
  });
}

/** {@link cancelEvacuation} in the caller's transaction; returns its event for the caller to append (null: not pending). */
async function cancelPending(tx: Tx, id: string, hostName: string, why: string, at: Date): Promise<EventInput | null> {
  const e = await lockEvacuation(tx, id);
  if (!e || e.state !== 'pending') return null;
  // plannedAt stays null: it never had a plan (vmsFencedOnHost reads planned ones).
  await tx.evacuation.update({ where: { id }, data: { state: 'cancelled' } });
  return { workspaceId: null, entity: 'evacuation', entityId: id, event: 'cancelled', state: 'cancelled', name: hostName, data: { hostId: e.hostId, episode: e.episode, reason: why, at: at.toISOString() } };
}

/** What {@link confirmHostOff} found. */
export type ConfirmedOff =
  | { kind: 'no_host' }
  | { kind: 'not_down'; name: string; state: string }
  | { kind: 'nothing_pending'; name: string }
  | { kind: 'confirmed'; name: string; evacuations: string[] };

/**
 * An admin's word that a down host is off (powered off, or its VMs otherwise stopped): recorded on
 * its pending evacuations, with an event each, so that nothing holds their restarts back any more.
 * Only for a host that is down (its row locked, so it cannot come back meanwhile).
 */
export async function confirmHostOff(tx: Tx, hostId: string, by: string, at: Date): Promise<ConfirmedOff> {
  const hosts = await tx.$queryRaw<{ name: string; state: string }[]>`SELECT "name", "state"::text AS state FROM "Host" WHERE "id" = ${hostId}::uuid FOR UPDATE`;
  const h = hosts[0];
  if (!h) return { kind: 'no_host' };
  if (h.state !== 'down') return { kind: 'not_down', name: h.name, state: h.state };
  const rows = await tx.$queryRaw<{ id: string; episode: number; evidence: unknown }[]>`
    SELECT "id"::text AS id, "episode", "evidence" FROM "Evacuation" WHERE "hostId" = ${hostId}::uuid AND "state" = 'pending' ORDER BY "createdAt" FOR UPDATE`;
  if (rows.length === 0) return { kind: 'nothing_pending', name: h.name };
  const confirmedOff = { by, at: at.toISOString() };
  for (const r of rows) {
    const evidence = (r.evidence ?? {}) as Record<string, unknown>;
    await tx.evacuation.update({ where: { id: r.id }, data: { evidence: { ...evidence, confirmedOff } as Prisma.InputJsonValue } });
  }
  await appendEvents(
    tx,
    rows.map((r) => ({ workspaceId: null, entity: 'evacuation', entityId: r.id, event: 'confirmed_off', state: 'pending', name: h.name, data: { hostId, episode: r.episode, ...confirmedOff } })),
  );
  return { kind: 'confirmed', name: h.name, evacuations: rows.map((r) => r.id) };
}

/**
 * Record, once per evacuation, that its restart is held back (by the host's pool lease files, or
 * its agent's clean stop: `why`), in its evidence, with an infrastructure event; later checks that
 * still hold write nothing.
 * Returns whether this call recorded it.
 */
export async function recordHeld(db: PrismaClient, id: string, hostId: string, hostName: string, held: { why: string; message: string; evidence: unknown }, at: Date): Promise<boolean> {
  return db.$transaction(async (tx) => {
    const e = await lockEvacuation(tx, id);
    if (!e || e.state !== 'pending') return false;
    const row = await tx.evacuation.findUniqueOrThrow({ where: { id }, select: { evidence: true } });
    const evidence = (row.evidence ?? {}) as Record<string, unknown>;
    if (evidence['held'] !== undefined) return false;
    const record = { since: at.toISOString(), why: held.why, reason: held.message, poolLeases: held.evidence };
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
  const rows = await db.vm.findMany({ where: { id: { in: valid } }, select: { id: true, hostId: true, state: true, haEnabled: true, lostFrom: true, pool: { select: { name: true } } } });
  return new Map(rows.map((r) => [r.id, { id: r.id, hostId: r.hostId, state: r.state, poolName: r.pool?.name ?? null, ha: r.haEnabled, lostFrom: r.lostFrom }]));
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

/**
 * An HA VM that its returning host fenced (its domain is off, the VM still `running` here, or
 * `lost` from running): it becomes `stopped`, with the reason, and a start task is queued, with its
 * events. Only while it is still on that host, in that state, HA, and no task is working on it (a
 * user's stop in flight is theirs).
 * Returns the task's id, or null when it was left alone.
 */
export async function restartFencedVm(db: PrismaClient, hostId: string, vmId: string, task: RestartTaskSettings): Promise<string | null> {
  return db.$transaction(async (tx) => {
    // The host is back (its agent said Hello): an evacuation not planned yet is cancelled first,
    // under its row lock, so that no plan moves this VM away while it starts here.
    const host = await tx.host.findUnique({ where: { id: hostId }, select: { name: true } });
    if (!host) return null;
    const events: EventInput[] = [];
    for (const e of await tx.evacuation.findMany({ where: { hostId, state: 'pending' }, select: { id: true } })) {
      const cancelled = await cancelPending(tx, e.id, host.name, 'the host is back: it keeps its VMs', new Date());
      if (cancelled) events.push(cancelled);
    }
    const vm = await tx.vm.findFirst({
      where: { id: vmId, hostId, haEnabled: true, OR: [{ state: 'running' }, { state: 'lost', lostFrom: 'running' }] },
      select: { workspaceId: true, name: true },
    });
    if (!vm || (await hasUnfinishedTask(tx, 'vm', vmId))) {
      await appendEvents(tx, events);
      return null;
    }
    const reason = 'its host fenced it while cut off and came back before it restarted elsewhere: starting it again there';
    const q = await queueHaStart(tx, { id: vmId, ...vm }, task, reason, { hostId });
    await appendEvents(tx, [...events, ...q.events]);
    return q.taskId;
  });
}

/** Record what was done to a returning host's domains (infrastructure event). */
export async function recordHostCleanUp(db: PrismaClient, hostId: string, data: Record<string, unknown>): Promise<void> {
  await db.$transaction((tx) => appendEvents(tx, [{ workspaceId: null, entity: 'host', entityId: hostId, event: 'cleaned', state: null, data }]));
}
