/**
 * Self-fencing (AGENT-LINK.md, "Self-fencing"): when the lease ends without a new grant, the agent
 * destroys every running domain whose metadata says `<kloudak:ha>true</kloudak:ha>` (no graceful
 * shutdown: another host may be about to start the same VM), then writes a record of what it
 * destroyed. Non-HA domains keep running.
 *
 * libvirt is asked first. When it does not answer within `libvirtTimeoutMs` (libvirtd hung, down,
 * or not connected yet at agent start), the agent kills the HA domains' QEMU processes itself from
 * libvirt's pid files ({@link QemuPidfiles}); the record says which way each domain went (`method`).
 *
 * Destroying comes first and never depends on the disk: a full disk or a read-only data dir must
 * not keep an HA domain running after the lease. The record is evidence for the orchestrator, best
 * effort: its failure is logged, and the fence still counts as done.
 */
import type { Logger } from 'pino';
import { vmIdOfDomain } from '../names.js';
import type { Hypervisor } from '../ports.js';
import type { QemuPidfiles } from './qemu-pidfiles.js';
import type { FenceMethod, FenceRecord, FenceStore } from './records.js';

export { isHaDomainXml } from './ha-xml.js';
import { isHaDomainXml } from './ha-xml.js';

const NOT_RUNNING = new Set(['shutoff', 'crashed']);

/** Dependencies of {@link selfFence}. */
export interface SelfFenceDeps {
  /** libvirt, or a getter of it that answers null while the agent has no libvirt connection yet. */
  hypervisor: Hypervisor | (() => Hypervisor | null);
  /** QEMU pid files, to fence when libvirt does not answer; absent: libvirt only (simulated hosts). */
  pidfiles?: QemuPidfiles;
  /** How long one libvirt call may take before the fence turns to the pid files (default 2000 ms). */
  libvirtTimeoutMs?: number;
  store: FenceStore;
  log: Logger;
  /** Wall clock, for the record. */
  now?: () => number;
  /** Pause between attempts when libvirt refuses (default 1 s). */
  retryDelayMs?: number;
  /** Give up after this many attempts (default: 30). */
  maxAttempts?: number;
}

/** Options of one {@link selfFence}. */
export interface SelfFenceOptions {
  /** Only these domain names are candidates (a targeted second pass); default: every domain. */
  only?: ReadonlySet<string>;
  /** Write no record when nothing was destroyed and nothing failed (a second pass that found nothing). */
  skipEmptyRecord?: boolean;
}

/** What a fence did. `file` is null when no record was written (it failed, or was not needed). */
export interface SelfFenceResult {
  file: string | null;
  record: FenceRecord;
}

/**
 * Fences the host: destroy HA domains, then record what was destroyed. Domains that fail to be
 * destroyed (libvirt restarting) are tried again until `maxAttempts`; the record lists the
 * failures left. Never throws for the record: a record that cannot be written is logged.
 */
export async function selfFence(d: SelfFenceDeps, leaseExpiredAt: Date, reason: string, o: SelfFenceOptions = {}): Promise<SelfFenceResult> {
  const now = d.now ?? Date.now;
  const record: FenceRecord = { leaseExpiredAt: leaseExpiredAt.toISOString(), reason, domains: [] };
  d.log.error({ lease_expired_at: record.leaseExpiredAt, reason, only: o.only ? [...o.only] : undefined }, 'lease expired: fencing HA domains');
  const destroyed = new Map<string, { vmId: string; method: FenceMethod }>();
  let failures: Array<{ domainName: string; error: string }> = [];
  const attempts = d.maxAttempts ?? 30;
  const timeoutMs = d.libvirtTimeoutMs ?? 2000;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    failures = [];
    const hv = typeof d.hypervisor === 'function' ? d.hypervisor() : d.hypervisor;
    // Domains libvirt did not answer for (all of them when it cannot even list): fenced by pid file.
    let unanswered: ReadonlySet<string> | 'all' | null = null;
    let why = '';
    let domains: Awaited<ReturnType<Hypervisor['list']>> | null = null;
    if (hv === null) {
      why = 'libvirt is not connected';
    } else {
      try {
        domains = await withTimeout(hv.list(), timeoutMs, 'listing domains');
      } catch (err) {
        why = `cannot list domains: ${(err as Error).message}`;
      }
    }
    if (domains === null) {
      unanswered = 'all';
      if (!d.pidfiles) failures.push({ domainName: '*', error: why });
    } else {
      const noAnswer = new Set<string>();
      /** HA domains whose destroy libvirt did not confirm in time (it may have happened all the same). */
      const destroyUnconfirmed = new Set<string>();
      await Promise.all(
        domains
          .filter((dom) => !NOT_RUNNING.has(dom.state) && !destroyed.has(dom.name) && (o.only === undefined || o.only.has(dom.name)))
          .map(async (dom) => {
            let destroying = false;
            try {
              if (!isHaDomainXml(await withTimeout(hv!.xml(dom.name), timeoutMs, 'reading the domain XML'))) return;
              destroying = true;
              await withTimeout(hv!.destroy(dom.name), timeoutMs, 'destroying the domain');
              destroyed.set(dom.name, { vmId: vmIdOfDomain(dom.name) ?? '', method: 'libvirt' });
              d.log.warn({ vm_id: vmIdOfDomain(dom.name) ?? undefined, domain: dom.name }, 'fenced: destroyed HA domain');
            } catch (err) {
              if ((err as Error).name === 'NotFoundError') return; // gone meanwhile
              if (d.pidfiles && isNoAnswer(err)) {
                noAnswer.add(dom.name);
                if (destroying) destroyUnconfirmed.add(dom.name);
              } else failures.push({ domainName: dom.name, error: (err as Error).message });
            }
          }),
      );
      if (noAnswer.size > 0) {
        unanswered = noAnswer;
        why = 'libvirt stopped answering';
      }
      if (unanswered !== null && d.pidfiles) {
        await killFromPidfiles(d, d.pidfiles, unanswered, why, destroyed, failures);
        // The pid files showed no QEMU left to kill for these, and none failed: the destroy that
        // libvirt answered too late did happen. This fence ended them; the report must say so.
        for (const name of destroyUnconfirmed) {
          if (destroyed.has(name) || failures.some((f) => f.domainName === name)) continue;
          destroyed.set(name, { vmId: vmIdOfDomain(name) ?? '', method: 'libvirt' });
          d.log.warn({ vm_id: vmIdOfDomain(name) ?? undefined, domain: name }, 'fenced: destroyed HA domain (libvirt answered late)');
        }
        unanswered = null;
      }
    }
    if (unanswered !== null && d.pidfiles) await killFromPidfiles(d, d.pidfiles, unanswered === 'all' ? o.only : unanswered, why, destroyed, failures);
    if (failures.length === 0) break;
    d.log.error({ failures, attempt }, 'fencing incomplete; trying again');
    await sleep(d.retryDelayMs ?? 1000);
  }
  record.domains = [...destroyed].map(([domainName, r]) => ({ domainName, vmId: r.vmId, method: r.method }));
  record.fencedAt = new Date(now()).toISOString();
  if (failures.length > 0) record.failures = failures;
  if (o.skipEmptyRecord && destroyed.size === 0 && failures.length === 0) {
    d.log.info({ reason }, 'fencing pass found nothing to destroy');
    return { file: null, record };
  }
  // Written once, finished (with fencedAt): only finished records are ever on disk to be reported.
  let file: string | null = null;
  try {
    file = await d.store.create(record);
  } catch (err) {
    d.log.error({ err, domains: record.domains, store: d.store.dir }, 'fencing done, but its record cannot be written; the orchestrator will not get this report');
  }
  d.log.warn({ record: file, destroyed: record.domains.length, failed: failures.length }, 'fencing done');
  return { file, record };
}

/** Kills the QEMU of the HA domains in `only` (default: all) from their pid files; adds to `destroyed` and `failures`. */
async function killFromPidfiles(
  d: SelfFenceDeps,
  pidfiles: QemuPidfiles,
  only: ReadonlySet<string> | undefined,
  why: string,
  destroyed: Map<string, { vmId: string; method: FenceMethod }>,
  failures: Array<{ domainName: string; error: string }>,
): Promise<void> {
  d.log.error({ reason: why, run_dir: pidfiles.runDir }, 'libvirt does not answer: killing HA domains\' QEMU processes from their pid files');
  try {
    const r = await pidfiles.killHa(only);
    for (const k of r.killed) {
      destroyed.set(k.domainName, { vmId: vmIdOfDomain(k.domainName) ?? '', method: 'pidfile' });
      d.log.warn({ vm_id: vmIdOfDomain(k.domainName) ?? undefined, domain: k.domainName, pid: k.pid }, 'fenced: killed HA domain\'s QEMU');
    }
    failures.push(...r.failures);
  } catch (err) {
    failures.push({ domainName: '*', error: `${why}; cannot read the QEMU pid files in ${pidfiles.runDir}: ${(err as Error).message}` });
  }
}

/** libvirt did not answer (as opposed to answering with an error). */
function isNoAnswer(err: unknown): boolean {
  const name = (err as Error)?.name;
  return name === 'FenceTimeoutError' || name === 'CallTimeoutError' || name === 'DisconnectedError';
}

class FenceTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`libvirt did not answer within ${ms} ms (${what})`);
    this.name = 'FenceTimeoutError';
  }
}

/** `p`, or a {@link FenceTimeoutError} after `ms` (the call itself goes on; its outcome is dropped). */
function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  p.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FenceTimeoutError(what, ms)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
