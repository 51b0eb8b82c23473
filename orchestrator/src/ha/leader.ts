// Leadership among orchestrator instances: exactly one runs the sweeps that belong to a single
// instance (hosts whose owner vanished, stale registrations; failover's evacuations hook on it).
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import { monotonicNow, systemClock, type Clock } from '../clock.js';
import { acquireLeadership, releaseLeadership } from '../store/instances.js';

/** The leadership every orchestrator competes for. */
export const LEADER_NAME = 'orchestrator';

/** Settings of a {@link Leader}. */
export interface LeaderOptions {
  /** How long one renewal keeps leadership; a dead leader's successor takes over within about this. */
  ttlMs: number;
  /** How often the holder renews and the others try; default a quarter of the TTL. */
  renewMs?: number;
  /** Leadership row name (tests may run separate elections). */
  name?: string;
}

/** What other components see of leadership. */
export interface LeadershipPort {
  /** True while this instance is the leader (checked against the clock: false as soon as the lease may have passed). */
  isLeader(): boolean;
  /** The term of the current leadership (grows with each new leader), or null when not leader. */
  term(): bigint | null;
  /** Call `fn` on becoming leader (at once if already). Returns an unsubscribe. */
  onElected(fn: (term: bigint) => void): () => void;
  /** Call `fn` on losing leadership (a failed renewal, shutdown). Returns an unsubscribe. */
  onDeposed(fn: () => void): () => void;
}

/**
 * Leadership as a lease row in the database (LeaderLease), the same on PostgreSQL and PGlite.
 * Why a lease and not an advisory lock: it needs no dedicated connection, behaves the same on
 * both engines, and a leader cut off from the database deposes itself on its own clock, before
 * anyone else can take the row: validity is counted from when each renewal was SENT (the row's
 * expiry is counted from when the database ran it, never earlier), and a successor needs the
 * row expired on the database's clock.
 * A SIGKILLed leader is replaced within the TTL plus one attempt interval; a clean close releases
 * at once.
 */
export class Leader implements LeadershipPort {
  private validUntil = -Infinity;
  private currentTerm: bigint | null = null;
  private timer: NodeJS.Timeout | undefined;
  private lapseTimer: NodeJS.Timeout | undefined;
  private attempt: Promise<void> | undefined;
  private closed = false;
  private readonly elected = new Set<(term: bigint) => void>();
  private readonly deposed = new Set<() => void>();
  private readonly log: Logger;
  private readonly name: string;

  constructor(
    private readonly deps: { db: PrismaClient; log: Logger; clock?: Clock },
    /** This instance's id (ha/instance.ts). */
    readonly instanceId: string,
    private readonly opts: LeaderOptions,
  ) {
    this.name = opts.name ?? LEADER_NAME;
    this.log = deps.log.child({ component: 'leader', instance_id: instanceId });
  }

  private get clock(): Clock {
    return this.deps.clock ?? systemClock;
  }

  /** Try now, then renew or retry every renewMs. */
  start(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => void this.tryOnce(), this.opts.renewMs ?? Math.max(20, Math.floor(this.opts.ttlMs / 4)));
    this.timer.unref();
    void this.tryOnce();
  }

  isLeader(): boolean {
    return this.currentTerm !== null && !this.closed && monotonicNow(this.clock) < this.validUntil;
  }

  term(): bigint | null {
    return this.isLeader() ? this.currentTerm : null;
  }

  onElected(fn: (term: bigint) => void): () => void {
    this.elected.add(fn);
    if (this.isLeader() && this.currentTerm !== null) fn(this.currentTerm);
    return () => this.elected.delete(fn);
  }

  onDeposed(fn: () => void): () => void {
    this.deposed.add(fn);
    return () => this.deposed.delete(fn);
  }

  /** One attempt to take or renew leadership (the timer calls it; tests may too). */
  tryOnce(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return (this.attempt ??= (async () => {
      const sent = monotonicNow(this.clock);
      try {
        const term = await acquireLeadership(this.deps.db, this.name, this.instanceId, this.opts.ttlMs);
        if (this.closed) return;
        if (term === null) {
          // Someone else holds it: if this instance thought it led, it does not any more.
          if (this.currentTerm !== null) this.depose('another instance holds leadership');
          return;
        }
        if (this.currentTerm !== null && (term !== this.currentTerm || !this.isLeader())) this.depose('leadership lapsed meanwhile');
        const wasLeader = this.isLeader();
        this.validUntil = sent + this.opts.ttlMs;
        this.armLapse();
        if (!wasLeader) {
          if (monotonicNow(this.clock) >= this.validUntil) return; // the answer came too late to use
          this.currentTerm = term;
          this.log.info({ term: String(term) }, 'elected leader');
          for (const fn of this.elected) this.call(() => fn(term));
        }
      } catch (err) {
        this.log.warn({ err, leader: this.currentTerm !== null }, 'leadership attempt failed');
      } finally {
        this.attempt = undefined;
      }
    })());
  }

  /** Stop competing; a leader releases the row so the next instance takes over at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    clearInterval(this.timer);
    await this.attempt?.catch(() => undefined);
    this.closed = true;
    clearTimeout(this.lapseTimer);
    const was = this.currentTerm !== null;
    if (was) this.depose('shutting down');
    if (was) await releaseLeadership(this.deps.db, this.name, this.instanceId).catch((err: unknown) => this.log.warn({ err }, 'could not release leadership'));
  }

  private depose(why: string): void {
    if (this.currentTerm === null) return;
    this.log.warn({ term: String(this.currentTerm), why }, 'no longer leader');
    this.currentTerm = null;
    this.validUntil = -Infinity;
    clearTimeout(this.lapseTimer);
    for (const fn of this.deposed) this.call(fn);
  }

  /** Depose at the end of validity unless a renewal moved it. */
  private armLapse(): void {
    clearTimeout(this.lapseTimer);
    this.lapseTimer = setTimeout(() => {
      if (this.currentTerm !== null && monotonicNow(this.clock) >= this.validUntil) this.depose('leadership lease ran out without renewal');
      else if (this.currentTerm !== null) this.armLapse();
    }, Math.max(1, this.validUntil - monotonicNow(this.clock) + 1));
    this.lapseTimer.unref();
  }

  private call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err }, 'leadership listener failed');
    }
  }
}
