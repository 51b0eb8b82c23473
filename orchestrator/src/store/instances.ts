// Several orchestrators on one database: instances' registrations, leadership leases, and which
// instance holds each host's session (ha/README.md). Every expiry is written and compared on the
// database's clock (now()), so the orchestrators' wall clocks never meet in one comparison.
import type { PrismaClient } from '@kloudak/prisma';

/** Register an instance, or renew its registration: valid for `ttlMs` from the database's now. */
export async function renewInstance(db: PrismaClient, id: string, subject: string, ttlMs: number): Promise<void> {
  await db.$executeRaw`
    INSERT INTO "OrchestratorInstance" ("id", "subject", "startedAt", "expiresAt")
    VALUES (${id}::uuid, ${subject}, now(), now() + ${ttlMs} * interval '1 millisecond')
    ON CONFLICT ("id") DO UPDATE SET "expiresAt" = EXCLUDED."expiresAt"`;
}

/** End an instance's registration now (it stopped granting leases): the leader's clocks start at once. */
export async function expireInstance(db: PrismaClient, id: string): Promise<void> {
  await db.$executeRaw`UPDATE "OrchestratorInstance" SET "expiresAt" = LEAST("expiresAt", now()) WHERE "id" = ${id}::uuid`;
}

/** Forget registrations expired for longer than `olderThanMs` that own no host (the leader's sweep). */
export async function deleteStaleInstances(db: PrismaClient, olderThanMs: number): Promise<number> {
  return db.$executeRaw`
    DELETE FROM "OrchestratorInstance" i
    WHERE i."expiresAt" < now() - ${olderThanMs} * interval '1 millisecond'
      AND NOT EXISTS (SELECT 1 FROM "Host" h WHERE h."ownerInstanceId" = i."id")`;
}

/**
 * Take or keep leadership `name` for `ttlMs`: succeeds when this instance holds it, or when its
 * holder's lease has expired. Returns the term (it grows with each new holder, or after a lapse),
 * or null when another instance holds it.
 */
export async function acquireLeadership(db: PrismaClient, name: string, instanceId: string, ttlMs: number): Promise<bigint | null> {
  const rows = await db.$queryRaw<{ term: bigint }[]>`
    INSERT INTO "LeaderLease" ("name", "instanceId", "term", "since", "expiresAt")
    VALUES (${name}, ${instanceId}::uuid, 1, now(), now() + ${ttlMs} * interval '1 millisecond')
    ON CONFLICT ("name") DO UPDATE SET
      "instanceId" = EXCLUDED."instanceId",
      "term" = CASE WHEN "LeaderLease"."instanceId" = EXCLUDED."instanceId" AND "LeaderLease"."expiresAt" >= now()
                 THEN "LeaderLease"."term" ELSE "LeaderLease"."term" + 1 END,
      "since" = CASE WHEN "LeaderLease"."instanceId" = EXCLUDED."instanceId" AND "LeaderLease"."expiresAt" >= now()
                 THEN "LeaderLease"."since" ELSE now() END,
      "expiresAt" = EXCLUDED."expiresAt"
    WHERE "LeaderLease"."instanceId" = EXCLUDED."instanceId" OR "LeaderLease"."expiresAt" < now()
    RETURNING "term"`;
  const r = rows[0];
  return r ? BigInt(r.term) : null;
}

/** Give leadership up (clean shutdown): the next instance takes it at its next attempt. */
export async function releaseLeadership(db: PrismaClient, name: string, instanceId: string): Promise<void> {
  await db.$executeRaw`
    UPDATE "LeaderLease" SET "expiresAt" = now() - interval '1 millisecond'
    WHERE "name" = ${name} AND "instanceId" = ${instanceId}::uuid`;
}

/** Who holds leadership `name` now (unexpired), or null. */
export async function leaderOf(db: PrismaClient, name: string): Promise<{ instanceId: string; term: bigint } | null> {
  const rows = await db.$queryRaw<{ instanceId: string; term: bigint }[]>`
    SELECT "instanceId"::text AS "instanceId", "term" FROM "LeaderLease" WHERE "name" = ${name} AND "expiresAt" >= now()`;
  const r = rows[0];
  return r ? { instanceId: r.instanceId, term: BigInt(r.term) } : null;
}

/**
 * A Hello's claim: this instance now holds the host's session and judges its liveness. Returns
 * the session's epoch (higher than any earlier session's, on any instance), or null when the host
 * is gone. The agent is back: a Goodbye recorded before is over (recordGoodbye).
 */
export async function claimSession(db: PrismaClient, hostId: string, instanceId: string): Promise<bigint | null> {
  const rows = await db.$queryRaw<{ epoch: bigint }[]>`
    UPDATE "Host" SET "ownerInstanceId" = ${instanceId}::uuid, "sessionOpen" = true, "sessionEpoch" = "sessionEpoch" + 1,
      "agentStoppedAt" = NULL, "agentStoppedVmIds" = ARRAY[]::text[]
    WHERE "id" = ${hostId}::uuid RETURNING "sessionEpoch" AS epoch`;
  const r = rows[0];
  return r ? BigInt(r.epoch) : null;
}

/** The session of `epoch` ended on `instanceId` (no-op when a newer session claimed the host). */
export async function releaseSession(db: PrismaClient, hostId: string, instanceId: string, epoch: bigint): Promise<void> {
  await db.$executeRaw`
    UPDATE "Host" SET "sessionOpen" = false
    WHERE "id" = ${hostId}::uuid AND "ownerInstanceId" = ${instanceId}::uuid AND "sessionEpoch" = ${epoch}`;
}

/** An open session of a host on a live instance. */
export interface OpenSession {
  hostId: string;
  instanceId: string;
  subject: string;
  epoch: bigint;
}

/** Every open session held by an instance whose registration has not expired. */
export async function openSessions(db: PrismaClient): Promise<OpenSession[]> {
  const rows = await db.$queryRaw<{ hostId: string; instanceId: string; subject: string; epoch: bigint }[]>`
    SELECT h."id"::text AS "hostId", i."id"::text AS "instanceId", i."subject", h."sessionEpoch" AS epoch
    FROM "Host" h JOIN "OrchestratorInstance" i ON i."id" = h."ownerInstanceId"
    WHERE h."sessionOpen" AND i."expiresAt" > now()`;
  return rows.map((r) => ({ hostId: r.hostId, instanceId: r.instanceId, subject: r.subject, epoch: BigInt(r.epoch) }));
}

/** Which of `hostIds` have an open session on a live instance (any instance): "connected". */
export async function connectedHosts(db: PrismaClient, hostIds: readonly string[]): Promise<Set<string>> {
  if (hostIds.length === 0) return new Set();
  const rows = await db.$queryRaw<{ id: string }[]>`
    SELECT h."id"::text AS id FROM "Host" h JOIN "OrchestratorInstance" i ON i."id" = h."ownerInstanceId"
    WHERE h."id" = ANY(${[...hostIds]}::uuid[]) AND h."sessionOpen" AND i."expiresAt" > now()`;
  return new Set(rows.map((r) => r.id));
}

/** A host that is up or suspect while no live instance owns it: its owner died or never was. */
export interface OrphanCandidate {
  hostId: string;
  ownerInstanceId: string | null;
}

/** Hosts up or suspect whose owner is missing or expired (the leader watches them: ha/orphans.ts). */
export async function orphanedHosts(db: PrismaClient): Promise<OrphanCandidate[]> {
  return db.$queryRaw<OrphanCandidate[]>`
    SELECT h."id"::text AS "hostId", h."ownerInstanceId"::text AS "ownerInstanceId" FROM "Host" h
    WHERE h."state" IN ('up', 'suspect')
      AND NOT EXISTS (SELECT 1 FROM "OrchestratorInstance" i WHERE i."id" = h."ownerInstanceId" AND i."expiresAt" > now())`;
}
