import type { EventInput } from '../events/event.js';
import { transaction, type TransactionLimits, type Tx } from '../store/db.js';
import { appendEvents } from '../store/outbox.js';
import type { Services } from './services.js';

export type { EventInput, KloudakEvent } from '../events/event.js';

/** Details of an event besides its scope, entity, id and name of what happened. */
export interface EventDetails {
  name?: string | undefined;
  state?: string | null;
  taskId?: string | null;
  /** Ids, names and states only: a secret-named key makes the transaction fail. */
  data?: Record<string, unknown>;
}

/** An event a workspace's members see (`kloudak.ws.<workspaceId>.<entity>.<event>`). */
export function workspaceEvent(workspaceId: string, entity: string, id: string, event: string, d: EventDetails = {}): EventInput {
  return { workspaceId, entity, entityId: id, event, ...d };
}

/** An infrastructure event, for admins (`kloudak.infra.<entity>.<event>`). */
export function infraEvent(entity: string, id: string, event: string, d: EventDetails = {}): EventInput {
  return { workspaceId: null, entity, entityId: id, event, ...d };
}

/**
 * Record events in the use case's transaction, as its last write: they are published (by the
 * outbox relay) once it commits, and never when it rolls back. This is the one way use cases
 * emit events.
 */
export function record(tx: Tx, ...events: EventInput[]): Promise<void> {
  return appendEvents(tx, events);
}

/**
 * Run `fn` in a transaction and record, in the same transaction, the events its result calls
 * for: the shape of a use case whose change is one store call.
 */
export function withEvents<T>(s: Services, fn: (tx: Tx) => Promise<T>, events: (result: T) => EventInput | EventInput[], limits?: TransactionLimits): Promise<T> {
  return transaction(
    s.db.client,
    async (tx) => {
      const r = await fn(tx);
      const e = events(r);
      await appendEvents(tx, Array.isArray(e) ? e : [e]);
      return r;
    },
    limits,
  );
}

/** The event of a task just queued (in the transaction that queues it). */
export function taskQueued(workspaceId: string, t: { id: string; kind: string; targetType: string; targetId: string }): EventInput {
  return workspaceEvent(workspaceId, 'task', t.id, 'state', { state: 'queued', taskId: t.id, data: { kind: t.kind, targetType: t.targetType, targetId: t.targetId } });
}
