// The sweeps only the leader runs: hosts whose session owner vanished, and old registrations.
import type { Logger } from '@kloudak/common';
import type { PrismaClient } from '@kloudak/prisma';
import type { Clock } from '../clock.js';
import { deleteStaleInstances, orphanedHosts } from '../store/instances.js';
import type { LeadershipPort } from './leader.js';
import { OrphanWatch } from './orphans.js';

/** Registrations expired for longer than this, owning no host, are deleted. */
export const STALE_INSTANCE_MS = 24 * 3600_000;

/** Settings of {@link LeaderSweeps}. */
export interface LeaderSweepOptions {
  leaseMs: number;
  downMarginMs: number;
  /** How often the orphan sweep runs (default 1 s). */
  sweepMs?: number;
}

/** Where the leader's verdicts go: the agent link's one write path for host states. */
export interface OrphanTarget {
  markOrphanDown(hostId: string, ownerInstanceId: string | null): void;
}

/**
 * Runs while this instance leads: every sweep reads the hosts up or suspect with no live owner
 * and marks down those whose last possible lease surely ended ({@link OrphanWatch}). Losing
 * leadership forgets the counts (a new leader starts its own, later, never earlier).
 */
export class LeaderSweeps {
  readonly orphans: OrphanWatch;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private lastGc = -Infinity;
  private readonly log: Logger;
  private readonly unsubscribes: (() => void)[] = [];

  constructor(
    private readonly deps: { db: PrismaClient; clock: Clock; log: Logger; leader: LeadershipPort; target: OrphanTarget },
    private readonly opts: LeaderSweepOptions,
  ) {
    this.orphans = new OrphanWatch(deps.clock, { leaseMs: opts.leaseMs, downMarginMs: opts.downMarginMs });
    this.log = deps.log.child({ component: 'leader-sweeps' });
  }

  start(): void {
    if (this.timer) return;
    this.unsubscribes.push(
      this.deps.leader.onElected(() => {
        this.orphans.reset();
        void this.sweep();
      }),
      this.deps.leader.onDeposed(() => this.orphans.reset()),
    );
    this.timer = setInterval(() => void this.sweep(), this.opts.sweepMs ?? 1000);
    this.timer.unref();
  }

  /** One sweep now, when leader (the timer calls it; tests may too). */
  sweep(): Promise<void> {
    if (this.running) return this.running;
    const p = this.sweepOnce().finally(() => {
      if (this.running === p) this.running = undefined;
    });
    this.running = p;
    return p;
  }

  private async sweepOnce(): Promise<void> {
    try {
      if (!this.deps.leader.isLeader()) return;
      const candidates = await orphanedHosts(this.deps.db);
      if (!this.deps.leader.isLeader()) return;
      for (const d of this.orphans.observe(candidates)) {
        this.log.warn({ host_id: d.hostId, owner_instance_id: d.ownerInstanceId, owner_gone_since: new Date(d.seenAt).toISOString() }, "host's session owner vanished and its last lease surely ended: down");
        this.deps.target.markOrphanDown(d.hostId, d.ownerInstanceId);
      }
      const now = this.deps.clock.now();
      if (now - this.lastGc > 60_000) {
        this.lastGc = now;
        const n = await deleteStaleInstances(this.deps.db, STALE_INSTANCE_MS);
        if (n > 0) this.log.info({ deleted: n }, 'old instance registrations deleted');
      }
    } catch (err) {
      this.log.warn({ err }, 'leader sweep failed');
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const u of this.unsubscribes) u();
    await this.running;
  }
}
