/**
 * Self-fencing (AGENT-LINK.md, "Self-fencing"): when the lease ends without a new grant, the agent
 * destroys every running domain whose metadata says `<kloudak:ha>true</kloudak:ha>` (no graceful
 * shutdown: another host may be about to start the same VM), then writes a record of what it
 * destroyed. Non-HA domains keep running.
 *
 * Destroying comes first and never depends on the disk: a full disk or a read-only data dir must
 * not keep an HA domain running after the lease. The record is evidence for the orchestrator, best
 * effort: its failure is logged, and the fence still counts as done.
 */
import type { Logger } from 'pino';
import { vmIdOfDomain } from '../names.js';
import type { Hypervisor } from '../ports.js';
import { KLOUDAK_VM_NS } from '../xml/domain.js';
import type { FenceRecord, FenceStore } from './records.js';

/** Whether a domain XML's Kloudak metadata marks the domain HA (whatever prefix libvirt kept for the namespace). */
export function isHaDomainXml(xml: string): boolean {
  const ns = KLOUDAK_VM_NS.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const decl = new RegExp(`xmlns:([A-Za-z_][\\w.-]*)=(['"])${ns}\\2`).exec(xml);
  if (!decl) return false;
  const p = decl[1]!;
  return new RegExp(`<${p}:ha>\\s*true\\s*</${p}:ha>`).test(xml);
}

const NOT_RUNNING = new Set(['shutoff', 'crashed']);

/** Dependencies of {@link selfFence}. */
export interface SelfFenceDeps {
  hypervisor: Hypervisor;
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
  const destroyed = new Map<string, string>();
  let failures: Array<{ domainName: string; error: string }> = [];
  const attempts = d.maxAttempts ?? 30;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    failures = [];
    let domains: Awaited<ReturnType<Hypervisor['list']>>;
    try {
      domains = await d.hypervisor.list();
    } catch (err) {
      failures.push({ domainName: '*', error: `cannot list domains: ${(err as Error).message}` });
      await sleep(d.retryDelayMs ?? 1000);
      continue;
    }
    await Promise.all(
      domains
        .filter((dom) => !NOT_RUNNING.has(dom.state) && !destroyed.has(dom.name) && (o.only === undefined || o.only.has(dom.name)))
        .map(async (dom) => {
          try {
            if (!isHaDomainXml(await d.hypervisor.xml(dom.name))) return;
            await d.hypervisor.destroy(dom.name);
            destroyed.set(dom.name, vmIdOfDomain(dom.name) ?? '');
            d.log.warn({ vm_id: vmIdOfDomain(dom.name) ?? undefined, domain: dom.name }, 'fenced: destroyed HA domain');
          } catch (err) {
            if ((err as Error).name === 'NotFoundError') return; // gone meanwhile
            failures.push({ domainName: dom.name, error: (err as Error).message });
          }
        }),
    );
    if (failures.length === 0) break;
    d.log.error({ failures, attempt }, 'fencing incomplete; trying again');
    await sleep(d.retryDelayMs ?? 1000);
  }
  record.domains = [...destroyed].map(([domainName, vmId]) => ({ domainName, vmId }));
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

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
