import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import { eventsAfter, lastSeq, retainedRange } from '../store/outbox.js';
import { EVENT_SUBJECTS, toEvent, type KloudakEvent } from './event.js';

/** Rows read per query while catching up. */
const PAGE = 500;
/** Events a slow reader may have queued before its stream is closed. */
const MAX_QUEUED = 10_000;

/** Why a stream ended; sent to the client as the close reason. */
export type CloseReason = string;

/**
 * Why a resuming stream cannot give what its client asked for: events after `since` have left the
 * retention (or `since` is after every event of this deployment, e.g. a sequence from another
 * one). The client must reload the state it holds; the stream goes on with the events after
 * `seq`, the sequence of the last event when it was opened (the `since` of a later resume).
 */
export interface StreamReset {
  /** What the client asked to resume after. */
  since: number;
  /** The oldest sequence still retained (any scope); null when nothing is. */
  oldest: number | null;
  /** The stream resumes after this sequence. */
  seq: number;
}

/**
 * One reader's ordered, gap-free, duplicate-free sequence of events of one scope (a workspace,
 * or the infrastructure). Iterate it; `close` ends it (the iteration returns).
 */
export interface EventSubscription extends AsyncIterable<KloudakEvent> {
  /**
   * Set when the stream could not resume where asked (events pruned since): adapters send it to
   * the client before any event. Null for a stream that misses nothing.
   */
  readonly reset: StreamReset | null;
  /** End the stream; `reason` is what {@link EventSubscription.closed} resolves to. */
  close(reason?: CloseReason): void;
  /** Resolves with the reason once the stream is closed. */
  readonly closed: Promise<CloseReason>;
}

/** What a scope's watchers see: every event of that scope as it is read, for checks (revocations). */
export type EventWatcher = (events: readonly KloudakEvent[]) => void;

class Reader implements EventSubscription {
  lastSent: bigint;
  reset: StreamReset | null = null;
  syncing = true;
  private pending: KloudakEvent[] = [];
  private readonly queue: KloudakEvent[] = [];
  private wake: (() => void) | undefined;
  private done = false;
  private resolveClosed!: (r: CloseReason) => void;
  readonly closed = new Promise<CloseReason>((r) => (this.resolveClosed = r));

  constructor(
    since: bigint,
    private readonly onClose: (r: Reader) => void,
  ) {
    this.lastSent = since;
  }

  /** Events read by the scope: kept aside while this reader catches up, then sent in order. */
  deliver(events: readonly KloudakEvent[]): void {
    if (this.done) return;
    if (this.syncing) {
      this.pending.push(...events);
      return;
    }
    this.send(events);
  }

  /** Send what is after the last event sent (drops duplicates of the catch-up). */
  send(events: readonly KloudakEvent[]): void {
    for (const e of events) {
      if (BigInt(e.seq) <= this.lastSent) continue;
      this.queue.push(e);
      this.lastSent = BigInt(e.seq);
    }
    if (this.queue.length > MAX_QUEUED) this.close('the client reads too slowly');
    this.wake?.();
  }

  /** The catch-up is over: send what arrived meanwhile, then go live. */
  live(): void {
    this.syncing = false;
    const p = this.pending;
    this.pending = [];
    p.sort((a, b) => a.seq - b.seq);
    this.send(p);
  }

  close(reason: CloseReason = 'closed'): void {
    if (this.done) return;
    this.done = true;
    this.onClose(this);
    this.resolveClosed(reason);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<KloudakEvent> {
    try {
      for (;;) {
        while (this.queue.length > 0) yield this.queue.shift()!;
        if (this.done) return;
        await new Promise<void>((r) => (this.wake = r));
        this.wake = undefined;
      }
    } finally {
      this.close();
    }
  }
}

/** The readers and watchers of one scope, and how far the scope has read the outbox. */
class Scope {
  readonly readers = new Set<Reader>();
  readonly watchers = new Set<EventWatcher>();
  private fetching = false;
  private again = false;

  constructor(
    readonly workspaceId: string | null,
    public last: bigint,
    private readonly db: PrismaClient,
    private readonly log: Logger,
  ) {}

  get idle(): boolean {
    return this.readers.size === 0 && this.watchers.size === 0;
  }

  /** Read what the outbox holds after `last` and hand it to every reader and watcher. */
  wake(): void {
    if (this.fetching) {
      this.again = true;
      return;
    }
    this.fetching = true;
    void this.fetch()
      .catch((err: unknown) => this.log.warn({ err, workspace_id: this.workspaceId }, 'reading events failed; retrying at the next wake'))
      .finally(() => {
        this.fetching = false;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  private async fetch(): Promise<void> {
    for (;;) {
      this.again = false;
      const rows = await eventsAfter(this.db, this.workspaceId, this.last, PAGE);
      if (rows.length === 0) return;
      this.last = rows.at(-1)!.seq;
      const events = rows.map(toEvent);
      for (const w of this.watchers) {
        try {
          w(events);
        } catch (err) {
          this.log.error({ err }, 'event watcher failed');
        }
      }
      for (const r of this.readers) r.deliver(events);
      if (rows.length < PAGE) return;
    }
  }
}

/**
 * Fans the outbox out to this orchestrator's event streams (WebSocket, SSE, gRPC WatchEvents).
 *
 * Why readers read the table rather than the NATS messages: the table is the truth and its `seq`
 * order is commit order (store/outbox.ts), so "every event after n" is one indexed query, whatever
 * NATS did meanwhile (a reconnection, a message lost while the relay and this instance were cut
 * off from each other). A JetStream message on a scope's subject — the relay publishes right after
 * commit, from any orchestrator — wakes that scope, which reads once for all its readers; a
 * reconnection and a slow poll wake every scope, so nothing waits longer than `pollMs`.
 *
 * No gap, no duplicate: a reader registers first (what the scope reads from then on is kept
 * aside), then catches up from its `since` in the table, then sends what was kept aside that is
 * after the last event it sent.
 */
export class EventHub {
  private readonly scopes = new Map<string, Scope>();
  private readonly creating = new Map<string, Promise<Scope>>();
  private subs: Subscription[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly deps: { db: PrismaClient; nc: NatsConnection; log: Logger },
    private readonly opts: { pollMs: number },
  ) {}

  /** Subscribe to the event subjects and start the safety poll. */
  start(): void {
    // The event subjects only, never `kloudak.>`: a subscriber there would hear every request
    // between instances (routed commands, up to a console tail each) and, being there, hide an
    // instance that is gone from its requesters (NATS answers "no responders" only when nobody listens).
    this.subs = EVENT_SUBJECTS.map((subject) =>
      this.deps.nc.subscribe(subject, {
        callback: (err, m) => {
          if (err) return;
          const parts = m.subject.split('.');
          const key = parts[1] === 'ws' ? parts[2] : parts[1] === 'infra' ? INFRA : undefined;
          if (key !== undefined) this.scopes.get(key)?.wake();
        },
      }),
    );
    void (async () => {
      for await (const s of this.deps.nc.status()) if (s.type === 'reconnect') this.wakeAll();
    })().catch(() => undefined);
    this.timer = setInterval(() => this.wakeAll(), this.opts.pollMs);
    this.timer.unref();
  }

  private wakeAll(): void {
    for (const s of this.scopes.values()) s.wake();
  }

  private async scope(workspaceId: string | null): Promise<Scope> {
    const key = workspaceId ?? INFRA;
    const have = this.scopes.get(key);
    if (have) return have;
    let p = this.creating.get(key);
    if (!p) {
      p = (async () => {
        // Everything up to the last sequence now is in the table: the scope reads from there on.
        const s = new Scope(workspaceId, await lastSeq(this.deps.db), this.deps.db, this.deps.log);
        this.scopes.set(key, s);
        this.creating.delete(key);
        return s;
      })();
      this.creating.set(key, p);
    }
    return p;
  }

  private release(s: Scope): void {
    if (s.idle) this.scopes.delete(s.workspaceId ?? INFRA);
  }

  /**
   * A stream of one scope's events (a workspace's, or the infrastructure's with null): every
   * retained event after `since`, then the live ones; without `since`, only what comes next.
   */
  async subscribe(workspaceId: string | null, since: bigint | null): Promise<EventSubscription> {
    if (this.closed) throw new Error('the event hub is closed');
    const s = await this.scope(workspaceId);
    const reader = new Reader(since ?? 0n, (r) => {
      s.readers.delete(r);
      this.release(s);
    });
    s.readers.add(reader);
    try {
      // Pruned events cannot be sent: a `since` before the oldest retained one (or after the last
      // one) resets the stream to now rather than silently skipping what is gone.
      const range = since === null ? null : await retainedRange(this.deps.db);
      if (since !== null && range && ((range.oldest !== null && since + 1n < range.oldest) || since > range.last)) {
        reader.reset = { since: Number(since), oldest: range.oldest === null ? null : Number(range.oldest), seq: Number(range.last) };
        reader.lastSent = range.last;
      } else if (since === null) {
        reader.lastSent = await lastSeq(this.deps.db);
      } else {
        for (;;) {
          const rows = await eventsAfter(this.deps.db, workspaceId, reader.lastSent, PAGE);
          reader.send(rows.map(toEvent));
          if (rows.length < PAGE) break;
        }
      }
      reader.live();
    } catch (err) {
      reader.close('failed');
      throw err;
    }
    s.wake();
    return reader;
  }

  /** Call `fn` with each batch of a scope's events from now on, until the returned function is called. */
  async watch(workspaceId: string | null, fn: EventWatcher): Promise<() => void> {
    const s = await this.scope(workspaceId);
    s.watchers.add(fn);
    return () => {
      s.watchers.delete(fn);
      this.release(s);
    };
  }

  /** Streams open now (metrics, tests). */
  get readers(): number {
    let n = 0;
    for (const s of this.scopes.values()) n += s.readers.size;
    return n;
  }

  /** Close every stream (shutdown) and stop listening. */
  close(reason = 'the server is shutting down'): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    for (const sub of this.subs) sub.unsubscribe();
    this.subs = [];
    for (const s of [...this.scopes.values()]) for (const r of [...s.readers]) r.close(reason);
  }
}

const INFRA = '\u0000infra';
