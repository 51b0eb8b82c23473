import { open, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { seedFiles } from '../cloudinit/seed.js';
import { DEFAULT_TAP_PREFIX, domainName, rootVolumeName, seedVolumeName, tapName, vmIdOfDomain, checkId } from '../names.js';
import type { DomainState, Hypervisor, NetworkDriver, OvsPort, SeedBuilder, Storage, VolumeStatus } from '../ports.js';
import type { DomainStartGate } from '../fence/start-gate.js';
import { RevertStack } from '../runner/revert.js';
import type { HostSettings, MigrationSettings } from '../settings.js';
import { checkNic, checkVlan, checkVmSpec, normalizeMac, type NicSpec, type VmSpec } from '../spec.js';
import { consoleLogPath, domainXml, nicXml, seedFilePath } from '../xml/domain.js';

/** What host operations need: the ports and this host's settings. */
export interface HostOpsDeps {
  hypervisor: Hypervisor;
  storage: Storage;
  network: NetworkDriver;
  seeds: SeedBuilder;
  settings: HostSettings;
  /** Waits between polls (injected so tests can run fast). */
  sleep?: (ms: number) => Promise<void>;
  /**
   * The lease gate: every domain define and start goes through it, so none happens once the
   * host's lease has run out (fence/start-gate.ts). Absent: no lease (tools, tests of other parts).
   */
  gate?: DomainStartGate;
}

/** What really exists on this host, for reconciliation against the orchestrator's records. */
export interface HostInventory {
  /** Kloudak domains (foreign domains are not listed). */
  domains: Array<{ vmId: string; name: string; state: DomainState }>;
  /** Kloudak volumes per pool. */
  volumes: Array<{ pool: string; name: string; vmId: string | null }>;
  /** Kloudak NIC ports per bridge (named by tapName). */
  ports: OvsPort[];
}

/** How a source host migrates a VM to this host (the answer of prepareMigration). */
export interface MigrationTarget {
  /** This host's libvirtd as the source's libvirtd reaches it. */
  libvirtUri: string;
  /** Where QEMU streams the memory (`tcp:<address>`; libvirt picks the port). */
  migrateUri: string;
  /** The domain XML as this host defines it (its console path, tap names, seed). */
  domainXml: string;
}

/** Where a VM's volumes live: needed by operations that remove them. */
export interface VmLocation {
  vmId: string;
  pool: string;
}

/** The VM an operation needs does not exist on this host (deletes never throw it: gone is success). */
export class VmNotFoundError extends Error {
  constructor(readonly vmId: string) {
    super(`VM ${vmId} does not exist on this host`);
    this.name = 'VmNotFoundError';
  }
}

/**
 * A recover (failover) found no root volume to boot from in the pool: the pool is not the shared
 * one the VM's disk is on, or it is not mounted here. Never answered by cloning a new disk.
 */
export class RootVolumeMissingError extends Error {
  constructor(
    readonly vmId: string,
    readonly pool: string,
  ) {
    super(`VM ${vmId}: its root volume is not in pool ${pool} on this host (a recover never clones a new one)`);
    this.name = 'RootVolumeMissingError';
  }
}

const KLOUDAK_VOLUME = /^kloudak-([0-9a-f-]{36})-(root\.qcow2|seed\.iso)$/;

/**
 * The host operations of the seed's Compute and Network workers, as in-process calls. Each is
 * idempotent and level-triggered: applying it twice is the same as once, deleting what is gone
 * succeeds. Multi-step operations undo their completed steps when a later step fails.
 */
export class HostOperations {
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly d: HostOpsDeps) {
    this.sleep = d.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  private bridgeOf(nic: NicSpec): string {
    return nic.bridge ?? this.d.settings.bridge;
  }

  /** Make sure every bridge and VLAN the NICs need exists on this host (shared: never reverted). */
  private async ensureNicNetworks(nics: readonly NicSpec[]): Promise<void> {
    for (const nic of nics) {
      const bridge = this.bridgeOf(nic);
      await this.d.network.ensureBridge(bridge);
      await this.d.network.ensureVlan(bridge, nic.vlan);
    }
  }

  /**
   * Create and start a VM: root disk (qcow2 overlay of the template), cloud-init seed, domain.
   * Every step is idempotent, so a create interrupted by a crash is finished by running it again;
   * a step that fails undoes the VM's earlier steps, leaving no volume, seed or domain behind.
   */
  async createVm(spec: VmSpec): Promise<{ domain: string; root: VolumeStatus; seed: VolumeStatus }> {
    checkVmSpec(spec);
    // Refused at once without a lease (no volume work for nothing); checked again at the define.
    this.d.gate?.check(spec.vmId, 'create');
    const name = domainName(spec.vmId);
    await this.ensureNicNetworks(spec.nics);
    if (spec.recover) return this.recoverVm(spec, spec.recover.start);
    return RevertStack.run(async (undo) => {
      // Undo entries are pushed before the step: a step that fails half-way (a volume created but
      // its upload cut) is cleaned by the same idempotent delete.
      undo.push('root volume', () => this.d.storage.delete(spec.pool, rootVolumeName(spec.vmId)));
      const root = await this.d.storage.cloneOverlay(spec.pool, spec.templateVolume, rootVolumeName(spec.vmId), spec.diskGb);
      undo.push('seed', () => this.removeSeed(spec.vmId, spec.pool));
      const seedBytes = await this.d.seeds.build(seedFiles(spec));
      const seed = await this.writeSeed(spec.vmId, spec.pool, seedBytes);
      undo.push('domain definition', async () => {
        await this.d.hypervisor.destroy(name);
        await this.d.hypervisor.undefine(name);
        await this.removeNicPorts(spec.vmId, spec.nics.map((n) => this.bridgeOf(n)));
      });
      await this.gated(spec.vmId, 'create', async () => {
        await this.d.hypervisor.define(domainXml(spec, this.d.settings));
        await this.d.hypervisor.start(name);
      });
      return { domain: name, root, seed };
    });
  }

  /**
   * Failover: define (and start) a VM from the root volume it already has on a shared pool — its
   * host died. The pool is refreshed by the lookup (another host wrote the volume); a missing
   * root volume fails with NOT_FOUND and nothing is cloned. The seed is written again (this host
   * may keep seeds locally) and the NIC networks are ensured. A failure undoes the domain and the
   * seed, never the root volume: it is the VM's disk.
   */
  private async recoverVm(spec: VmSpec, start: boolean): Promise<{ domain: string; root: VolumeStatus; seed: VolumeStatus }> {
    const name = domainName(spec.vmId);
    const root = await this.d.storage.get(spec.pool, rootVolumeName(spec.vmId));
    if (root === null) throw new RootVolumeMissingError(spec.vmId, spec.pool);
    return RevertStack.run(async (undo) => {
      undo.push('seed', () => this.removeSeed(spec.vmId, spec.pool));
      const seed = await this.writeSeed(spec.vmId, spec.pool, await this.d.seeds.build(seedFiles(spec)));
      undo.push('domain definition', async () => {
        await this.d.hypervisor.destroy(name);
        await this.d.hypervisor.undefine(name);
        await this.removeNicPorts(spec.vmId, spec.nics.map((n) => this.bridgeOf(n)));
      });
      await this.gated(spec.vmId, 'recover', async () => {
        await this.d.hypervisor.define(domainXml(spec, this.d.settings));
        if (start) await this.d.hypervisor.start(name);
      });
      return { domain: name, root, seed };
    });
  }

  /**
   * Remove a VM from this host but keep its volumes: destroy, undefine, remove its NIC ports, its
   * host-local seed file (when seeds live in a local directory) and console log. For a host that
   * returns after the VM was restarted on another host from the same disk on the shared pool.
   * Whatever is already gone is skipped.
   */
  async evictVm(vmId: string, bridges: readonly string[] = [this.d.settings.bridge]): Promise<void> {
    checkId(vmId);
    const name = domainName(vmId);
    await this.d.hypervisor.destroy(name);
    await this.d.hypervisor.undefine(name);
    await this.removeNicPorts(vmId, bridges);
    const file = seedFilePath(vmId, this.d.settings);
    if (file !== null) {
      await rm(file, { force: true });
      await rm(`${file}.tmp`, { force: true });
    }
    await rm(consoleLogPath(vmId, this.d.settings), { force: true });
  }

  /**
   * Power off and remove a VM with its volumes, seed, NIC ports and console log. Whatever is
   * already gone is skipped, so a delete interrupted at any point completes when run again.
   */
  async deleteVm(loc: VmLocation, bridges: readonly string[] = [this.d.settings.bridge]): Promise<void> {
    const name = domainName(loc.vmId);
    await this.d.hypervisor.destroy(name);
    await this.d.hypervisor.undefine(name);
    // libvirt removes OVS ports on destroy; one left by a crash mid-destroy is removed here.
    await this.removeNicPorts(loc.vmId, bridges);
    await this.d.storage.delete(loc.pool, rootVolumeName(loc.vmId));
    await this.removeSeed(loc.vmId, loc.pool);
    await rm(consoleLogPath(loc.vmId, this.d.settings), { force: true });
  }

  /** Write the seed: a pool volume, or a file in `settings.seedDir` (replaced atomically). */
  private async writeSeed(vmId: string, pool: string, bytes: Uint8Array): Promise<VolumeStatus> {
    const file = seedFilePath(vmId, this.d.settings);
    if (file === null) return this.d.storage.putRaw(pool, seedVolumeName(vmId), bytes);
    const tmp = `${file}.tmp`;
    await writeFile(tmp, bytes, { mode: 0o644 });
    await rename(tmp, file);
    const size = BigInt((await stat(file)).size);
    return { name: seedVolumeName(vmId), path: file, capacityBytes: size, allocationBytes: size };
  }

  private async removeSeed(vmId: string, pool: string): Promise<void> {
    const file = seedFilePath(vmId, this.d.settings);
    if (file === null) return this.d.storage.delete(pool, seedVolumeName(vmId));
    await rm(file, { force: true });
    await rm(`${file}.tmp`, { force: true });
  }

  /** This host's migration settings (a host that sets none: libvirt over TLS to its hostname). */
  private migrationSettings(): MigrationSettings {
    return this.d.settings.migration ?? { peerUri: `qemu+tls://${hostname()}/system`, address: hostname(), timeoutMs: 300_000 };
  }

  /**
   * Live migration, destination side: get ready to receive the VM (it runs on another host, its
   * disk on a pool both hosts mount). The NICs' bridges and VLANs are ensured, the root volume must
   * be in the pool (NOT_FOUND otherwise: the pool is not shared with this host; nothing is ever
   * cloned), and the seed is written when this host keeps seeds in a local directory (a seed
   * volume is on the shared pool already, in use by the running VM: left alone). Answers how the
   * source reaches this host and the domain XML with this host's own paths and tap names. Defines
   * and starts nothing: the migration itself does, on the source's call.
   */
  async prepareMigration(spec: VmSpec): Promise<MigrationTarget> {
    checkVmSpec(spec);
    // A host without a lease must not take a VM in (the migration starts it here).
    this.d.gate?.check(spec.vmId, 'migrate in');
    await this.ensureNicNetworks(spec.nics);
    if ((await this.d.storage.get(spec.pool, rootVolumeName(spec.vmId))) === null) throw new RootVolumeMissingError(spec.vmId, spec.pool);
    if (seedFilePath(spec.vmId, this.d.settings) !== null) await this.writeSeed(spec.vmId, spec.pool, await this.d.seeds.build(seedFiles(spec)));
    const m = this.migrationSettings();
    // IPv6 literals go in brackets in QEMU's URI.
    const host = m.address.includes(':') && !m.address.startsWith('[') ? `[${m.address}]` : m.address;
    return { libvirtUri: m.peerUri, migrateUri: `tcp:${host}`, domainXml: domainXml({ ...spec, recover: { start: true } }, this.d.settings) };
  }

  /**
   * Live migration, source side: libvirt's peer-to-peer live migration of the running VM to the
   * host a prepareMigration answered. This host's libvirtd connects to the destination's itself and
   * QEMU streams the memory; on success the domain runs there (defined persistently) and is gone
   * from here, and this host's console log and local seed file of it are removed (unless the
   * destination uses the very same paths). On failure libvirt leaves it running here. A VM whose
   * domain is not running here fails with VmNotFoundError: whether it already runs on the
   * destination is for the orchestrator to ask the destination.
   */
  async migrateVm(vmId: string, target: MigrationTarget & { sharedStorage: boolean; timeoutMs?: number }): Promise<{ ms: number }> {
    checkId(vmId);
    const name = domainName(vmId);
    const state = await this.d.hypervisor.state(name);
    if (state === null || state === 'shutoff' || state === 'crashed') throw new VmNotFoundError(vmId);
    const started = Date.now();
    await this.d.hypervisor.migrate(name, {
      peerUri: target.libvirtUri,
      migrateUri: target.migrateUri,
      xml: target.domainXml,
      sharedStorage: target.sharedStorage,
      timeoutMs: target.timeoutMs ?? this.migrationSettings().timeoutMs,
    });
    const ms = Date.now() - started;
    const seed = seedFilePath(vmId, this.d.settings);
    for (const file of [consoleLogPath(vmId, this.d.settings), ...(seed === null ? [] : [seed])]) {
      if (!target.domainXml.includes(file)) await rm(file, { force: true });
    }
    return { ms };
  }

  /** Delete every NIC port of a VM (named `tapName(vmId, i)`) left on these bridges. */
  private async removeNicPorts(vmId: string, bridges: Iterable<string>): Promise<void> {
    const prefix = tapName(vmId, 0, this.d.settings.tapPrefix).slice(0, -1); // "kl<10 hex>-": the VM's taps, whatever the index
    for (const bridge of new Set(bridges)) {
      for (const p of await this.d.network.listPorts(bridge)) {
        if (p.name.startsWith(prefix)) await this.d.network.deletePort(bridge, p.name);
      }
    }
  }

  /** Start a stopped VM; a running one is left alone. */
  async startVm(vmId: string): Promise<void> {
    await this.gated(vmId, 'start', () => this.d.hypervisor.start(domainName(vmId)));
  }

  /** Runs a domain define/start through the lease gate, when there is one. */
  private gated<T>(vmId: string, what: string, fn: () => Promise<T>): Promise<T> {
    return this.d.gate ? this.d.gate.run(vmId, what, fn) : fn();
  }

  /**
   * Ask the guest to shut down, wait up to `timeoutMs` (default: the host setting), then power it
   * off. Returns how it stopped. A VM that is already off returns 'already-off'.
   */
  async stopVm(vmId: string, timeoutMs = this.d.settings.shutdownTimeoutMs): Promise<'graceful' | 'forced' | 'already-off'> {
    const name = domainName(vmId);
    const state = await this.d.hypervisor.state(name);
    if (state === null) throw new VmNotFoundError(vmId);
    if (state === 'shutoff' || state === 'crashed') return 'already-off';
    await this.d.hypervisor.shutdown(name);
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if ((await this.d.hypervisor.state(name)) === 'shutoff') return 'graceful';
      await this.sleep(Math.min(250, Math.max(1, until - Date.now())));
    }
    await this.d.hypervisor.destroy(name);
    return 'forced';
  }

  /** Reboot a running VM (ACPI). */
  async rebootVm(vmId: string): Promise<void> {
    await this.d.hypervisor.reboot(domainName(vmId));
  }

  /** Hot-plug a NIC (live and persistent). A NIC with that MAC already present is left alone. */
  async attachInterface(vmId: string, index: number, nic: NicSpec): Promise<void> {
    checkNic(nic, index);
    const name = domainName(vmId);
    if (this.hasMac(await this.d.hypervisor.xml(name), nic.mac)) return;
    await this.ensureNicNetworks([nic]);
    await this.d.hypervisor.attachDevice(name, nicXml(vmId, index, nic, this.d.settings));
  }

  /** Hot-unplug a NIC; one that is not there succeeds. */
  async detachInterface(vmId: string, index: number, nic: NicSpec): Promise<void> {
    checkNic(nic, index);
    const name = domainName(vmId);
    if (!this.hasMac(await this.d.hypervisor.xml(name), nic.mac)) return;
    await this.d.hypervisor.detachDevice(name, nicXml(vmId, index, nic, this.d.settings));
  }

  private hasMac(xml: string, mac: string): boolean {
    return xml.toLowerCase().includes(`<mac address='${normalizeMac(mac)}'`) || xml.toLowerCase().includes(`<mac address="${normalizeMac(mac)}"`);
  }

  /** What a VLAN network needs on this host: its bridge, and the VLAN on the bridge's uplink. */
  async ensureNetwork(vlan: number, bridge = this.d.settings.bridge): Promise<void> {
    checkVlan('network vlan', vlan);
    await this.d.network.ensureBridge(bridge);
    await this.d.network.ensureVlan(bridge, vlan);
  }

  /** Stop carrying a network's VLAN on this host's uplink. */
  async deleteNetwork(vlan: number, bridge = this.d.settings.bridge): Promise<void> {
    checkVlan('network vlan', vlan);
    await this.d.network.removeVlan(bridge, vlan);
  }

  /**
   * Power off these VMs now (fencing): no graceful shutdown, no waiting. Returns the ids that were
   * running and are now off. Errors on one VM do not spare the others.
   */
  async fence(vmIds: readonly string[]): Promise<{ stopped: string[]; failed: Array<{ vmId: string; error: string }> }> {
    const stopped: string[] = [];
    const failed: Array<{ vmId: string; error: string }> = [];
    await Promise.all(
      vmIds.map(async (vmId) => {
        try {
          const name = domainName(vmId);
          const before = await this.d.hypervisor.state(name);
          await this.d.hypervisor.destroy(name);
          if (before !== null && before !== 'shutoff') stopped.push(vmId);
        } catch (err) {
          failed.push({ vmId, error: (err as Error).message });
        }
      }),
    );
    return { stopped, failed };
  }

  /** The last `maxBytes` of a VM's serial console log ('' when it has none yet). */
  async readConsole(vmId: string, maxBytes = 64 * 1024): Promise<string> {
    checkId(vmId);
    const limit = Math.max(1, Math.min(maxBytes, 1024 * 1024));
    let fh;
    try {
      fh = await open(consoleLogPath(vmId, this.d.settings), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
      throw err;
    }
    try {
      const { size } = await fh.stat();
      const len = Math.min(size, limit);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      return buf.toString('utf8');
    } finally {
      await fh.close();
    }
  }

  /** The Kloudak domains, volumes and NIC ports that really exist on this host. */
  async inventory(pools: readonly string[], bridges: readonly string[] = [this.d.settings.bridge]): Promise<HostInventory> {
    const domains = (await this.d.hypervisor.list())
      .map((d) => ({ vmId: vmIdOfDomain(d.name), name: d.name, state: d.state }))
      .filter((d): d is { vmId: string; name: string; state: DomainState } => d.vmId !== null);
    const volumes: HostInventory['volumes'] = [];
    for (const pool of pools) {
      for (const v of await this.d.storage.list(pool)) {
        const m = KLOUDAK_VOLUME.exec(v.name);
        if (m) volumes.push({ pool, name: v.name, vmId: m[1] ?? null });
      }
    }
    const ports: OvsPort[] = [];
    const ownPort = new RegExp(`^${this.d.settings.tapPrefix ?? DEFAULT_TAP_PREFIX}[0-9a-f]{10}-\\d+$`);
    for (const bridge of bridges) {
      for (const p of await this.d.network.listPorts(bridge)) if (ownPort.test(p.name)) ports.push(p);
    }
    return { domains, volumes, ports };
  }
}
