/**
 * What libvirt tells about usage: storage pools (capacity, allocation, available), per-VM
 * counters from one CONNECT_GET_ALL_DOMAIN_STATS call (cpu time, memory, disk and NIC bytes), and
 * the host's node info. Record parsing is pure ({@link vmStatsOf}).
 */
import { DomainStatsGroup, Flags, StoragePoolState, type DomainStatsRecord, type Libvirt, type TypedParamValue } from '@kloudak/libvirt';
import { vmIdOfDomain } from '../names.js';

/** A storage pool's figures (bytes). */
export interface PoolFigures {
  name: string;
  path: string;
  capacityBytes: bigint;
  allocationBytes: bigint;
  availableBytes: bigint;
  active: boolean;
}

/** Cumulative counters of one running Kloudak VM. */
export interface VmCounters {
  vmId: string;
  domainName: string;
  cpuTimeNs: bigint;
  memoryBytes: bigint;
  diskReadBytes: bigint;
  diskWriteBytes: bigint;
  netRxBytes: bigint;
  netTxBytes: bigint;
}

function big(v: TypedParamValue | undefined): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return BigInt(Math.trunc(v));
  return 0n;
}

function sumIndexed(values: Map<string, TypedParamValue>, group: 'block' | 'net', field: string): bigint {
  const count = Number(big(values.get(`${group}.count`)));
  let sum = 0n;
  for (let i = 0; i < count; i++) sum += big(values.get(`${group}.${i}.${field}`));
  return sum;
}

/**
 * The counters of a Kloudak domain's stats record (null for foreign domains). Memory is the
 * domain's RSS when the driver reports it (`balloon.rss`), else its current balloon size; both
 * are KiB in libvirt.
 */
export function vmStatsOf(record: Pick<DomainStatsRecord, 'domain' | 'values'>): VmCounters | null {
  const vmId = vmIdOfDomain(record.domain.name);
  if (vmId === null) return null;
  const v = record.values;
  const memKiB = v.has('balloon.rss') ? big(v.get('balloon.rss')) : big(v.get('balloon.current'));
  return {
    vmId,
    domainName: record.domain.name,
    cpuTimeNs: big(v.get('cpu.time')),
    memoryBytes: memKiB * 1024n,
    diskReadBytes: sumIndexed(v, 'block', 'rd.bytes'),
    diskWriteBytes: sumIndexed(v, 'block', 'wr.bytes'),
    netRxBytes: sumIndexed(v, 'net', 'rx.bytes'),
    netTxBytes: sumIndexed(v, 'net', 'tx.bytes'),
  };
}

/** Counters of every running Kloudak VM, in one bulk-stats call. */
export async function collectVmStats(lv: Libvirt): Promise<VmCounters[]> {
  const records = await lv.getAllDomainStats({
    stats: DomainStatsGroup.STATE | DomainStatsGroup.CPU_TOTAL | DomainStatsGroup.BALLOON | DomainStatsGroup.INTERFACE | DomainStatsGroup.BLOCK,
    // VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE has the value of LIST_DOMAINS_ACTIVE.
    flags: Flags.LIST_DOMAINS_ACTIVE,
  });
  const out: VmCounters[] = [];
  for (const r of records) {
    const s = vmStatsOf(r);
    if (s === null) continue;
    if (!r.values.has('cpu.time')) {
      // Drivers without the cpu/balloon groups (the test driver) still answer DOMAIN_GET_INFO.
      const info = await lv.getDomainInfo(r.domain).catch(() => null);
      if (info) {
        s.cpuTimeNs = info.cpuTimeNs;
        s.memoryBytes = info.memoryKiB * 1024n;
      }
    }
    out.push(s);
  }
  return out;
}

/** `<target><path>` of a pool's XML ('' when it has none, e.g. network pools). */
export function poolPathOf(xml: string): string {
  const target = /<target>([\s\S]*?)<\/target>/.exec(xml)?.[1] ?? '';
  return /<path>([^<]*)<\/path>/.exec(target)?.[1]?.trim() ?? '';
}

/** Every storage pool libvirt knows, with its sizes. A pool that vanishes meanwhile is skipped. */
export async function collectPools(lv: Libvirt): Promise<PoolFigures[]> {
  const out: PoolFigures[] = [];
  for (const pool of await lv.listAllStoragePools()) {
    try {
      const [info, xml] = await Promise.all([lv.getStoragePoolInfo(pool), lv.getStoragePoolXml(pool)]);
      out.push({
        name: pool.name,
        path: poolPathOf(xml),
        capacityBytes: info.capacity,
        allocationBytes: info.allocation,
        availableBytes: info.available,
        active: info.state === StoragePoolState.RUNNING,
      });
    } catch (err) {
      if ((err as Error).name === 'NotFoundError') continue;
      throw err;
    }
  }
  return out;
}
