/**
 * Runs self-fencing when the lease ends (AGENT-LINK.md, "Self-fencing"): one fence at a time, in
 * the order the expiries came, each in two passes.
 *
 * 1. At once: destroy every running HA domain ({@link selfFence}).
 * 2. Once the domain defines/starts that were in progress when the lease ended have finished,
 *    destroy again whatever of those VMs runs. Such a start passed the {@link StartGate} while the
 *    lease was held, but its domain may come up after pass 1 listed the domains; new ones cannot
 *    pass the gate until a grant comes. If a grant has come meanwhile, pass 2 still stops those
 *    VMs (they started on the old lease), but only those: HA domains started under the new lease
 *    are legitimate.
 */
import type { Logger } from 'pino';
import { domainName } from '../names.js';
import type { Hypervisor } from '../ports.js';
import type { LeaseExpiry } from './lease.js';
import type { QemuPidfiles } from './qemu-pidfiles.js';
import type { FenceStore } from './records.js';
import { selfFence, type SelfFenceDeps, type SelfFenceResult } from './self-fence.js';
import type { StartGate } from './start-gate.js';

/** Dependencies of {@link Fencer}. */
export interface FencerDeps {
  /** libvirt, or a getter of it answering null until the agent has connected to libvirt. */
  hypervisor: Hypervisor | (() => Hypervisor | null);
  /** QEMU pid files, to fence when libvirt does not answer (see self-fence.ts); absent: libvirt only. */
  pidfiles?: QemuPidfiles;
  /** How long a libvirt call may take before fencing turns to the pid files (default 2000 ms). */
  libvirtTimeoutMs?: number;
  store: FenceStore;
  gate: Pick<StartGate, 'inProgress'>;
  log: Logger;
  /** Pause between attempts when libvirt refuses (default 1 s). */
  retryDelayMs?: number;
  /** Attempts of a fencing pass before it reports the domains it could not destroy (default 30). */
  maxAttempts?: number;
  /** Called after each pass that wrote a record (the link reports it and updates its count). */
  onRecord?: () => Promise<void> | void;
}

/** See the module comment. */
export class Fencer {
  private chain: Promise<void> = Promise.resolve();
  private waiters: Array<(complete: boolean) => void> = [];

  constructor(private readonly d: FencerDeps) {}

  /** The lease ended: queue a fence. Returns at once (the lease's callback must not block). */
  onExpire(e: LeaseExpiry): void {
    // Taken now, synchronously with the expiry: the starts that passed the gate on this lease.
    const starts = this.d.gate.inProgress();
    this.chain = this.chain
      .then(() => this.fence(e, starts))
      .catch((err: unknown) => {
        this.d.log.error({ err }, 'self-fencing failed');
        return false;
      })
      .then((complete) => {
        const w = this.waiters;
        this.waiters = [];
        for (const f of w) f(complete);
      });
  }

  /**
   * Resolves after the next fence (both passes) finishes: true when every HA domain was
   * destroyed, false when some could not be (its record lists them). Only a complete fence may
   * be announced as one (the pool lease files' "fenced": the orchestrator restarts on it).
   */
  fenced(): Promise<boolean> {
    return new Promise<boolean>((r) => this.waiters.push(r));
  }

  /** Resolves once every queued fence has finished. */
  idle(): Promise<void> {
    return this.chain;
  }

  private async fence(e: LeaseExpiry, starts: ReturnType<StartGate['inProgress']>): Promise<boolean> {
    const deps: SelfFenceDeps = { hypervisor: this.d.hypervisor, store: this.d.store, log: this.d.log, retryDelayMs: this.d.retryDelayMs ?? 1000 };
    if (this.d.pidfiles) deps.pidfiles = this.d.pidfiles;
    if (this.d.libvirtTimeoutMs !== undefined) deps.libvirtTimeoutMs = this.d.libvirtTimeoutMs;
    if (this.d.maxAttempts !== undefined) deps.maxAttempts = this.d.maxAttempts;
    const first = await selfFence(deps, e.expiredAt, 'lease expired');
    await this.recorded(first);
    if (starts.vmIds.length === 0) return first.record.failures === undefined;
    this.d.log.warn({ vm_ids: starts.vmIds }, 'domain starts were in progress when the lease ended; fencing them again once they finish');
    await starts.settled;
    const only = new Set(starts.vmIds.map((id) => domainName(id)));
    const second = await selfFence(deps, e.expiredAt, 'lease expired (domain started by a command in flight)', { only, skipEmptyRecord: true });
    await this.recorded(second);
    return first.record.failures === undefined && second.record.failures === undefined;
  }

  private async recorded(r: SelfFenceResult): Promise<void> {
    if (r.file === null || !this.d.onRecord) return;
    try {
      await this.d.onRecord();
    } catch (err) {
      this.d.log.warn({ err }, 'cannot report the fence record yet');
    }
  }
}
