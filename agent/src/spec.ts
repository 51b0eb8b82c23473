/**
 * What a VM is made of, as the agent receives it: the input of the domain XML, the cloud-init seed
 * and the volumes. {@link checkVmSpec} validates one before anything touches the host; the XML
 * and seed generators call it themselves, so a bad value can never reach a document or a file.
 */
import { isIP } from 'node:net';
import { checkId } from './names.js';

/** Static address configuration of a NIC. */
export interface NicIp {
  /** Address with prefix length (CIDR form), e.g. `10.1.0.5/24` or `fd00::5/64`. */
  address: string;
  /** Default gateway, same family as `address`. */
  gateway?: string;
  /** DNS servers. */
  dns?: string[];
}

/** A VM network interface. */
export interface NicSpec {
  /** Kloudak network id (a UUID). */
  networkId: string;
  /** MAC address, `52:54:00:12:34:56` (any case; written lower-case). */
  mac: string;
  /** OVS bridge; default: the host's bridge (`HostSettings.bridge`). */
  bridge?: string;
  /**
   * Access VLAN tag, {@link VLAN_MIN}–{@link VLAN_MAX}. There is no untagged NIC: an OVS port with
   * neither tag nor trunks is a trunk of EVERY VLAN, so such a guest would see and inject traffic
   * on every tenant network of the bridge.
   */
  vlan: number;
  /** Static address; absent: DHCP. */
  ip?: NicIp;
}

/** Direct kernel boot (test guests without a disk image boot loader). Host paths. */
export interface DirectBoot {
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** A VM as the agent creates it. */
export interface VmSpec {
  /** Kloudak VM id (a lower-case UUID); the domain's UUID and the root of every derived name. */
  vmId: string;
  /** Guest hostname (user-chosen: escaped everywhere, never used in a name or a path). */
  hostname: string;
  /** Virtual CPUs. */
  cpu: number;
  /** Memory in MiB. */
  ramMb: number;
  /** Root disk size in GiB (at least the template's size). */
  diskGb: number;
  /** libvirt storage pool holding the template and receiving the VM's volumes. */
  pool: string;
  /** Volume name of the template image in `pool`. */
  templateVolume: string;
  /** Boot a kernel directly instead of from the root disk. */
  boot?: DirectBoot;
  /** NICs in guest order (`eth0`, `eth1`, …). */
  nics: NicSpec[];
  /** OpenSSH public keys of the login user. */
  sshKeys: string[];
  /** crypt(3) hash of the login user's password (`$6$…`, `$y$…`); never a clear-text password. */
  passwordHash?: string;
  /** Restart elsewhere when the host fails. */
  ha: boolean;
  /** The user's own cloud-init user-data (`#cloud-config…` or a `#!` script), added to Kloudak's. */
  userData?: string;
  /**
   * Failover: the root volume already exists in `pool` (shared; the VM's host died). It is used as
   * it is — never cloned again, never deleted by the revert stack; `start: false` defines only.
   */
  recover?: { start: boolean };
}

/** Largest user-data accepted (cloud-init's NoCloud has no limit; this keeps seeds small). */
export const MAX_USER_DATA_BYTES = 64 * 1024;

/** Check the user's user-data: a cloud-config or a script, within size, text without NUL. */
export function checkUserData(data: string): string {
  if (typeof data !== 'string' || data.length === 0) fail('userData must be a non-empty string');
  if (Buffer.byteLength(data, 'utf8') > MAX_USER_DATA_BYTES) fail(`userData is larger than ${MAX_USER_DATA_BYTES} bytes`);
  if (data.includes('\0')) fail('userData must not contain NUL characters');
  const first = data.split('\n', 1)[0]!.trimEnd();
  if (first !== '#cloud-config' && !first.startsWith('#!')) fail('userData must start with #cloud-config or a #! script line');
  return data;
}

/** Thrown for an invalid {@link VmSpec} or part of one. */
export class SpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SpecError';
  }
}

/** Upper bounds that catch unit mix-ups (MiB given as bytes, …), not policy. */
const MAX_CPU = 1024;
const MAX_RAM_MB = 16 * 1024 * 1024;
const MAX_DISK_GB = 1024 * 1024;

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
/** Linux interface names: at most 15 bytes, no '/', ':' or whitespace. */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
/** crypt(3) hashes in modular format: `$id$…` (`$1$`, `$5$`, `$6$`, `$2b$`, `$y$`, `$7$`, …). */
const CRYPT_HASH = /^\$[0-9a-z]{1,3}\$[./0-9A-Za-z$=,-]+$/;

/**
 * Smallest usable tenant VLAN. 0 would mean "untagged" (a trunk of every VLAN in Open vSwitch) and
 * 1 is the default (native) VLAN of most physical switches; the orchestrator allocates from 2 too.
 */
export const VLAN_MIN = 2;
/** Largest usable VLAN: 4095 is reserved by 802.1Q (and parks the uplink, see network/ovs.ts). */
export const VLAN_MAX = 4094;

function fail(message: string): never {
  throw new SpecError(message);
}

function checkInt(what: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) fail(`${what} must be an integer in ${min}..${max}, got ${v}`);
}

/** A non-empty string without control characters (user-chosen text that goes into files). */
export function checkText(what: string, v: string, maxLength = 4096): string {
  if (typeof v !== 'string' || v.length === 0) fail(`${what} must be a non-empty string`);
  if (v.length > maxLength) fail(`${what} is longer than ${maxLength} characters`);
  if (CONTROL.test(v)) fail(`${what} must not contain control characters: ${JSON.stringify(v)}`);
  return v;
}

/** Lower-cased MAC; throws unless it is a unicast `xx:xx:xx:xx:xx:xx` address. */
export function normalizeMac(mac: string): string {
  if (typeof mac !== 'string' || !MAC.test(mac)) fail(`not a MAC address: ${JSON.stringify(mac)}`);
  const m = mac.toLowerCase();
  if ((Number.parseInt(m.slice(0, 2), 16) & 1) !== 0) fail(`not a unicast MAC address: ${m}`);
  return m;
}

/** Throws unless `name` is a valid Linux interface (bridge) name. */
export function checkIfName(what: string, name: string): string {
  if (typeof name !== 'string' || !IFNAME.test(name)) fail(`${what} is not a valid interface name: ${JSON.stringify(name)}`);
  return name;
}

/** Parses `addr/prefix`; throws unless it is an IPv4 or IPv6 address with a valid prefix. */
export function parseCidr(cidr: string): { address: string; prefix: number; family: 4 | 6 } {
  const m = typeof cidr === 'string' ? /^([^/]+)\/(\d{1,3})$/.exec(cidr) : null;
  const family = m ? isIP(m[1]!) : 0;
  if (!m || family === 0) fail(`not an address in CIDR form: ${JSON.stringify(cidr)}`);
  const prefix = Number(m[2]);
  if (prefix > (family === 4 ? 32 : 128)) fail(`prefix length out of range: ${cidr}`);
  return { address: m[1]!, prefix, family: family as 4 | 6 };
}

/** Throws unless `ip` is a plain IPv4 or IPv6 address; returns its family. */
export function checkIp(what: string, ip: string): 4 | 6 {
  const family = typeof ip === 'string' ? isIP(ip) : 0;
  if (family === 0) fail(`${what} is not an IP address: ${JSON.stringify(ip)}`);
  return family as 4 | 6;
}

/**
 * Throws a {@link SpecError} unless `vlan` is a tenant VLAN id ({@link VLAN_MIN}–{@link VLAN_MAX}).
 * Every VLAN that reaches the host (NICs, hot-plugged NICs, network commands) goes through it.
 */
export function checkVlan(what: string, vlan: number): number {
  if (typeof vlan !== 'number' || !Number.isInteger(vlan) || vlan < VLAN_MIN || vlan > VLAN_MAX) {
    fail(`${what} must be a VLAN id in ${VLAN_MIN}..${VLAN_MAX} (0 = untagged would carry every VLAN; 1 and 4095 are reserved), got ${String(vlan)}`);
  }
  return vlan;
}

/** Validates a NIC (see {@link NicSpec}). */
export function checkNic(nic: NicSpec, index = 0): void {
  const what = `nic ${index}`;
  checkId(nic.networkId);
  normalizeMac(nic.mac);
  if (nic.bridge !== undefined) checkIfName(`${what} bridge`, nic.bridge);
  checkVlan(`${what} vlan`, nic.vlan);
  if (nic.ip) {
    const { family } = parseCidr(nic.ip.address);
    if (nic.ip.gateway !== undefined && checkIp(`${what} gateway`, nic.ip.gateway) !== family) {
      fail(`${what} gateway ${nic.ip.gateway} is not of the family of ${nic.ip.address}`);
    }
    for (const d of nic.ip.dns ?? []) checkIp(`${what} dns server`, d);
  }
}

/** Throws unless `hash` looks like a crypt(3) hash: a clear-text password must never pass. */
export function checkPasswordHash(hash: string): string {
  if (typeof hash !== 'string' || !CRYPT_HASH.test(hash)) fail('passwordHash is not a crypt(3) hash ($id$...)');
  return hash;
}

/** Validates a whole {@link VmSpec}; throws {@link SpecError} (or the id check's error). */
export function checkVmSpec(spec: VmSpec): VmSpec {
  checkId(spec.vmId);
  checkText('hostname', spec.hostname, 253);
  checkInt('cpu', spec.cpu, 1, MAX_CPU);
  checkInt('ramMb', spec.ramMb, 1, MAX_RAM_MB);
  checkInt('diskGb', spec.diskGb, 1, MAX_DISK_GB);
  checkText('pool', spec.pool, 255);
  checkText('templateVolume', spec.templateVolume, 255);
  if (spec.boot) {
    checkText('boot.kernel', spec.boot.kernel);
    checkText('boot.initrd', spec.boot.initrd);
    if (typeof spec.boot.cmdline !== 'string' || CONTROL.test(spec.boot.cmdline)) fail('boot.cmdline must be a string without control characters');
  }
  if (spec.nics.length > 100) fail('at most 100 NICs');
  spec.nics.forEach((n, i) => checkNic(n, i));
  const macs = new Set(spec.nics.map((n) => n.mac.toLowerCase()));
  if (macs.size !== spec.nics.length) fail('two NICs share a MAC address');
  for (const k of spec.sshKeys) checkText('ssh key', k, 16384);
  if (spec.passwordHash !== undefined) checkPasswordHash(spec.passwordHash);
  if (typeof spec.ha !== 'boolean') fail('ha must be a boolean');
  if (spec.userData !== undefined) checkUserData(spec.userData);
  return spec;
}
