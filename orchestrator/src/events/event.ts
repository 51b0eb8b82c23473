// The one shape of an event, on every interface (NATS, WebSocket, SSE, gRPC WatchEvents), and the
// pure mappings from what a change writes to the outbox row and from the row to the event.

/** JetStream stream that keeps the events (subjects `kloudak.ws.>` and `kloudak.infra.>`). */
export const EVENT_STREAM = 'KLOUDAK_EVENTS';
/** Subjects of {@link EVENT_STREAM}. */
export const EVENT_SUBJECTS = ['kloudak.ws.>', 'kloudak.infra.>'] as const;

/**
 * An event as every client sees it. `seq` orders all events of a deployment (a client resumes
 * after the last one it saw); `workspace` is null for infrastructure events (admins only).
 */
export interface KloudakEvent {
  seq: number;
  /** ISO 8601 instant of the change (its transaction). */
  time: string;
  workspace: string | null;
  /** vm, network, task, member, workspace, host, fence, area, pool, template, join-token, domain. */
  entity: string;
  /** The id of the object that changed (a username for a member). */
  id: string;
  /** What happened: created, state, deleted, updated, added, removed, step… */
  event: string;
  /** The object's new state, when it has one. */
  state: string | null;
  /** The task that made the change, if any. */
  task: string | null;
  /** The object's name, when it has one. */
  name?: string;
  /** Further details: ids, names and states only, never a secret. */
  data?: Record<string, unknown>;
}

/** What a change records, in its transaction (`store/outbox.ts` appendEvents). */
export interface EventInput {
  /** The workspace whose members see it; null: infrastructure, admins only. */
  workspaceId: string | null;
  entity: string;
  entityId: string;
  event: string;
  state?: string | null;
  taskId?: string | null;
  name?: string | undefined;
  data?: Record<string, unknown>;
}

/** An outbox row as the store reads it. */
export interface OutboxRow {
  seq: bigint;
  id: string;
  time: Date;
  workspaceId: string | null;
  subject: string;
  entity: string;
  entityId: string;
  event: string;
  state: string | null;
  taskId: string | null;
  payload: unknown;
  publishedAt: Date | null;
}

/** The NATS subject of an event: `kloudak.ws.<workspaceId>.<entity>.<event>` or `kloudak.infra.<entity>.<event>`. */
export function eventSubject(workspaceId: string | null, entity: string, event: string): string {
  return workspaceId ? `kloudak.ws.${workspaceId}.${entity}.${event}` : `kloudak.infra.${entity}.${event}`;
}

/**
 * Keys that name a secret. A payload holding one is refused when the change is written (the
 * transaction fails): events go to every member of a workspace and are kept for a day.
 */
const SECRET_KEY = /^(password|passwordhash|newpassword|secret|secrethash|token|accesstoken|refreshtoken|jwt|sshkeys?|userdata|privatekey|key|keypem|cert(ificate)?pem)$/i;

/** The first key, at any depth, that names a secret, or null. */
export function secretKeyIn(value: unknown, path = ''): string | null {
  if (Array.isArray(value)) {
    for (const [i, v] of value.entries()) {
      const k = secretKeyIn(v, `${path}/${i}`);
      if (k) return k;
    }
    return null;
  }
  if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (SECRET_KEY.test(k)) return `${path}/${k}`;
      const inner = secretKeyIn(v, `${path}/${k}`);
      if (inner) return inner;
    }
  }
  return null;
}

/** The payload column of an event: its name and details. */
export function payloadOf(e: EventInput): Record<string, unknown> {
  return { ...(e.name !== undefined ? { name: e.name } : {}), ...(e.data ?? {}) };
}

/** Map an outbox row to the event every interface sends. */
export function toEvent(row: OutboxRow): KloudakEvent {
  const payload = (row.payload && typeof row.payload === 'object' && !Array.isArray(row.payload) ? row.payload : {}) as Record<string, unknown>;
  const { name, ...data } = payload;
  return {
    seq: Number(row.seq),
    time: row.time.toISOString(),
    workspace: row.workspaceId,
    entity: row.entity,
    id: row.entityId,
    event: row.event,
    state: row.state,
    task: row.taskId,
    ...(typeof name === 'string' ? { name } : {}),
    ...(Object.keys(data).length > 0 ? { data } : {}),
  };
}

/**
 * The JSON of an event, made once: the hub hands the same event object to every stream of its
 * scope (WebSocket, SSE, gRPC), so a thousand clients cost one serialisation.
 */
const serialised = new WeakMap<KloudakEvent, string>();
export function eventJson(e: KloudakEvent): string {
  let s = serialised.get(e);
  if (s === undefined) {
    s = JSON.stringify(e);
    serialised.set(e, s);
  }
  return s;
}
