/**
 * Session announcements between orchestrator instances (core NATS, never stored): each instance
 * publishes its own sessions' opening and closing, and applies the others' to its
 * {@link SessionDirectory}. Without them another instance learns where a host's session went only
 * at its next database read (every 2 s): its API shows the host disconnected meanwhile, and the
 * commands it routes go to the old holder first.
 *
 * Announcements only speed things up: the periodic read of the database stays the truth, so a
 * lost or late announcement (NATS down, an instance that just started) is corrected by it, and
 * the directory's epochs keep an old announcement from replacing a newer session.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '@kloudak/common';
import type { SessionAnnouncement, SessionDirectory } from './directory.js';

/** Where the instances announce their sessions. */
export const SESSION_SUBJECT = 'kloudak.ha.sessions';

interface Wire {
  hostId: string;
  instanceId: string;
  /** Decimal: a bigint in JSON. */
  epoch: string;
  open: boolean;
  /** The holder's command subject (open only). */
  subject?: string;
}

/** An announcement from another instance, or null when malformed (then ignored). */
export function parseAnnouncement(data: unknown): Wire | null {
  if (typeof data !== 'object' || data === null) return null;
  const o = data as Record<string, unknown>;
  const str = (v: unknown, max: number): v is string => typeof v === 'string' && v.length > 0 && v.length <= max;
  if (!str(o['hostId'], 64) || !str(o['instanceId'], 64) || !str(o['epoch'], 20) || !/^[0-9]+$/.test(o['epoch']) || typeof o['open'] !== 'boolean') return null;
  if (o['open'] && !str(o['subject'], 256)) return null;
  return { hostId: o['hostId'], instanceId: o['instanceId'], epoch: o['epoch'], open: o['open'], ...(o['open'] ? { subject: o['subject'] as string } : {}) };
}

/** See the module comment. */
export class SessionAnnouncer {
  private sub: Subscription | undefined;
  private readonly log: Logger;

  constructor(private readonly deps: { nc: NatsConnection | undefined; directory: SessionDirectory; instanceId: string; log: Logger }) {
    this.log = deps.log.child({ component: 'sessions' });
  }

  /** Listen to the others and announce this instance's own changes. */
  start(): void {
    const nc = this.deps.nc;
    if (!nc || this.sub) return;
    this.sub = nc.subscribe(SESSION_SUBJECT, {
      callback: (err, msg) => {
        if (err) return;
        let w: Wire | null;
        try {
          w = parseAnnouncement(msg.json());
        } catch {
          w = null;
        }
        if (!w) {
          this.log.warn({ subject: msg.subject }, 'malformed session announcement ignored');
          return;
        }
        if (w.instanceId === this.deps.instanceId) return;
        const epoch = BigInt(w.epoch);
        if (w.open) this.deps.directory.opened(w.hostId, { instanceId: w.instanceId, subject: w.subject!, epoch });
        else this.deps.directory.closed(w.hostId, epoch);
      },
    });
    this.deps.directory.announceWith((a) => this.publish(a));
  }

  /** Stop listening and announcing. */
  stop(): void {
    this.deps.directory.announceWith(undefined);
    this.sub?.unsubscribe();
    this.sub = undefined;
  }

  private publish(a: SessionAnnouncement): void {
    const nc = this.deps.nc;
    if (!nc || nc.isClosed()) return;
    const w: Wire = { hostId: a.hostId, instanceId: this.deps.instanceId, epoch: a.epoch.toString(), open: a.open, ...(a.open ? { subject: a.holder.subject } : {}) };
    try {
      nc.publish(SESSION_SUBJECT, JSON.stringify(w));
    } catch (err) {
      // The database read corrects the others' directories within seconds.
      this.log.debug({ err, host_id: a.hostId }, 'could not announce a session change');
    }
  }
}
