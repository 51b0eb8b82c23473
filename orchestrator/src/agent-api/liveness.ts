import { monotonicNow, type Clock } from '../clock.js';

/** Liveness states the agent link drives (Host.state; `fenced` is set by failover, later). */
export type LiveState = 'unknown' | 'up' | 'suspect' | 'down';

/** A change of a host's liveness. */
export interface Transition {
  hostId: string;
  from: LiveState;
  to: LiveState;
  /** Clock time of the change (ms since the epoch). */
  at: number;
}

/** Timings of {@link Liveness}. */
export interface LivenessTimings {
  heartbeatIntervalMs: number;
  /** Margin after the last granted lease surely ended before a host is down. */
  downMarginMs: number;
}

interface Entry {
  state: LiveState;
  /** Wall time of the last heartbeat (shown and stored, never used for a deadline). */
  lastHeartbeatAt: number;
  /** Monotonic time of the last heartbeat. */
  heartbeatMono: number;
  /** When (monotonic) the last lease was granted (sent), and for how long. */
  lastGrantAt: number;
  lastGrantMs: number;
}

/** Heartbeat intervals without a heartbeat after which a host is suspect. */
export const SUSPECT_AFTER_INTERVALS = 3;

/**
 * In-memory liveness of hosts (AGENT-LINK.md, "Liveness on the orchestrator"):
 * `up` while heartbeats arrive; `suspect` after 3 intervals without one; `down` once the last
 * lease granted has surely expired (grant time + duration + margin), and only then. Pure
 * bookkeeping over an injected clock: the caller applies the transitions (database, NATS) and
 * calls {@link tick} periodically, so tests drive time by hand. Deadlines are measured on the
 * clock's monotonic time: a step of the wall clock (NTP) neither hastens nor delays a verdict.
 */
export class Liveness {
  private readonly hosts = new Map<string, Entry>();

  constructor(
    private readonly clock: Clock,
    private readonly timings: LivenessTimings,
  ) {}

  /** Current state of a host as this process sees it; `unknown` if never seen. */
  state(hostId: string): LiveState {
    return this.hosts.get(hostId)?.state ?? 'unknown';
  }

  /** When the last heartbeat (or Hello) of a host arrived, ms since the epoch. */
  lastHeartbeatAt(hostId: string): number | undefined {
    return this.hosts.get(hostId)?.lastHeartbeatAt;
  }

  /**
   * Track a host that another process (or an earlier run) may have granted a lease to, as if a
   * full lease had been granted now: it cannot be declared down before that lease surely ended.
   */
  adopt(hostId: string, state: LiveState, leaseMs: number): void {
    if (this.hosts.has(hostId)) return;
    const mono = monotonicNow(this.clock);
    this.hosts.set(hostId, { state, lastHeartbeatAt: this.clock.now(), heartbeatMono: mono, lastGrantAt: mono, lastGrantMs: leaseMs });
  }

  /** A Hello or a heartbeat arrived: the host is up. Returns the transition, if any. */
  alive(hostId: string): Transition | null {
    const now = this.clock.now();
    const mono = monotonicNow(this.clock);
    const e = this.hosts.get(hostId);
    if (!e) {
      this.hosts.set(hostId, { state: 'up', lastHeartbeatAt: now, heartbeatMono: mono, lastGrantAt: -Infinity, lastGrantMs: 0 });
      return { hostId, from: 'unknown', to: 'up', at: now };
    }
    e.lastHeartbeatAt = now;
    e.heartbeatMono = mono;
    if (e.state === 'up') return null;
    const from = e.state;
    e.state = 'up';
    return { hostId, from, to: 'up', at: now };
  }

  /** A lease was granted (sent) now for `durationMs`. */
  granted(hostId: string, durationMs: number): void {
    const e = this.hosts.get(hostId);
    if (!e) return;
    e.lastGrantAt = monotonicNow(this.clock);
    e.lastGrantMs = durationMs;
  }

  /** The last lease granted to a host: when (wall time, ms since the epoch) and for how long; undefined if none. */
  lastGrant(hostId: string): { at: number; durationMs: number } | undefined {
    const e = this.hosts.get(hostId);
    if (!e || e.lastGrantAt === -Infinity) return undefined;
    return { at: this.clock.now() - (monotonicNow(this.clock) - e.lastGrantAt), durationMs: e.lastGrantMs };
  }

  /**
   * How long the last lease granted to a host still runs, by this process's clock (ms; 0 or less:
   * over), or undefined when none was granted. The agent's own lease ends no later (it counts from
   * when it sent the heartbeat).
   */
  leaseLeftMs(hostId: string): number | undefined {
    const e = this.hosts.get(hostId);
    if (!e || e.lastGrantAt === -Infinity) return undefined;
    return e.lastGrantAt + e.lastGrantMs - monotonicNow(this.clock);
  }

  /** The margin after a lease before a host is down. */
  get downMarginMs(): number {
    return this.timings.downMarginMs;
  }

  /** When the last granted lease surely ends (wall time, ms since the epoch), or undefined. */
  downAt(hostId: string): number | undefined {
    const e = this.hosts.get(hostId);
    if (!e || e.lastGrantAt === -Infinity) return undefined;
    return this.clock.now() + (e.lastGrantAt + e.lastGrantMs + this.timings.downMarginMs - monotonicNow(this.clock));
  }

  /** Stop tracking a host (deleted). */
  forget(hostId: string): void {
    this.hosts.delete(hostId);
  }

  /** Evaluate every host against the clock; returns the transitions made. */
  tick(): Transition[] {
    const now = this.clock.now();
    const mono = monotonicNow(this.clock);
    const out: Transition[] = [];
    for (const [hostId, e] of this.hosts) {
      if (e.state === 'down' || e.state === 'unknown') continue;
      // Down is judged on the lease alone: a host is never down while a lease it holds may still run.
      if (mono >= e.lastGrantAt + e.lastGrantMs + this.timings.downMarginMs) {
        out.push({ hostId, from: e.state, to: 'down', at: now });
        e.state = 'down';
      } else if (e.state === 'up' && mono - e.heartbeatMono >= SUSPECT_AFTER_INTERVALS * this.timings.heartbeatIntervalMs) {
        out.push({ hostId, from: 'up', to: 'suspect', at: now });
        e.state = 'suspect';
      }
    }
    return out;
  }
}
