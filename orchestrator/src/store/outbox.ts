// The event outbox: written in the transaction of each change, read by the relay (publish, mark,
// prune) and by event streams catching up after a `since`.
import { Prisma, type PrismaClient } from '@kloudak/prisma';
import { eventSubject, payloadOf, secretKeyIn, type EventInput, type OutboxRow } from '../events/event.js';

type Tx = Prisma.TransactionClient;
type DbOrTx = PrismaClient | Tx;

/**
 * Key of the transaction-level advisory lock every append takes. Held from the append to the
 * commit, it makes `seq` order commit order: a reader that sees seq n sees every row before it,
 * so the relay publishes without holes and a stream resumes without gaps. Appends come last in
 * their transactions, so the lock is held only for the commit.
 */
const OUTBOX_LOCK = 7_212_011_001;
/** The channel a committed append notifies (PostgreSQL and PGlite deliver it at commit). */
export const OUTBOX_CHANNEL = 'kloudak_outbox';

/**
 * Write events in the caller's transaction: they are published once it commits, and never if it
 * rolls back. Call it last in the transaction (it takes the outbox lock until the commit).
 * Refuses a payload that holds a secret-named key.
 */
export async function appendEvents(tx: Tx, events: readonly EventInput[]): Promise<void> {
  if (events.length === 0) return;
  const data = events.map((e) => {
    const payload = payloadOf(e);
    const secret = secretKeyIn(payload);
    if (secret) throw new Error(`event ${e.entity}.${e.event} carries a secret-named field (${secret})`);
    return {
      workspaceId: e.workspaceId,
      subject: eventSubject(e.workspaceId, e.entity, e.event),
      entity: e.entity,
      entityId: e.entityId,
      event: e.event,
      state: e.state ?? null,
      taskId: e.taskId ?? null,
      payload: payload as Prisma.InputJsonValue,
    };
  });
  await tx.$executeRaw`SELECT pg_advisory_xact_lock(${OUTBOX_LOCK}::bigint), pg_notify(${OUTBOX_CHANNEL}, '')`;
  await tx.outboxEvent.createMany({ data });
}

/** Write events in a transaction of their own (a change made by one statement outside one). */
export async function appendEventsNow(db: PrismaClient, events: readonly EventInput[]): Promise<void> {
  await db.$transaction((tx) => appendEvents(tx, events));
}

/** The oldest unpublished rows, in sequence order. */
export function unpublished(db: DbOrTx, take: number): Promise<OutboxRow[]> {
  return db.outboxEvent.findMany({ where: { publishedAt: null }, orderBy: { seq: 'asc' }, take });
}

/** Mark rows published. */
export async function markPublished(db: DbOrTx, seqs: readonly bigint[], at: Date): Promise<void> {
  if (seqs.length === 0) return;
  await db.outboxEvent.updateMany({ where: { seq: { in: [...seqs] } }, data: { publishedAt: at } });
}

/** Delete published rows older than `before`; returns how many went. */
export async function prunePublished(db: DbOrTx, before: Date): Promise<number> {
  const r = await db.outboxEvent.deleteMany({ where: { publishedAt: { not: null }, time: { lt: before } } });
  return r.count;
}

/**
 * Events after `since`, in order, at most `take`: one workspace's (`workspaceId` a string) or the
 * infrastructure ones (null).
 */
export function eventsAfter(db: DbOrTx, workspaceId: string | null, since: bigint, take: number): Promise<OutboxRow[]> {
  return db.outboxEvent.findMany({ where: { workspaceId, seq: { gt: since } }, orderBy: { seq: 'asc' }, take });
}

/** The last sequence written so far (0 when none). */
export async function lastSeq(db: DbOrTx): Promise<bigint> {
  const r = await db.outboxEvent.aggregate({ _max: { seq: true } });
  return r._max.seq ?? 0n;
}

/**
 * The oldest sequence the outbox still holds (null when empty) and the last one (0 when empty):
 * a stream resuming after a sequence before `oldest - 1` would miss what was pruned in between.
 */
export async function retainedRange(db: DbOrTx): Promise<{ oldest: bigint | null; last: bigint }> {
  const r = await db.outboxEvent.aggregate({ _min: { seq: true }, _max: { seq: true } });
  return { oldest: r._min.seq ?? null, last: r._max.seq ?? 0n };
}
