/**
 * The agent's lease (AGENT-LINK.md, "The lease"). A grant answering heartbeat N extends the lease
 * to *the monotonic time heartbeat N was sent* + min(grant, the agent's own maximum): measuring
 * from the send time, never from the grant's arrival, keeps the agent's lease ending no later than
 * the orchestrator's view of it, however long the grant took to arrive. When the lease runs out
 * without a new grant, `onExpire` is called once (again only after a later grant re-arms it).
 *
 * A provisional lease (a starting agent's, {@link Lease.startProvisional}) lasts only until the
 * first grant, which replaces it even when it ends sooner: the orchestrator restarts this host's
 * VMs elsewhere once its own grants have run out (plus its margin), and knows nothing of the
 * provisional lease — held past the grants (up to `maxMs` when no earlier lease is recorded, while
 * the orchestrator may grant less), it would keep HA VMs running after their restart elsewhere.
 */

/** Monotonic time and timers, injectable for tests. */
export interface LeaseClock {
  /** Monotonic milliseconds (performance.now()). */
  now(): number;
  /** Wall-clock milliseconds (Date.now()), for records only. */
  wallNow(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

/** The real clock. */
export const systemLeaseClock: LeaseClock = {
  now: () => performance.now(),
  wallNow: () => Date.now(),
  setTimer: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t;
  },
  clearTimer: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Details of an expiry. */
export interface LeaseExpiry {
  /** Monotonic time the lease ended. */
  expiredAtMono: number;
  /** The same instant by the wall clock. */
  expiredAt: Date;
}

/** Options of {@link Lease}. */
export interface LeaseOptions {
  /** The agent's upper bound of any grant (KLOUDAK_AGENT_FENCE_LEASE_MS). */
  maxMs: number;
  clock?: LeaseClock;
  onExpire: (e: LeaseExpiry) => void;
  /**
   * Called with the new monotonic end each time the lease is extended or armed (the fence guard
   * and the lease state file follow it: fence/guard.ts, fence/lease-state.ts).
   */
  onChange?: (expiresAtMono: number) => void;
}

/** See the module comment. */
export class Lease {
  private readonly clock: LeaseClock;
  /** Send times (monotonic) of this session's messages a grant may answer: 0 = Hello, N = heartbeat N. */
  private sentAt = new Map<bigint, number>();
  private expiresAtMono: number | null = null;
  private timer: unknown = null;
  private fired = false;
  private stopped = false;
  /** The lease is provisional: no grant has come since {@link startProvisional}. */
  private provisional = false;

  constructor(private readonly o: LeaseOptions) {
    this.clock = o.clock ?? systemLeaseClock;
  }

  /** Monotonic end of the lease, or null when none was ever held. */
  get expiresAt(): number | null {
    return this.expiresAtMono;
  }

  /** Whether the lease is held now. */
  get valid(): boolean {
    return this.expiresAtMono !== null && this.clock.now() < this.expiresAtMono;
  }

  /** Milliseconds left (negative once expired), or null without a lease. */
  remainingMs(): number | null {
    return this.expiresAtMono === null ? null : this.expiresAtMono - this.clock.now();
  }

  /**
   * A lease held by nobody, of `maxMs` from now or `ms` when given (never more than `maxMs`): at
   * start-up the previous agent process may have held a lease, so VMs it ran must be fenced if no
   * grant comes before that lease's end (fence/lease-state.ts tells it; `maxMs` when it cannot).
   * 0 expires at once.
   */
  startProvisional(ms?: number): void {
    if (this.stopped) return;
    const length = Math.min(Math.max(0, ms ?? this.o.maxMs), this.o.maxMs);
    this.expiresAtMono = this.clock.now() + length;
    this.fired = false;
    this.provisional = true;
    this.o.onChange?.(this.expiresAtMono);
    this.arm();
  }

  /** A new session: sequence numbers start again. */
  newSession(): void {
    this.sentAt = new Map();
  }

  /** Records the send time of Hello (sequence 0) or heartbeat `seq`. */
  noteSent(seq: bigint): void {
    this.sentAt.set(seq, this.clock.now());
  }

  /**
   * Applies a grant for `seq`. Returns false when `seq` was never sent in this session (the grant
   * is ignored: nothing tells when its lease began).
   */
  grant(seq: bigint, durationMs: number): boolean {
    const sent = this.sentAt.get(seq);
    if (sent === undefined) return false;
    for (const s of this.sentAt.keys()) if (s <= seq) this.sentAt.delete(s);
    const until = sent + Math.min(Math.max(0, durationMs), this.o.maxMs);
    if (this.provisional) this.replaceProvisional(until);
    else this.extendTo(until);
    return true;
  }

  /** Whether the lease is still the provisional one (no grant since the start). */
  get isProvisional(): boolean {
    return this.provisional;
  }

  /** Stops the timer for good (agent shutdown). */
  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = null;
  }

  private extendTo(until: number): void {
    if (this.stopped) return;
    // A grant never shortens the lease: an older heartbeat's grant arriving late changes nothing.
    if (this.expiresAtMono !== null && until <= this.expiresAtMono) return;
    this.expiresAtMono = until;
    this.o.onChange?.(until);
    // Already over (a grant that took longer than the lease to arrive): the armed timer, if any,
    // reports the expiry; nothing is re-armed.
    if (this.clock.now() >= until) return;
    this.fired = false;
    this.arm();
  }

  /** The first grant: the lease ends where it says, sooner or later than the provisional one. */
  private replaceProvisional(until: number): void {
    if (this.stopped) return;
    this.provisional = false;
    this.expiresAtMono = until;
    this.o.onChange?.(until);
    // Still ahead: armed again. Already over (the grant took longer than its lease to arrive):
    // the expiry is reported now, unless the provisional lease's was already.
    if (this.clock.now() < until) this.fired = false;
    this.arm();
  }

  private arm(): void {
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    const left = (this.expiresAtMono ?? 0) - this.clock.now();
    this.timer = this.clock.setTimer(() => this.check(), Math.max(0, Math.ceil(left)));
  }

  private check(): void {
    this.timer = null;
    if (this.stopped || this.expiresAtMono === null || this.fired) return;
    const now = this.clock.now();
    if (now < this.expiresAtMono) {
      this.arm(); // timers may fire early
      return;
    }
    this.fired = true;
    const expiredAt = new Date(this.clock.wallNow() - (now - this.expiresAtMono));
    this.o.onExpire({ expiredAtMono: this.expiresAtMono, expiredAt });
  }
}
