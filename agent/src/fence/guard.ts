/**
 * The fence guard (AGENT-LINK.md, "Self-fencing"): a small process beside the agent that kills the
 * HA domains' QEMU processes when the lease is over and the agent has not fenced them.
 *
 * The agent fences itself when its lease ends (fence/fencer.ts), but only while its own event loop
 * runs. A hung agent (a blocked event loop, a process stopped by SIGSTOP or a debugger, a wedged
 * disk write) fences nothing, and its HA VMs would keep running after the orchestrator, seeing
 * the lease over, restarts them elsewhere: the same disk written from two hosts. Proxmox VE guards
 * against this with a watchdog that resets the node; Kloudak kills only the HA QEMUs, from libvirt's
 * pid files ({@link QemuPidfiles}), so that the host's other VMs keep running.
 *
 * The agent sends the guard the lease's end at every change, on the host's monotonic clock
 * (fence/lease-state.ts). Once that end is `graceMs` behind (the agent's own fence, which asks
 * libvirt first, goes first), and for as long as no later end comes, the guard sweeps the run
 * directory every `pollMs` and kills any HA QEMU it finds: one that libvirtd started late for a
 * command in flight is found by the next sweep. A sweep that killed something writes a fence
 * record, which the agent reports at its next Hello. The guard never acts while the lease is held,
 * so it cannot fence a healthy host: its deadline is the agent's own.
 *
 * A clean stop of the agent releases the guard (as before the guard, a stopped agent leaves its VMs
 * running). When the agent dies without a word, the guard fences at the lease's end and exits,
 * unless another agent process has written the lease state file meanwhile: that agent's own guard
 * and its provisional lease (which ends where this one does) take over.
 */
import type { Logger } from 'pino';
import { vmIdOfDomain } from '../names.js';
import type { LeaseState } from './lease-state.js';
import type { QemuPidfiles } from './qemu-pidfiles.js';
import type { FenceRecord, FenceStore } from './records.js';

/** Dependencies of {@link FenceGuard}. */
export interface FenceGuardDeps {
  pidfiles: Pick<QemuPidfiles, 'killHa'>;
  store: Pick<FenceStore, 'create'>;
  log: Logger;
  /** How long after the lease's end the guard waits for the agent's own fence. */
  graceMs: number;
  /** Sweep period (default 250 ms). */
  pollMs?: number;
  /** The host's monotonic clock in ms (fence/lease-state.ts's hostMonoMs). */
  now: () => number;
  /** Wall clock, for records (default Date.now). */
  wallNow?: () => number;
  /** The agent process the guard serves. */
  agentPid: number;
  /** This boot's id (fence/lease-state.ts's bootId). */
  bootId: string;
  /** Reads the lease state file: once the agent is gone, tells whether another agent took over. */
  readState: () => Promise<LeaseState | null>;
}

/** See the module comment. */
export class FenceGuard {
  private end: number | null = null;
  private released = false;
  private orphaned = false;
  private sweptFor: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private busy = false;
  private finish!: () => void;
  /** Resolves when the guard has nothing left to do (released, or the agent gone and its lease dealt with). */
  readonly done: Promise<void>;

  constructor(private readonly d: FenceGuardDeps) {
    this.done = new Promise<void>((r) => (this.finish = r));
  }

  /** The lease now ends at `endHostMonoMs`. */
  lease(endHostMonoMs: number): void {
    this.end = endHostMonoMs;
  }

  /** The agent stops cleanly: nothing more to guard. */
  release(): void {
    this.released = true;
    this.stop();
  }

  /** The agent is gone without releasing the guard (its IPC channel closed). */
  agentGone(): void {
    this.orphaned = true;
    this.d.log.warn({ agent_pid: this.d.agentPid, lease_end_in_ms: this.end === null ? null : Math.round(this.end - this.d.now()) }, 'the agent is gone without a clean stop: its lease is guarded until it ends');
    void this.tick();
  }

  start(): void {
    this.timer ??= setInterval(() => void this.tick(), this.d.pollMs ?? 250);
  }

  /** One check (exposed for tests). */
  async tick(): Promise<void> {
    if (this.busy || this.released) return;
    this.busy = true;
    try {
      if (this.orphaned) {
        const state = await this.d.readState();
        if (state && state.bootId === this.d.bootId && state.pid !== this.d.agentPid) {
          this.d.log.info({ agent_pid: state.pid }, 'another agent process holds the lease now: the guard exits');
          this.stop();
          return;
        }
        if (this.end === null) {
          this.stop();
          return;
        }
      }
      const end = this.end;
      if (end !== null && this.d.now() >= end + this.d.graceMs) {
        await this.sweep(end);
        this.sweptFor = end;
      }
      // An orphan's one duty: the lease of the agent that died. Its sweep is done; nothing will
      // extend that lease again.
      if (this.orphaned && this.sweptFor !== null && this.sweptFor === this.end) this.stop();
    } catch (err) {
      this.d.log.error({ err }, 'fence guard check failed');
    } finally {
      this.busy = false;
    }
  }

  private async sweep(end: number): Promise<void> {
    const r = await this.d.pidfiles.killHa();
    if (r.killed.length === 0 && r.failures.length === 0) return;
    const wallNow = this.d.wallNow ?? Date.now;
    const leaseExpiredAt = new Date(wallNow() - (this.d.now() - end)).toISOString();
    const record: FenceRecord = {
      leaseExpiredAt,
      reason: 'lease expired and the agent did not fence: killed by the fence guard',
      domains: r.killed.map((k) => ({ domainName: k.domainName, vmId: vmIdOfDomain(k.domainName) ?? '', method: 'pidfile' as const })),
      fencedAt: new Date(wallNow()).toISOString(),
    };
    if (r.failures.length > 0) record.failures = r.failures;
    this.d.log.error({ lease_expired_at: leaseExpiredAt, killed: r.killed, failures: r.failures }, 'the lease is over and the agent did not fence: the guard killed HA QEMU processes');
    try {
      await this.d.store.create(record);
    } catch (err) {
      // The kill is what matters; the record is evidence (as in self-fence.ts).
      this.d.log.error({ err }, 'cannot write the fence guard record');
    }
  }

  private stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.finish();
  }
}
