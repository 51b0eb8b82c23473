// Which orchestrator instance holds each host's session, as every instance knows it: read from
// the database every few seconds, and updated at once by the instances' NATS announcements
// (session-announcer.ts).
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import { openSessions } from '../store/instances.js';

/** Where a host's session is: the instance, its command subject, and the session's epoch. */
export interface SessionHolder {
  instanceId: string;
  subject: string;
  epoch: bigint;
}

/** A change in the directory: the host's session is now at `holder` (undefined: none known). */
export type DirectoryListener = (hostId: string, holder: SessionHolder | undefined) => void;

/** What this instance tells the others of its own sessions (session-announcer.ts). */
export type SessionAnnouncement = { hostId: string; epoch: bigint } & ({ open: true; holder: SessionHolder } | { open: false });

/**
 * The sessions open on live instances (this one's included), for `connected` (placement, the
 * API) and for routing commands. Epochs order what is learned: an announcement or a read never
 * replaces what a newer session announced.
 */
export class SessionDirectory {
  private readonly hosts = new Map<string, SessionHolder & { learnedAt: number }>();
  private readonly listeners = new Set<DirectoryListener>();
  private refreshing: Promise<void> | undefined;
  private reads = 0;
  private announce: ((a: SessionAnnouncement) => void) | undefined;

  constructor(private readonly deps: { db: PrismaClient; log: Logger }) {}

  /** The instance holding `hostId`'s session, if one is known. */
  holder(hostId: string): SessionHolder | undefined {
    const h = this.hosts.get(hostId);
    return h ? { instanceId: h.instanceId, subject: h.subject, epoch: h.epoch } : undefined;
  }

  /** Call `fn` on every change. Returns an unsubscribe. */
  onChange(fn: DirectoryListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Where this instance's own session changes are told (the NATS announcer). */
  announceWith(fn: ((a: SessionAnnouncement) => void) | undefined): void {
    this.announce = fn;
  }

  /** This instance opened a session: known here at once, and announced to the others. */
  ownOpened(hostId: string, holder: SessionHolder): void {
    this.opened(hostId, holder);
    this.announce?.({ hostId, epoch: holder.epoch, open: true, holder });
  }

  /** This instance's session of `epoch` closed: forgotten here, and announced. */
  ownClosed(hostId: string, epoch: bigint): void {
    this.closed(hostId, epoch);
    this.announce?.({ hostId, epoch, open: false });
  }

  /** A session opened (announced, or read from the database). */
  opened(hostId: string, holder: SessionHolder): void {
    const cur = this.hosts.get(hostId);
    if (cur && cur.epoch > holder.epoch) return;
    this.hosts.set(hostId, { ...holder, learnedAt: this.reads });
    if (!cur || cur.instanceId !== holder.instanceId || cur.epoch !== holder.epoch) this.emit(hostId, holder);
  }

  /** A session of `epoch` closed (a newer one is left alone). */
  closed(hostId: string, epoch: bigint): void {
    const cur = this.hosts.get(hostId);
    if (!cur || cur.epoch > epoch) return;
    this.hosts.delete(hostId);
    this.emit(hostId, undefined);
  }

  /** A host was deleted. */
  forget(hostId: string): void {
    if (this.hosts.delete(hostId)) this.emit(hostId, undefined);
  }

  /** Read the open sessions from the database; concurrent calls share one read. */
  refresh(): Promise<void> {
    return (this.refreshing ??= (async () => {
      const read = ++this.reads;
      try {
        const rows = await openSessions(this.deps.db);
        const seen = new Set<string>();
        for (const r of rows) {
          seen.add(r.hostId);
          this.opened(r.hostId, { instanceId: r.instanceId, subject: r.subject, epoch: r.epoch });
        }
        // Gone from the database (closed, or its instance expired) unless announced during the read.
        for (const [id, h] of this.hosts) {
          if (!seen.has(id) && h.learnedAt < read) {
            this.hosts.delete(id);
            this.emit(id, undefined);
          }
        }
      } catch (err) {
        this.deps.log.warn({ component: 'sessions', err }, 'could not read the open sessions');
      } finally {
        this.refreshing = undefined;
      }
    })());
  }

  private emit(hostId: string, holder: SessionHolder | undefined): void {
    for (const fn of this.listeners) {
      try {
        fn(hostId, holder);
      } catch (err) {
        this.deps.log.error({ component: 'sessions', err }, 'session directory listener failed');
      }
    }
  }
}
