/**
 * Self-fencing (AGENT-LINK.md, "Self-fencing"): when the lease ends without a new grant, the agent
 * writes a record, destroys every running domain whose metadata says `<kloudak:ha>true</kloudak:ha>`
 * (no graceful shutdown: another host may be about to start the same VM), and rewrites the record
 * with what it destroyed. Non-HA domains keep running.
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

/**
 * Fences the host: record, destroy HA domains, rewrite the record. Domains that fail to be
 * destroyed (libvirt restarting) are tried again until `maxAttempts`; the record lists the
 * failures left. Returns the final record and its file name.
 */
export async function selfFence(d: SelfFenceDeps, leaseExpiredAt: Date, reason: string): Promise<{ file: string; record: FenceRecord }> {
  const now = d.now ?? Date.now;
  const record: FenceRecord = { leaseExpiredAt: leaseExpiredAt.toISOString(), reason, domains: [] };
  // On disk (fsynced) before anything is destroyed: a crash from here on still leaves evidence.
  const file = await d.store.create(record);
  d.log.error({ lease_expired_at: record.leaseExpiredAt, reason, record: file }, 'lease expired: fencing HA domains');
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
        .filter((dom) => !NOT_RUNNING.has(dom.state) && !destroyed.has(dom.name))
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
  await d.store.update(file, record);
  d.log.warn({ record: file, destroyed: record.domains.length, failed: failures.length }, 'fencing done');
  return { file, record };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
