// This orchestrator process's registration in the database (OrchestratorInstance): the identity
// that owns host sessions, renewed in one small write every few seconds — never on the heartbeat
// path. While the registration is valid the instance may grant leases; past it, it must not.
import { randomUUID } from 'node:crypto';
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import { monotonicNow, systemClock, type Clock } from '../clock.js';
import { expireInstance, renewInstance } from '../store/instances.js';

/** NATS subject prefix of the instances' command inboxes (core NATS, never in KLOUDAK_EVENTS). */
export const INSTANCE_SUBJECT_PREFIX = 'kloudak.internal.agent';

/** Settings of an {@link InstanceRegistration}. */
export interface InstanceOptions {
  /** How long one renewal keeps the registration valid. */
  ttlMs: number;
  /** How often it is renewed; default a sixth of the TTL (so a database stall of most of the TTL is survived). */
  renewMs?: number;
}

/**
 * The registration of this process. Why the instance stops granting leases when it cannot renew:
 * the leader declares the hosts of an expired instance down after the lease plus a margin counted
 * from when it saw the expiry; that is safe only if an expired instance grants nothing. So
 * validity is measured here on the monotonic clock from the moment each renewal was SENT (the row's
 * expiry, taken from the database's clock when the statement runs, is never earlier), and
 * {@link valid} turns false at the end of it even if the database never answers.
 */
export class InstanceRegistration {
  /** This process's instance id (a new one each start). */
  readonly id: string;
  /** Where this instance takes commands for the hosts it holds (ha/router). */
  readonly subject: string;
  private validUntil = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private lapseTimer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;
  private closed = false;
  private readonly lapseListeners = new Set<() => void>();
  private readonly log: Logger;

  constructor(
    private readonly deps: { db: PrismaClient; log: Logger; clock?: Clock },
    private readonly opts: InstanceOptions,
    id: string = randomUUID(),
  ) {
    this.id = id;
    this.subject = `${INSTANCE_SUBJECT_PREFIX}.${id}`;
    this.log = deps.log.child({ component: 'instance', instance_id: id });
  }

  private get clock(): Clock {
    return this.deps.clock ?? systemClock;
  }

  /** Register (awaited: an instance that cannot register cannot hold sessions) and renew periodically. */
  async start(): Promise<void> {
    await this.renew();
    if (!this.valid()) throw new Error('could not register this orchestrator instance');
    this.timer = setInterval(() => void this.renew(), this.opts.renewMs ?? Math.max(50, Math.floor(this.opts.ttlMs / 6)));
    this.timer.unref();
    this.log.info({ ttl_ms: this.opts.ttlMs }, 'orchestrator instance registered');
  }

  /** True while the last successful renewal still covers now: leases may be granted. */
  valid(): boolean {
    return !this.closed && monotonicNow(this.clock) < this.validUntil;
  }

  /** Call `fn` when the registration lapses (renewals failed for a whole TTL). Returns an unsubscribe. */
  onLapse(fn: () => void): () => void {
    this.lapseListeners.add(fn);
    return () => this.lapseListeners.delete(fn);
  }

  /** Renew now (also called by the timer); concurrent calls share one write. */
  renew(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return (this.renewing ??= (async () => {
      const sent = monotonicNow(this.clock);
      try {
        await renewInstance(this.deps.db, this.id, this.subject, this.opts.ttlMs);
        if (this.closed) return;
        this.validUntil = Math.max(this.validUntil, sent + this.opts.ttlMs);
        this.armLapse();
      } catch (err) {
        this.log.warn({ err, valid_for_ms: Math.max(0, Math.round(this.validUntil - monotonicNow(this.clock))) }, 'could not renew the instance registration');
      } finally {
        this.renewing = undefined;
      }
    })());
  }

  /** Stop renewing and expire the row at once (call after the last lease was granted). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.lapseTimer);
    await this.renewing?.catch(() => undefined);
    await expireInstance(this.deps.db, this.id).catch((err: unknown) => this.log.warn({ err }, 'could not expire the instance registration'));
  }

  private armLapse(): void {
    clearTimeout(this.lapseTimer);
    const left = this.validUntil - monotonicNow(this.clock);
    this.lapseTimer = setTimeout(() => {
      if (this.closed || this.valid()) {
        if (!this.closed) this.armLapse();
        return;
      }
      this.log.error({}, 'instance registration lapsed (database unreachable?): no lease is granted until it is renewed');
      for (const fn of this.lapseListeners) fn();
    }, Math.max(1, left + 1));
    this.lapseTimer.unref();
  }
}
