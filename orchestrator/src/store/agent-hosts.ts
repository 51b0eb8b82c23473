// Host rows as the agent link writes them: enrollment, Hello reconciliation, liveness, fencing.
import type { Prisma, PrismaClient } from '@kloudak/prisma';
import type { AgentHello, FenceEvidence, PoolLeaseEvidence } from '../domain/agent.js';
import type { HostCertificates } from '../domain/certificates.js';
import { appendEvents } from './outbox.js';

const MIB = 1024n * 1024n;
const GIB = MIB * 1024n;
const INT_MAX = 2_147_483_647n;

function clampInt(v: bigint): number {
  return Number(v > INT_MAX ? INT_MAX : v < 0n ? 0n : v);
}

/** Create the host of an enrollment (inside the enrollment's transaction). */
export async function createEnrolledHost(
  tx: Prisma.TransactionClient,
  h: { id: string; name: string; areaId: string; agentVersion: string; certSerial: string; certExpiresAt: Date },
): Promise<void> {
  await tx.host.create({
    data: { id: h.id, name: h.name, areaId: h.areaId, state: 'unknown', agentVersion: h.agentVersion, certSerial: h.certSerial, certExpiresAt: h.certExpiresAt },
  });
}

/** The id of the host with this name, if any. */
export async function hostNamed(db: Prisma.TransactionClient | PrismaClient, name: string): Promise<{ id: string } | null> {
  return db.host.findUnique({ where: { name }, select: { id: true } });
}

/** Name and certificate serials of a host, or null when it does not exist. */
export async function hostIdentity(db: PrismaClient, hostId: string): Promise<({ name: string } & HostCertificates) | null> {
  return db.host.findUnique({ where: { id: hostId }, select: { name: true, certSerial: true, prevCertSerial: true, prevCertValidUntil: true } });
}

/** Write what a Hello says about the host: capacity, version, bridges, pools, agent start. False if the host is gone. */
export async function reconcileHello(db: PrismaClient, hello: AgentHello, now: Date): Promise<boolean> {
  const r = await db.host.updateMany({
    where: { id: hello.hostId },
    data: {
      agentVersion: hello.agentVersion,
      cpuCount: clampInt(BigInt(hello.capacity.cpuCount)),
      memoryBytes: hello.capacity.memoryBytes,
      diskBytes: hello.capacity.diskBytes,
      ramMb: clampInt(hello.capacity.memoryBytes / MIB),
      diskGb: clampInt(hello.capacity.diskBytes / GIB),
      bridges: hello.bridges as unknown as Prisma.InputJsonValue,
      pools: hello.pools as unknown as Prisma.InputJsonValue,
      agentStartedAt: hello.agentStartedAt,
      lastHelloAt: now,
    },
  });
  return r.count === 1;
}

/** Why a host was declared down, as the orchestrator saw it (stored on the evacuation and in the event). */
export interface DownEvidence {
  /** The host's last heartbeat (or Hello), ISO time; null if never seen by this orchestrator. */
  lastHeartbeatAt: string | null;
  /** The last lease granted to the host, ISO time, and its length; null if none was granted. */
  lastLeaseGrantedAt: string | null;
  leaseMs: number | null;
  /** The margin after the lease before the host is down. */
  downMarginMs: number;
  /** When the lease plus margin ended (the host must have fenced its HA VMs by then), ISO time. */
  fencedBy: string | null;
  /** What the host's peers last read of its pool lease files (agent-api/pool-lease-view.ts). */
  poolLeases?: PoolLeaseEvidence;
}

/** What {@link writeHostState} wrote: the host's name, and for a new down episode its evacuation. */
export interface HostStateWritten {
  name: string;
  /** Set when this write started a down episode (the host was not down): the evacuation row made with it. */
  evacuation?: { id: string; episode: number };
}

/**
 * Who may write a host's liveness (several orchestrators, ha/README.md): `owner` — the instance
 * that holds (or last held) its session, only while it still is the owner; `orphanOf` — the
 * leader, for a host whose owner (this id, or none) has no live registration, only while that is
 * still so and the host is up or suspect.
 */
export type HostStateGuard = { owner: string } | { orphanOf: string | null };

/**
 * Write a liveness change (and the last heartbeat time) with its event (`kloudak.infra.host.state`,
 * `from` being the state the row had), in one transaction; no event when the row already has that
 * state. Returns the host's name, or null if it is gone or `guard` does not hold (the caller then
 * stops tracking the host).
 *
 * A change to `down` from any other state starts a down episode: Host.downEpisode grows by one and
 * the episode's Evacuation row (unique per host and episode) is created in the same transaction,
 * with the evidence; the event carries the evidence too. A second `down` for a host already down
 * (another orchestrator, a replayed transition) changes nothing and makes no evacuation: a host
 * that flaps is evacuated once per episode, never twice.
 */
export async function writeHostState(
  db: PrismaClient,
  hostId: string,
  state: 'unknown' | 'up' | 'suspect' | 'down',
  lastHeartbeatAt: Date | undefined,
  change: { from: string; at: Date; evidence?: DownEvidence },
  guard?: HostStateGuard,
): Promise<HostStateWritten | null> {
  return db.$transaction(async (tx) => {
    const rows = await tx.$queryRaw<{ name: string; state: string; owner: string | null; ownerLive: boolean; downEpisode: number }[]>`
      SELECT h."name", h."state"::text AS state, h."ownerInstanceId"::text AS owner, h."downEpisode",
        EXISTS (SELECT 1 FROM "OrchestratorInstance" i WHERE i."id" = h."ownerInstanceId" AND i."expiresAt" > now()) AS "ownerLive"
      FROM "Host" h WHERE h."id" = ${hostId}::uuid FOR UPDATE OF h`;
    const h = rows[0];
    if (!h) return null;
    if (guard && 'owner' in guard && h.owner !== guard.owner) return null;
    if (guard && 'orphanOf' in guard && (h.owner !== guard.orphanOf || h.ownerLive || !['up', 'suspect'].includes(h.state))) return null;
    if (h.state === state) {
      if (lastHeartbeatAt) await tx.host.update({ where: { id: hostId }, data: { lastHeartbeatAt }, select: { id: true } });
      return { name: h.name };
    }
    const newEpisode = state === 'down';
    await tx.host.update({
      where: { id: hostId },
      data: { state, ...(lastHeartbeatAt ? { lastHeartbeatAt } : {}), ...(newEpisode ? { downEpisode: { increment: 1 } } : {}) },
      select: { id: true },
    });
    const data: Record<string, unknown> = { from: h.state || change.from, at: change.at.toISOString() };
    let evacuation: HostStateWritten['evacuation'];
    if (newEpisode) {
      const episode = h.downEpisode + 1;
      // Fence reports the host sent after its last lease began (usually none yet: a dead host
      // reports when it returns; a partitioned one that reached another orchestrator may have).
      const since = change.evidence?.lastLeaseGrantedAt ? new Date(change.evidence.lastLeaseGrantedAt) : new Date(0);
      const reports = await tx.fenceReport.findMany({
        where: { hostId, fencedAt: { gte: since } },
        orderBy: { fencedAt: 'asc' },
        take: 20,
        select: { id: true, fencedAt: true, leaseExpiredAt: true, reason: true, domains: true },
      });
      const evidence = {
        ...(change.evidence ?? {}),
        ...(guard && 'orphanOf' in guard ? { orphanOf: guard.orphanOf } : {}),
        fenceReports: reports.map((r) => ({
          id: r.id,
          fencedAt: r.fencedAt.toISOString(),
          leaseExpiredAt: r.leaseExpiredAt.toISOString(),
          reason: r.reason,
          domains: Array.isArray(r.domains) ? r.domains.length : 0,
        })),
      };
      const e = await tx.evacuation.create({ data: { hostId, episode, evidence: evidence as unknown as Prisma.InputJsonValue }, select: { id: true } });
      evacuation = { id: e.id, episode };
      Object.assign(data, { episode, evacuationId: e.id, evidence });
    }
    await appendEvents(tx, [{ workspaceId: null, entity: 'host', entityId: hostId, event: 'state', state, name: h.name, data }]);
    return { name: h.name, ...(evacuation ? { evacuation } : {}) };
  });
}

/**
 * Write the last heartbeat time of many hosts in one statement (each at most every 30 s). Never
 * moves a time back: a state change may have written a later one meanwhile. Deleted hosts match
 * no row.
 */
export async function writeLastHeartbeats(db: PrismaClient, beats: readonly { hostId: string; at: Date }[]): Promise<void> {
  if (beats.length === 0) return;
  const ids = beats.map((b) => b.hostId);
  // Prisma stores DateTime as UTC in timestamp(3); a zone in the text is ignored by the cast.
  const ats = beats.map((b) => b.at.toISOString());
  await db.$executeRaw`
    UPDATE "Host" AS h SET "lastHeartbeatAt" = GREATEST(h."lastHeartbeatAt", v."at")
    FROM unnest(${ids}::uuid[], ${ats}::timestamp(3)[]) AS v("id", "at")
    WHERE h."id" = v."id"`;
}

/** Store an agent's fence report, with its event (`kloudak.infra.fence.reported`). */
export async function storeFenceReport(db: PrismaClient, hostId: string, hostName: string, f: FenceEvidence, receivedAt: Date): Promise<string> {
  return db.$transaction(async (tx) => {
  const r = await tx.fenceReport.create({
    data: {
      hostId,
      fencedAt: f.fencedAt,
      leaseExpiredAt: f.leaseExpiredAt,
      reason: f.reason.slice(0, 1000),
      domains: f.domains as unknown as Prisma.InputJsonValue,
      receivedAt,
    },
    select: { id: true },
  });
  await appendEvents(tx, [
    {
      workspaceId: null,
      entity: 'fence',
      entityId: r.id,
      event: 'reported',
      state: 'fenced',
      name: hostName,
      data: { hostId, fencedAt: f.fencedAt.toISOString(), leaseExpiredAt: f.leaseExpiredAt.toISOString(), reason: f.reason.slice(0, 1000), domains: f.domains },
    },
  ]);
  return r.id;
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Which of `vmIds` are VMs placed on `hostId` now. What an agent says about a VM counts only for
 * the VMs on its own host: a broken or hostile agent must not report (or fence) another host's.
 */
export async function vmsOnHost(db: PrismaClient, hostId: string, vmIds: readonly string[]): Promise<Set<string>> {
  const ids = [...new Set(vmIds.filter((v) => UUID.test(v)).map((v) => v.toLowerCase()))];
  if (ids.length === 0) return new Set();
  const rows = await db.vm.findMany({ where: { id: { in: ids }, hostId }, select: { id: true } });
  return new Set(rows.map((r) => r.id));
}

/**
 * The agent of `hostId` said Goodbye on the session of `epoch` held by `instanceId`: record when,
 * and which of `runningVmIds` are VMs placed on this host (what it says of others is dropped), with
 * an infrastructure event, in one transaction. False when that session is no longer the host's
 * (a newer one claimed it, or the host is gone): nothing is written. Cleared by the next Hello's
 * claim (store/instances.ts).
 */
export async function recordGoodbye(
  db: PrismaClient,
  hostId: string,
  session: { instanceId: string; epoch: bigint },
  runningVmIds: readonly string[],
  reason: string,
  at: Date,
): Promise<{ vmIds: string[] } | null> {
  const ids = [...new Set(runningVmIds.filter((v) => UUID.test(v)).map((v) => v.toLowerCase()))];
  return db.$transaction(async (tx) => {
    const rows = await tx.$queryRaw<{ name: string }[]>`
      SELECT "name" FROM "Host"
      WHERE "id" = ${hostId}::uuid AND "ownerInstanceId" = ${session.instanceId}::uuid AND "sessionEpoch" = ${session.epoch}
      FOR UPDATE`;
    const h = rows[0];
    if (!h) return null;
    const own = ids.length === 0 ? [] : (await tx.vm.findMany({ where: { id: { in: ids }, hostId }, select: { id: true }, orderBy: { id: 'asc' } })).map((r) => r.id);
    await tx.host.update({ where: { id: hostId }, data: { agentStoppedAt: at, agentStoppedVmIds: own }, select: { id: true } });
    await appendEvents(tx, [
      { workspaceId: null, entity: 'host', entityId: hostId, event: 'agent_stopped', name: h.name, data: { at: at.toISOString(), reason, runningVms: own.length, vmIds: own } },
    ]);
    return { vmIds: own };
  });
}

/**
 * Take back the Goodbye {@link recordGoodbye} wrote (at `at`) on that session, which came too late
 * to be acknowledged, with an event. Only while that session is still the host's: a later Hello
 * has cleared it already, and a newer session's Goodbye is not this one.
 */
export async function forgetGoodbye(db: PrismaClient, hostId: string, session: { instanceId: string; epoch: bigint }, at: Date): Promise<boolean> {
  return db.$transaction(async (tx) => {
    const n = await tx.$executeRaw`
      UPDATE "Host" SET "agentStoppedAt" = NULL, "agentStoppedVmIds" = ARRAY[]::text[]
      WHERE "id" = ${hostId}::uuid AND "ownerInstanceId" = ${session.instanceId}::uuid AND "sessionEpoch" = ${session.epoch} AND "agentStoppedAt" IS NOT NULL`;
    if (n === 0) return false;
    await appendEvents(tx, [{ workspaceId: null, entity: 'host', entityId: hostId, event: 'agent_stopped', data: { at: at.toISOString(), takenBack: true, reason: 'recorded after the lease ended: the agent fences its HA VMs' } }]);
    return true;
  });
}

/** How many of a host's latest evacuations {@link vmsFencedOnHost} looks through. */
const RECENT_EVACUATIONS = 5;

/**
 * Which of `vmIds` a fence report of `hostId` may name: the VMs placed on it now, and the VMs an
 * evacuation of this host moved elsewhere. The second set matters because a partitioned host
 * fences (and reports it, once it reconnects) the VMs its down episode has already restarted on
 * other hosts: that report is the evidence the restart was safe, not a claim about another
 * host's VM. A VM that was never on this host is still refused.
 */
export async function vmsFencedOnHost(db: PrismaClient, hostId: string, vmIds: readonly string[]): Promise<Set<string>> {
  const own = await vmsOnHost(db, hostId, vmIds);
  const rest = new Set(vmIds.map((v) => v.toLowerCase()).filter((v) => UUID.test(v) && !own.has(v)));
  if (rest.size === 0) return own;
  const evacuations = await db.evacuation.findMany({
    where: { hostId, plannedAt: { not: null } },
    orderBy: { episode: 'desc' },
    take: RECENT_EVACUATIONS,
    select: { plan: true },
  });
  for (const e of evacuations) {
    const moves = (e.plan as { moves?: { vmId?: unknown }[] } | null)?.moves ?? [];
    for (const m of moves) {
      const id = typeof m.vmId === 'string' ? m.vmId.toLowerCase() : '';
      if (rest.has(id)) own.add(id);
    }
  }
  return own;
}
