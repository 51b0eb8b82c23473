// Hosts whose session owner vanished: the leader's judgement of when they are down.
import { monotonicNow, type Clock } from '../clock.js';
import type { OrphanCandidate } from '../store/instances.js';

/** A host whose owner vanished and whose last possible lease has surely ended. */
export interface OrphanDue {
  hostId: string;
  ownerInstanceId: string | null;
  /** Wall time at which the leader first saw the owner gone (ms since the epoch). */
  seenAt: number;
}

interface Watch {
  owner: string | null;
  /** Monotonic time of the first sweep that saw the owner gone. */
  seenMono: number;
  seenAt: number;
}

/**
 * Pure bookkeeping of the leader's sweep over hosts that are up or suspect while no live instance
 * owns them (their owner's registration expired: it died, or lost the database).
 *
 * Why down is counted from the FIRST SIGHT of the expiry, plus the lease and the margin: an
 * instance grants no lease once its registration lapsed (ha/instance.ts), and the row is seen
 * expired only after that; so when the leader first sees it, the owner's last grant was already
 * made, and that lease surely ended a lease plus a margin later. This never needs the instances'
 * clocks to agree (only the database's clock and this process's monotonic one), and a new leader
 * simply starts counting again: later, never earlier.
 */
export class OrphanWatch {
  private readonly hosts = new Map<string, Watch>();

  constructor(
    private readonly clock: Clock,
    private readonly timings: { leaseMs: number; downMarginMs: number },
  ) {}

  /**
   * One sweep: `candidates` are the hosts now up or suspect with no live owner. Returns those due
   * to be marked down. A host no longer a candidate (claimed, down, deleted) is forgotten; a
   * different owner restarts its count.
   */
  observe(candidates: readonly OrphanCandidate[]): OrphanDue[] {
    const mono = monotonicNow(this.clock);
    const now = this.clock.now();
    const seen = new Set<string>();
    const due: OrphanDue[] = [];
    for (const c of candidates) {
      seen.add(c.hostId);
      let w = this.hosts.get(c.hostId);
      if (!w || w.owner !== c.ownerInstanceId) {
        w = { owner: c.ownerInstanceId, seenMono: mono, seenAt: now };
        this.hosts.set(c.hostId, w);
      }
      if (mono >= w.seenMono + this.timings.leaseMs + this.timings.downMarginMs) due.push({ hostId: c.hostId, ownerInstanceId: w.owner, seenAt: w.seenAt });
    }
    for (const id of this.hosts.keys()) if (!seen.has(id)) this.hosts.delete(id);
    return due;
  }

  /** When a host watched now becomes due (wall time), or undefined. */
  dueAt(hostId: string): number | undefined {
    const w = this.hosts.get(hostId);
    if (!w) return undefined;
    return this.clock.now() + (w.seenMono + this.timings.leaseMs + this.timings.downMarginMs - monotonicNow(this.clock));
  }

  /** Forget everything (leadership lost: the next leader counts from its own first sight). */
  reset(): void {
    this.hosts.clear();
  }

  /** Hosts being watched. */
  get size(): number {
    return this.hosts.size;
  }
}
