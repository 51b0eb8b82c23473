import { jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import type { Clock } from '../clock.js';
import { markPublished, prunePublished, unpublished } from '../store/outbox.js';
import { EVENT_STREAM, EVENT_SUBJECTS, toEvent } from './event.js';

/**
 * Who may publish, when several orchestrators share the database: a lock only one process holds
 * at a time (PostgreSQL: a session advisory lock on a connection of its own, `SessionLock`).
 * Without one (PGlite: one process), this relay always publishes.
 */
export interface RelayLeadership {
  /** Take the lock if it is free; true when this process holds it. */
  tryAcquire(): Promise<boolean>;
  /** Whether this process still holds it (false once its connection failed). */
  readonly held: boolean;
  /** Give it up, so another relay takes over at its next poll. */
  release(): Promise<void>;
}

/** Key of the advisory lock of the relay that publishes (store/outbox.ts uses 7_212_011_001 for appends). */
export const RELAY_LOCK = 7_212_011_002n;

/** Settings of the {@link OutboxRelay}. */
export interface RelayOptions {
  /** How long the stream keeps an event, and the outbox a published row. */
  maxAgeMs: number;
  /** Look for unpublished rows at least this often (commits also wake it: {@link OutboxRelay.kick}). */
  pollMs: number;
  /** Rows published per round trip. */
  batch?: number;
  /** How long a publish waits for JetStream's acknowledgement. */
  publishTimeoutMs?: number;
}

/**
 * Publishes the outbox to JetStream, in sequence order, and marks what was published.
 *
 * One relay publishes at a time: every orchestrator runs one, and with a {@link RelayLeadership}
 * only its holder publishes (and prunes); the others stand by and try to take it at each poll
 * (`pollMs`), so when the holder stops or dies — PostgreSQL frees a dead session's lock — another
 * one goes on from the oldest unpublished row within a poll interval. Two publishers at once
 * would interleave batches and publish rows twice (the stream's dedupe would drop the copies,
 * but each would be sent and stored in a different order).
 *
 * Why this cannot lose or duplicate: a row is marked only after JetStream acknowledged it, so a
 * crash before the mark publishes it again on the next start, with the same message id
 * (`Nats-Msg-Id` = `<seq>-<row id>`), which the stream drops as a duplicate within its window. A
 * batch is pipelined on one connection (JetStream stores it in order) and only its acknowledged
 * prefix is marked. While NATS is away the rows wait in the table and requests go on; each
 * reconnection, poll or commit retries from the oldest unpublished row.
 */
export class OutboxRelay {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private again = false;
  private closed = false;
  private streamReady = false;
  private lastPrune = 0;
  private failing = false;
  private current: Promise<void> = Promise.resolve();
  private readonly js: JetStreamClient;
  private leading = false;
  private lastTry = -Infinity;

  private constructor(
    private readonly deps: { db: PrismaClient; nc: NatsConnection; jsm: JetStreamManager; log: Logger; clock: Clock; leader?: RelayLeadership | undefined },
    private readonly opts: RelayOptions,
  ) {
    this.js = deps.jsm.jetstream();
  }

  /** Create or update the stream (when NATS is up) and start relaying. */
  static async start(deps: { db: PrismaClient; nc: NatsConnection; log: Logger; clock: Clock; leader?: RelayLeadership | undefined }, opts: RelayOptions): Promise<OutboxRelay> {
    const jsm = await jetstreamManager(deps.nc, { timeout: opts.publishTimeoutMs ?? 5000 });
    const relay = new OutboxRelay({ ...deps, jsm, log: deps.log.child({ component: 'outbox-relay' }) }, opts);
    await relay.ensureStream().catch((err: unknown) => relay.deps.log.warn({ err }, 'event stream not ready yet; retrying with the next publish'));
    void relay.watch();
    relay.timer = setInterval(() => relay.kick(), opts.pollMs);
    relay.timer.unref();
    relay.kick();
    return relay;
  }

  /** Create the stream, or bring its subjects and retention to the configured ones. */
  async ensureStream(): Promise<void> {
    const maxAgeNs = this.opts.maxAgeMs * 1_000_000;
    // Dedupe covers a relay restart; it cannot be longer than the retention.
    const dupNs = Math.min(maxAgeNs, 10 * 60_000 * 1_000_000);
    const want = { subjects: [...EVENT_SUBJECTS], max_age: maxAgeNs, duplicate_window: dupNs };
    try {
      const info = await this.deps.jsm.streams.info(EVENT_STREAM);
      const c = info.config;
      if (c.max_age !== want.max_age || c.duplicate_window !== want.duplicate_window || [...c.subjects].sort().join() !== [...want.subjects].sort().join()) {
        await this.deps.jsm.streams.update(EVENT_STREAM, want);
        this.deps.log.info({ stream: EVENT_STREAM, max_age_ms: this.opts.maxAgeMs }, 'event stream updated');
      }
    } catch (err) {
      if ((err as { name?: string }).name !== 'StreamNotFoundError' && !/stream not found/i.test(String((err as Error).message))) throw err;
      await this.deps.jsm.streams.add({ name: EVENT_STREAM, ...want });
      this.deps.log.info({ stream: EVENT_STREAM, max_age_ms: this.opts.maxAgeMs }, 'event stream created');
    }
    this.streamReady = true;
  }

  private async watch(): Promise<void> {
    for await (const s of this.deps.nc.status()) {
      if (s.type === 'reconnect') this.kick();
    }
  }

  /** Publish what is pending now (a change just committed). */
  kick(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    this.current = this.pump()
      .catch((err: unknown) => {
        // Logged once per outage, not once per poll.
        if (!this.failing) this.deps.log.warn({ err }, 'events not published yet (NATS unavailable?); they stay in the outbox');
        this.failing = true;
        this.streamReady = false;
      })
      .finally(() => {
        this.running = false;
        if (this.again && !this.closed) {
          this.again = false;
          this.kick();
        }
      });
  }

  /** Resolves once nothing is pending (tests, shutdown). */
  async drain(): Promise<void> {
    do {
      await this.current;
    } while (this.running);
  }

  /** Whether this relay publishes now: it holds the lock, or took it (tried at most once a poll interval). */
  private async lead(): Promise<boolean> {
    const leader = this.deps.leader;
    if (!leader) return true;
    if (leader.held) return true;
    if (this.leading) {
      this.leading = false;
      this.deps.log.warn('lost the outbox relay lock (its database connection failed); standing by');
    }
    const now = this.deps.clock.now();
    if (now - this.lastTry < this.opts.pollMs) return false;
    this.lastTry = now;
    let got = false;
    try {
      got = await leader.tryAcquire();
    } catch (err) {
      if (!this.failing) this.deps.log.warn({ err }, 'cannot try the outbox relay lock (database unreachable?)');
      return false;
    }
    if (got) {
      this.leading = true;
      this.deps.log.info('this orchestrator now publishes the outbox');
    }
    return got;
  }

  /** Whether this relay is the one publishing (tests, metrics). */
  get publishing(): boolean {
    return this.deps.leader ? this.deps.leader.held : !this.closed;
  }

  private async pump(): Promise<void> {
    if (!(await this.lead())) return;
    const batch = this.opts.batch ?? 256;
    for (;;) {
      this.again = false;
      const rows = await unpublished(this.deps.db, batch);
      if (rows.length === 0) break;
      // Lost the lock meanwhile (its connection failed): another relay may be publishing now.
      if (this.deps.leader && !this.deps.leader.held) return;
      if (!this.streamReady) await this.ensureStream();
      const acks = await Promise.allSettled(
        rows.map((r) =>
          this.js.publish(r.subject, JSON.stringify(toEvent(r)), { msgID: `${r.seq}-${r.id}`, timeout: this.opts.publishTimeoutMs ?? 5000 }),
        ),
      );
      const done: bigint[] = [];
      for (const [i, a] of acks.entries()) {
        if (a.status !== 'fulfilled') break;
        done.push(rows[i]!.seq);
      }
      await markPublished(this.deps.db, done, new Date(this.deps.clock.now()));
      const failed = acks.find((a) => a.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
      if (this.failing) this.deps.log.info({ published: done.length }, 'events published again');
      this.failing = false;
      if (rows.length < batch) break;
    }
    if (this.deps.clock.now() - this.lastPrune >= Math.min(60_000, this.opts.maxAgeMs)) await this.prune();
  }

  /** Delete published rows older than the retention (the relay does it every minute); returns how many went. */
  async prune(): Promise<number> {
    const now = this.deps.clock.now();
    this.lastPrune = now;
    const n = await prunePublished(this.deps.db, new Date(now - this.opts.maxAgeMs));
    if (n > 0) this.deps.log.debug({ pruned: n }, 'published events pruned');
    return n;
  }

  /** Stop relaying and give the lock up (what is pending is published by another relay, or the next start). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.current.catch(() => undefined);
    await this.deps.leader?.release();
    this.leading = false;
  }
}
