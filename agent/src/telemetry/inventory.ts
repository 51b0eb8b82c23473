/**
 * What the agent reports about its host: the inventory (what really exists), the bridges, the
 * capacity for Hello, and the usage sample for each heartbeat. Everything is read from libvirt,
 * Open vSwitch and /proc; nothing comes from the agent's own records.
 */
import { readFile, readdir, statfs } from 'node:fs/promises';
import { cpus } from 'node:os';
import { uuidToString, type Libvirt } from '@kloudak/libvirt';
import { DomainStatsGroup } from '@kloudak/libvirt';
import { domainStateName } from '../hypervisor/libvirt-hypervisor.js';
import type { HostOperations } from '../ops/host-ops.js';
import type { CommandRunner, DomainState, Storage } from '../ports.js';
import { CommandError } from '../system/command-runner.js';
import type { Logger } from 'pino';
import { collectPools, collectVmStats, type PoolFigures, type VmCounters } from './libvirt-stats.js';
import type { HostUsageSample, ProcSampler } from './proc.js';

/** The host's inventory, as sent in Hello and in GetInventory's result. */
export interface InventoryReport {
  domains: Array<{ name: string; uuid: string; vmId: string; state: DomainState; vcpus: number; memoryBytes: bigint }>;
  volumes: Array<{ pool: string; name: string; path: string; capacityBytes: bigint; allocationBytes: bigint; vmId: string | null }>;
  ports: Array<{ name: string; bridge: string; vlan: number; mac: string; vmId: string | null }>;
}

/** A network bridge of the host. */
export interface BridgeInfo {
  name: string;
  kind: 'ovs' | 'linux';
  mtu: number;
  up: boolean;
}

/** Hardware capacity. */
export interface Capacity {
  cpuCount: number;
  memoryBytes: bigint;
  diskBytes: bigint;
}

/** One heartbeat's figures. `vms` is empty (meaning unknown) when libvirt is disconnected. */
export interface HeartbeatSample {
  usage: HostUsageSample;
  pools: PoolFigures[];
  vms: VmCounters[];
  libvirtConnected: boolean;
}

/** Dependencies of {@link HostTelemetry}. */
export interface TelemetryDeps {
  lv: Libvirt;
  ops: Pick<HostOperations, 'inventory'>;
  storage: Storage;
  runner: CommandRunner;
  proc: ProcSampler;
  /** The default bridge (always listed in the inventory's ports when it exists). */
  bridge: string;
  /** Filesystem whose size is the host's local disk. */
  dataDir: string;
  /**
   * A simulated host (libvirt's test driver): capacity and memory come from the simulated node,
   * not from this machine, so the orchestrator schedules against what the host pretends to have.
   */
  simulated: boolean;
  /** Where network interfaces are described (default /sys/class/net). */
  sysNet?: string;
  log?: Logger;
}

/** Reads the host's facts and figures. */
export class HostTelemetry {
  private readonly sysNet: string;

  constructor(private readonly d: TelemetryDeps) {
    this.sysNet = d.sysNet ?? '/sys/class/net';
  }

  /** Whether the libvirt connection is up now. */
  get libvirtConnected(): boolean {
    return this.d.lv.state === 'ready';
  }

  async capacity(): Promise<Capacity> {
    let diskBytes = 0n;
    try {
      const s = await statfs(this.d.dataDir, { bigint: true });
      diskBytes = s.blocks * s.bsize;
    } catch {
      // No data dir yet: no local disk to report.
    }
    if (this.d.simulated) {
      const node = await this.d.lv.getNodeInfo();
      return { cpuCount: node.cpus, memoryBytes: node.memoryKiB * 1024n, diskBytes };
    }
    return { cpuCount: cpus().length, memoryBytes: await this.d.proc.memoryTotal(), diskBytes };
  }

  /** OVS bridges (ovs-vsctl list-br) and Linux bridges (/sys/class/net/X/bridge). OVS unreachable: none of its bridges. */
  async bridges(): Promise<BridgeInfo[]> {
    const out: BridgeInfo[] = [];
    const ovs = await this.ovsBridges();
    for (const name of ovs) out.push({ name, kind: 'ovs', ...(await this.linkInfo(name)) });
    let names: string[] = [];
    try {
      names = await readdir(this.sysNet);
    } catch {
      names = [];
    }
    for (const name of names) {
      if (ovs.includes(name)) continue;
      try {
        await readdir(`${this.sysNet}/${name}/bridge`);
      } catch {
        continue;
      }
      out.push({ name, kind: 'linux', ...(await this.linkInfo(name)) });
    }
    return out;
  }

  private async ovsBridges(): Promise<string[]> {
    try {
      const r = await this.d.runner.run(['ovs-vsctl', '--timeout=5', 'list-br'], { timeoutMs: 7_000 });
      return r.stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '');
    } catch {
      return [];
    }
  }

  private async linkInfo(name: string): Promise<{ mtu: number; up: boolean }> {
    const read = async (f: string): Promise<string | null> => readFile(`${this.sysNet}/${name}/${f}`, 'utf8').then((s) => s.trim(), () => null);
    const [mtu, flags] = await Promise.all([read('mtu'), read('flags')]);
    // IFF_UP (0x1) says the administrator brought it up; operstate is "unknown" for many virtual devices.
    return { mtu: mtu === null ? 0 : Number(mtu), up: flags === null ? false : (Number.parseInt(flags, 16) & 1) === 1 };
  }

  /**
   * What exists: Kloudak domains (with uuid, vcpus, memory), volumes of every active pool, NIC
   * ports of every OVS bridge. An inactive pool (e.g. a stray one whose directory is gone) has no
   * volumes libvirt can list: it is skipped here, and Hello and heartbeats report it with
   * `active: false` (collectPools).
   */
  async inventory(): Promise<InventoryReport> {
    const pools = (await collectPools(this.d.lv)).filter((p) => p.active).map((p) => p.name);
    const bridges = [...new Set([this.d.bridge, ...(await this.ovsBridges())])];
    let inv: Awaited<ReturnType<HostOperations['inventory']>>;
    try {
      inv = await this.d.ops.inventory(pools, bridges);
    } catch (err) {
      // Open vSwitch unreachable must not keep the host from reporting its domains and volumes.
      if (!(err instanceof CommandError)) throw err;
      this.d.log?.warn({ err: { message: err.message } }, 'cannot list OVS ports; inventory without ports');
      inv = await this.d.ops.inventory(pools, []);
    }
    const records = await this.d.lv.getAllDomainStats({ stats: DomainStatsGroup.STATE | DomainStatsGroup.BALLOON | DomainStatsGroup.VCPU });
    const byName = new Map(records.map((r) => [r.domain.name, r]));
    const domains: InventoryReport['domains'] = [];
    for (const d of inv.domains) {
      const r = byName.get(d.name);
      let vcpus: number | undefined = numberOf(r?.values.get('vcpu.current') ?? r?.values.get('vcpu.maximum'));
      let memKiB: bigint | undefined = bigOf(r?.values.get('balloon.maximum') ?? r?.values.get('balloon.current'));
      if (r && (vcpus === undefined || memKiB === undefined)) {
        // Drivers without those stat groups (the test driver) still answer DOMAIN_GET_INFO.
        const info = await this.d.lv.getDomainInfo(r.domain).catch(() => null);
        vcpus ??= info?.vcpus;
        memKiB ??= info?.maxMemoryKiB;
      }
      const st = r?.values.get('state.state');
      domains.push({
        name: d.name,
        uuid: r ? uuidToString(r.domain.uuid) : '',
        vmId: d.vmId,
        state: st === undefined ? d.state : domainStateName(Number(st)),
        vcpus: vcpus ?? 0,
        memoryBytes: (memKiB ?? 0n) * 1024n,
      });
    }
    const volumes: InventoryReport['volumes'] = [];
    const byPool = new Map<string, Map<string, { path: string; capacityBytes: bigint; allocationBytes: bigint }>>();
    for (const v of inv.volumes) {
      let vols = byPool.get(v.pool);
      if (!vols) {
        vols = new Map((await this.d.storage.list(v.pool)).map((s) => [s.name, s]));
        byPool.set(v.pool, vols);
      }
      const s = vols.get(v.name);
      volumes.push({ pool: v.pool, name: v.name, path: s?.path ?? '', capacityBytes: s?.capacityBytes ?? 0n, allocationBytes: s?.allocationBytes ?? 0n, vmId: v.vmId });
    }
    const ports: InventoryReport['ports'] = inv.ports.map((p) => ({
      name: p.name,
      bridge: p.bridge,
      vlan: p.tag ?? 0,
      mac: p.externalIds['attached-mac'] ?? '',
      vmId: p.externalIds['vm-id'] ?? null,
    }));
    return { domains, volumes, ports };
  }

  /** Pools and VM counters from libvirt (empty with `libvirtConnected: false` while it is down), host usage from /proc. */
  async heartbeat(): Promise<HeartbeatSample> {
    const usage = await this.d.proc.sample();
    if (!this.libvirtConnected) return { usage, pools: [], vms: [], libvirtConnected: false };
    try {
      const [pools, vms] = await Promise.all([collectPools(this.d.lv), collectVmStats(this.d.lv)]);
      if (this.d.simulated) {
        // The simulated host's memory: its node's size, and what its running domains use.
        const node = await this.d.lv.getNodeInfo();
        usage.memoryTotalBytes = node.memoryKiB * 1024n;
        usage.memoryUsedBytes = vms.reduce((a, v) => a + v.memoryBytes, 0n);
      }
      return { usage, pools, vms, libvirtConnected: true };
    } catch (err) {
      // Lost meanwhile: report "unknown", never a partial picture as the whole one.
      if (!this.libvirtConnected) return { usage, pools: [], vms: [], libvirtConnected: false };
      throw err;
    }
  }
}

function numberOf(v: unknown): number | undefined {
  return typeof v === 'number' || typeof v === 'bigint' ? Number(v) : undefined;
}

function bigOf(v: unknown): bigint | undefined {
  return typeof v === 'bigint' ? v : typeof v === 'number' ? BigInt(Math.trunc(v)) : undefined;
}
