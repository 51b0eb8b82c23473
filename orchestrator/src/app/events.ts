import type { EventInput, KloudakEvent } from '../events/event.js';
import type { EventSubscription, StreamReset } from '../events/hub.js';
import { transaction, type TransactionLimits, type Tx } from '../store/db.js';
import { appendEvents } from '../store/outbox.js';
import { tokenHolder } from '../store/users.js';
import { workspaceAccess } from './access.js';
import { invalidField } from './errors.js';
import { admin, signedIn, type Caller, type Principal } from './principal.js';
import type { Services } from './services.js';

export type { EventInput, KloudakEvent } from '../events/event.js';
export { eventJson } from '../events/event.js';
export type { EventSubscription, StreamReset } from '../events/hub.js';

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

/** Parse a client's resume point (`?since=`, `Last-Event-ID`): a sequence, or 400. */
export function parseSince(value: string | undefined | null, field = '/since'): bigint | null {
  if (value === undefined || value === null || value === '') return null;
  if (!/^\d{1,19}$/.test(value)) throw invalidField(field, 'must be an event sequence (a non-negative integer)');
  return BigInt(value);
}

/**
 * A workspace's events for one of its members (404 for anyone else, as everywhere): every event
 * after `since`, then the live ones, in order, with no gap and no duplicate; without `since`, what
 * happens from now on. When events after `since` have left the retention, the subscription's
 * `reset` says so (the adapters send it first) and it goes on from now. The one source of WebSocket, SSE and gRPC
 * WatchEvents: iterate it, and `close()` it when the client goes.
 *
 * It closes itself, with the reason, when the caller stops being allowed: removed from the
 * workspace, the workspace deleted, the token logged out or revoked (a password change, a removal),
 * or the token expired. Those changes are events too, so it happens as soon as they are read
 * (milliseconds; at most the event poll interval when NATS is away).
 */
export async function openWorkspaceEvents(s: Services, c: Caller, ws: string, since: bigint | null): Promise<EventSubscription> {
  const p = signedIn(c);
  const a = await workspaceAccess(s.db.client, p, ws);
  const workspaceId = a.workspace.id;
  const sub = await s.events.subscribe(workspaceId, since);
  await guard(s, p, sub, async (events) => {
    for (const e of events) {
      if (e.entity === 'workspace' && e.event === 'deleted') return 'the workspace was deleted';
      if (e.entity === 'member' && e.event === 'removed' && e.id === p.username) {
        // An admin removed from a workspace still sees it (admins act everywhere).
        if (!(await stillAllowed(s, p, ws))) return 'you are no longer a member of this workspace';
      }
    }
    return null;
  }, workspaceId);
  // A change committed between the access check above and the watchers: checked once more.
  if (!(await stillAllowed(s, p, ws))) sub.close('you are no longer a member of this workspace');
  return sub;
}

/** The infrastructure events (hosts, fences, areas, pools, templates, join tokens, users), for admins. */
export async function openInfraEvents(s: Services, c: Caller, since: bigint | null): Promise<EventSubscription> {
  const p = admin(c);
  const sub = await s.events.subscribe(null, since);
  await guard(s, p, sub, async () => null, null);
  if (!(await tokenLive(s, p))) sub.close('the token was revoked');
  return sub;
}

async function stillAllowed(s: Services, p: Principal, ws: string): Promise<boolean> {
  if (!(await tokenLive(s, p))) return false;
  return workspaceAccess(s.db.client, p, ws).then(
    () => true,
    () => false,
  );
}

async function tokenLive(s: Services, p: Principal): Promise<boolean> {
  const u = await tokenHolder(s.db.client, p.userId, p.jti);
  return u !== null && !u.revoked;
}

/**
 * Close `sub` when its caller's token is revoked (a `user.revoked` event for them: logout of this
 * token, or every token after a password change or a removal) or expires, or when `check` finds a
 * reason in the scope's own events.
 */
async function guard(
  s: Services,
  p: Principal,
  sub: EventSubscription,
  check: (events: readonly KloudakEvent[]) => Promise<string | null>,
  workspaceId: string | null,
): Promise<void> {
  const stops: (() => void)[] = [];
  const expiry = setTimeout(() => sub.close('the token expired'), Math.max(0, p.exp * 1000 - s.clock.now()));
  expiry.unref();
  stops.push(
    await s.events.watch(null, (events) => {
      for (const e of events) {
        if (e.entity !== 'user' || e.event !== 'revoked' || e.id !== p.userId) continue;
        const jti = e.data?.['jti'];
        if (jti === undefined || jti === p.jti) sub.close('the token was revoked');
      }
    }),
  );
  if (workspaceId !== null) {
    stops.push(
      await s.events.watch(workspaceId, (events) => {
        void check(events).then(
          (reason) => {
            if (reason) sub.close(reason);
          },
          () => undefined,
        );
      }),
    );
  }
  // Registered last: a stream closed while the watchers were being set up still releases them.
  void sub.closed.then(() => {
    clearTimeout(expiry);
    for (const stop of stops) stop();
  });
}

/** The message a stream sends first when it was reset (WebSocket text frame, SSE `reset` event data). */
export function resetJson(r: StreamReset): string {
  return JSON.stringify({
    type: 'reset',
    ...r,
    reason: 'events after `since` are no longer retained: reload the state, then apply the events that follow',
  });
}
