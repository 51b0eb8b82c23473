/**
 * A simulated hypervisor host: a libvirt test-driver node file for `test:///<abs path>`, with some
 * CPUs, memory, and one `dir` storage pool holding a template volume. Opened through libvirtd,
 * each connection to such a URI is its own private hypervisor (ENVIRONMENT.md), so one agent
 * process = one simulated host, and a libvirt reconnection is like a host reboot.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { escapeXml } from '../xml/escape.js';

/** Shape of a simulated host. */
export interface SimHostOptions {
  /** Directory that receives host.xml and the pool directory. Created if missing. */
  dir: string;
  /** Logical CPUs (default 8). */
  cpus?: number;
  /** Memory in MiB (default 16384). */
  memoryMb?: number;
  /** Pool name (default `default`). */
  poolName?: string;
  /** Pool directory (default `<dir>/pool`). */
  poolPath?: string;
  /** Pool capacity in GiB (default 100). */
  poolCapacityGb?: number;
  /** Template volume name (default `template.qcow2`). */
  templateVolume?: string;
  /** Template size in GiB (default 1). */
  templateGb?: number;
  /**
   * More volumes in the pool from the start (default none). A test of failover lists here the
   * volumes a shared pool would show this host (each test-driver host has a private pool).
   */
  volumes?: { name: string; capacityGb: number }[];
  /** Domains defined from the start, as test-driver domain XML (default none): a host that reboots with its old domains. */
  domains?: string[];
}

/** A written simulated host. */
export interface SimHost {
  /** `test:///<abs path of host.xml>`. */
  uri: string;
  file: string;
  poolName: string;
  poolPath: string;
  templateVolume: string;
  /** Removes what {@link createSimHost} wrote. */
  remove(): void;
}

/** The test-driver node XML of a simulated host. */
export function simHostXml(o: Required<Omit<SimHostOptions, 'dir'>>): string {
  const pool = escapeXml(o.poolName);
  const path = escapeXml(o.poolPath);
  const tpl = escapeXml(o.templateVolume);
  const volumes = o.volumes
    .map(
      (v) => `
    <volume type='file'>
      <name>${escapeXml(v.name)}</name>
      <capacity unit='GiB'>${v.capacityGb}</capacity>
      <allocation unit='MiB'>1</allocation>
      <target><path>${path}/${escapeXml(v.name)}</path><format type='qcow2'/></target>
    </volume>`,
    )
    .join('');
  return `<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>${o.cpus}</cores><threads>1</threads><active>${o.cpus}</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>${o.memoryMb * 1024}</memory>
  <pool type='dir'>
    <name>${pool}</name>
    <target><path>${path}</path></target>
    <capacity unit='GiB'>${o.poolCapacityGb}</capacity>
    <allocation unit='GiB'>${o.templateGb}</allocation>
    <available unit='GiB'>${o.poolCapacityGb - o.templateGb}</available>
    <volume type='file'>
      <name>${tpl}</name>
      <capacity unit='GiB'>${o.templateGb}</capacity>
      <allocation unit='MiB'>64</allocation>
      <target><path>${path}/${tpl}</path><format type='qcow2'/></target>
    </volume>${volumes}
  </pool>${o.domains.map((d) => `\n  ${d}`).join('')}
</node>
`;
}

/**
 * A test-driver domain named as Kloudak names the VM `vmId`'s domain, running or shut off: for a
 * host that comes back with domains it had before (the test driver keeps nothing across agent
 * connections, so the test writes them into the host's node file).
 */
export function simDomainXml(vmId: string, state: 'running' | 'shutoff', memoryMb = 256): string {
  const id = escapeXml(vmId);
  // test:runstate 5 = VIR_DOMAIN_SHUTOFF (a defined, stopped domain); domains start running by default.
  const runstate = state === 'shutoff' ? '<test:runstate>5</test:runstate>' : '';
  return `<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'><name>kloudak-${id}</name><uuid>${id}</uuid><memory unit='MiB'>${memoryMb}</memory><vcpu>1</vcpu><os><type>hvm</type></os>${runstate}</domain>`;
}

/** Writes a simulated host under `o.dir` and returns its URI. */
export function createSimHost(o: SimHostOptions): SimHost {
  const full = {
    cpus: o.cpus ?? 8,
    memoryMb: o.memoryMb ?? 16384,
    poolName: o.poolName ?? 'default',
    poolPath: o.poolPath ?? join(o.dir, 'pool'),
    poolCapacityGb: o.poolCapacityGb ?? 100,
    templateVolume: o.templateVolume ?? 'template.qcow2',
    templateGb: o.templateGb ?? 1,
    volumes: o.volumes ?? [],
    domains: o.domains ?? [],
  };
  if (!o.dir.startsWith('/')) throw new Error(`the simulated host's dir must be absolute: ${o.dir}`);
  mkdirSync(full.poolPath, { recursive: true });
  const file = join(o.dir, 'host.xml');
  writeFileSync(file, simHostXml(full));
  return {
    uri: `test://${file}`,
    file,
    poolName: full.poolName,
    poolPath: full.poolPath,
    templateVolume: full.templateVolume,
    remove: () => {
      rmSync(file, { force: true });
      rmSync(full.poolPath, { recursive: true, force: true });
    },
  };
}
