/**
 * Pure rules of the admin inventory: IPv4 subnets, gateways and VLAN ranges. No I/O.
 */

/** An IPv4 network in CIDR form, with its numeric bounds. */
export interface Cidr {
  /** Network address as an unsigned 32-bit number. */
  network: number;
  prefix: number;
  /** First and last address of the block (network and broadcast). */
  first: number;
  last: number;
}

/** Parse a dotted quad; null when it is not a canonical IPv4 address. */
export function parseIpv4(s: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i] as string;
    if (part.length > 1 && part.startsWith('0')) return null; // no octal-looking forms
    const v = Number(part);
    if (v > 255) return null;
    n = n * 256 + v;
  }
  return n;
}

/** Format an unsigned 32-bit number as a dotted quad. */
export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * Parse `a.b.c.d/p`. Refuses host bits set (10.0.0.1/24) so a subnet has one spelling, and
 * prefixes outside 8–30 (a VM subnet needs room for a gateway and at least one VM).
 */
export function parseCidr(s: string): Cidr | { error: string } {
  const slash = s.indexOf('/');
  if (slash === -1) return { error: 'subnet must be in CIDR form, e.g. 10.20.0.0/24' };
  const addr = parseIpv4(s.slice(0, slash));
  const prefixText = s.slice(slash + 1);
  if (addr === null || !/^\d{1,2}$/.test(prefixText)) return { error: 'subnet must be in CIDR form, e.g. 10.20.0.0/24' };
  const prefix = Number(prefixText);
  if (prefix < 8 || prefix > 30) return { error: 'subnet prefix must be between /8 and /30' };
  const size = 2 ** (32 - prefix);
  if (addr % size !== 0) {
    return { error: `subnet has host bits set; did you mean ${formatIpv4(addr - (addr % size))}/${prefix}?` };
  }
  return { network: addr, prefix, first: addr, last: addr + size - 1 };
}

/** True when two blocks share any address. */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return a.first <= b.last && b.first <= a.last;
}

/** Why `gateway` cannot be the gateway of `subnet`, or null when it can. */
export function gatewayProblem(subnet: Cidr, gateway: string): string | null {
  const g = parseIpv4(gateway);
  if (g === null) return 'gateway must be an IPv4 address';
  if (g < subnet.first || g > subnet.last) return 'gateway must lie inside the subnet';
  if (g === subnet.first || g === subnet.last) return 'gateway cannot be the network or broadcast address';
  return null;
}

/** Smallest and largest usable VLAN id (1 is the default VLAN, 4095 is reserved). */
export const VLAN_MIN = 2;
export const VLAN_MAX = 4094;

/** Parse "first-last" into a VLAN range within 2–4094. */
export function parseVlanRange(s: string): { first: number; last: number } | { error: string } {
  const m = /^(\d{1,4})-(\d{1,4})$/.exec(s);
  if (!m) return { error: 'vlanRange must look like "100-199"' };
  const first = Number(m[1]);
  const last = Number(m[2]);
  if (first < VLAN_MIN || last > VLAN_MAX) return { error: `vlanRange must lie within ${VLAN_MIN}-${VLAN_MAX}` };
  if (first > last) return { error: 'vlanRange must start at or below its end' };
  return { first, last };
}

/** Render a stored range back to its wire form. */
export function formatVlanRange(first: number, last: number): string {
  return `${first}-${last}`;
}

/** An area's settings, parsed, or the field at fault (a JSON pointer) and why. */
export type AreaCheck =
  | { ok: true; cidr: Cidr; vlanFirst: number; vlanLast: number }
  | { ok: false; field: '/subnet' | '/gateway' | '/vlanRange'; problem: string };

/** Check an area's subnet, gateway (inside the subnet, not its network or broadcast address) and VLAN range. */
export function checkArea(subnet: string, gateway: string, vlanRange: string): AreaCheck {
  const cidr = parseCidr(subnet);
  if ('error' in cidr) return { ok: false, field: '/subnet', problem: cidr.error };
  const gw = gatewayProblem(cidr, gateway);
  if (gw) return { ok: false, field: '/gateway', problem: gw };
  const vr = parseVlanRange(vlanRange);
  if ('error' in vr) return { ok: false, field: '/vlanRange', problem: vr.error };
  return { ok: true, cidr, vlanFirst: vr.first, vlanLast: vr.last };
}

/** The first of `others` whose subnet overlaps `cidr` (areas never share an address). */
export function overlappingArea<T extends { subnet: string }>(cidr: Cidr, others: readonly T[]): T | undefined {
  return others.find((o) => {
    const oc = parseCidr(o.subnet);
    return !('error' in oc) && cidrsOverlap(cidr, oc);
  });
}
