/**
 * The lease gate of domain starts (AGENT-LINK.md, "Self-fencing"): a host whose lease has run out
 * must not define or start a domain, since the orchestrator may be restarting that VM elsewhere.
 * Host operations run every define/start through {@link StartGate.run}, which refuses it with a
 * {@link LeaseExpiredError} once the lease is gone, and tracks the ones that passed while it was
 * held. A start that passed just before the lease ran out may still finish after the fence has
 * listed the domains; the fencer therefore takes {@link StartGate.inProgress} when the lease ends
 * and fences again once those have finished.
 */

/** A define or start refused because this host holds no lease (retryable: the agent reconnects and gets one). */
export class LeaseExpiredError extends Error {
  constructor(
    readonly vmId: string,
    readonly what: string,
  ) {
    super(`refused to ${what} VM ${vmId}: this host's lease has run out (it is fencing its HA VMs); retry once the host holds a lease again`);
    this.name = 'LeaseExpiredError';
  }
}

/** Starts that passed the gate and have not finished. */
export interface StartsInProgress {
  /** VM ids of those starts. */
  vmIds: string[];
  /** Settles once every one of them has finished (however). */
  settled: Promise<void>;
}

/** What host operations need of the gate. */
export interface DomainStartGate {
  /** Throws {@link LeaseExpiredError} unless the lease is held now (an early refusal, before any work). */
  check(vmId: string, what: string): void;
  /** Runs `fn` (which defines or starts the domain of `vmId`) only while the lease is held; tracks it until it ends. */
  run<T>(vmId: string, what: string, fn: () => Promise<T>): Promise<T>;
}

/** See the module comment. */
export class StartGate implements DomainStartGate {
  private readonly running = new Map<Promise<unknown>, string>();

  /** `leaseHeld` answers whether the host holds its lease now (Lease.valid). */
  constructor(private readonly leaseHeld: () => boolean) {}

  check(vmId: string, what: string): void {
    if (!this.leaseHeld()) throw new LeaseExpiredError(vmId, what);
  }

  async run<T>(vmId: string, what: string, fn: () => Promise<T>): Promise<T> {
    this.check(vmId, what);
    // Registered synchronously with the check: no lease expiry can fall between them unseen.
    const p = fn();
    this.running.set(p, vmId);
    try {
      return await p;
    } finally {
      this.running.delete(p);
    }
  }

  inProgress(): StartsInProgress {
    const ps = [...this.running.keys()];
    return { vmIds: [...new Set(this.running.values())], settled: Promise.allSettled(ps).then(() => undefined) };
  }
}
