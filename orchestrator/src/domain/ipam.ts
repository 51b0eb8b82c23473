/**
 * IPv4 address management: which address a VM's NIC gets, and whether a network's own subnet is
 * acceptable. Pure — the caller reads the used addresses and writes the allocation in the claims
 * transaction (the unique key on (scope, address) makes a double allocation impossible even if two
 * transactions pick the same address; the loser retries).
 *
 * Parsing lives in inventory-rules.ts (parseIpv4, parseCidr, cidrsOverlap), shared with the area
 * checks; this module adds containment, formatting and allocation on top.
 */
import { cidrsOverlap, formatIpv4, parseCidr, parseIpv4, type Cidr } from './inventory-rules.js';

export { cidrsOverlap, formatIpv4, parseCidr, parseIpv4, type Cidr };

/** `a.b.c.d/p` of a parsed block. */
export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

/** True when `address` (a number from parseIpv4) lies in the block, network and broadcast included. */
export function cidrContainsAddress(c: Cidr, address: number): boolean {
  return address >= c.first && address <= c.last;
}

/** True when every address of `inner` lies in `outer`. */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return inner.first >= outer.first && inner.last <= outer.last;
}

/** The conventional gateway of a subnet that has none configured: its first host address (.1 of a /24). */
export function defaultGateway(c: Cidr): number {
  return c.first + 1;
}

/** `10.1.0.5/24`: an address with its subnet's prefix, as a NIC's static configuration wants it. */
export function formatInterfaceAddress(address: number, subnet: Cidr): string {
  return `${formatIpv4(address)}/${subnet.prefix}`;
}

/**
 * Where a network's addresses come from: a subnet, minus its network and broadcast addresses
 * and its gateway.
 */
export interface AddressPool {
  subnet: Cidr;
  /** Never handed out; null when the subnet has no gateway. */
  gateway: number | null;
}

/**
 * The pool of a network: its own subnet when it has one (gateway: its own, else the subnet's first
 * host address), else the area's subnet and gateway. Returns an error only for malformed stored
 * values.
 */
export function addressPoolFor(
  area: { subnet: string; gateway: string },
  network: { subnet?: string | null; gateway?: string | null },
): AddressPool | { error: string } {
  if (network.subnet) {
    const c = parseCidr(network.subnet);
    if ('error' in c) return { error: `network subnet ${network.subnet}: ${c.error}` };
    if (!network.gateway) return { subnet: c, gateway: defaultGateway(c) };
    const g = parseIpv4(network.gateway);
    if (g === null || !cidrContainsAddress(c, g)) return { error: `network gateway ${network.gateway} is not an address of ${network.subnet}` };
    return { subnet: c, gateway: g };
  }
  const c = parseCidr(area.subnet);
  if ('error' in c) return { error: `area subnet ${area.subnet}: ${c.error}` };
  const g = parseIpv4(area.gateway);
  if (g === null) return { error: `area gateway ${area.gateway} is not an IPv4 address` };
  return { subnet: c, gateway: g };
}

/**
 * The address space a network's addresses are unique in (IpAllocation.scope): `network:<id>` for
 * a network with its own subnet, `area:<id>` for one that shares its area's subnet.
 */
export function addressScope(areaId: string, network: { id: string; subnet?: string | null }): string {
  return network.subnet ? `network:${network.id}` : `area:${areaId}`;
}

/** How many addresses the pool can hand out in all. */
export function poolSize(pool: AddressPool): number {
  const hosts = pool.subnet.last - pool.subnet.first - 1;
  const g = pool.gateway;
  return g !== null && g > pool.subnet.first && g < pool.subnet.last ? hosts - 1 : hosts;
}

/** Addresses were found; `addresses` ascending. */
export interface AddressAllocation {
  ok: true;
  addresses: number[];
}

/** Not enough free addresses in the pool (the caller answers 409). */
export interface AddressExhausted {
  ok: false;
  reason: 'exhausted';
  /** How many were wanted and how many are free. */
  wanted: number;
  free: number;
  message: string;
}

/**
 * The `count` lowest free addresses of `pool`, given every address already allocated in it.
 *
 * Lowest-first, so an address freed by a delete is the next one handed out (reuse). `used` may
 * hold addresses outside the pool (an area-wide list, say); they are ignored, as are duplicates.
 * Strings are parsed as dotted quads; a malformed one throws (corrupt stored data must not be
 * silently reused).
 *
 * Cost: one bit per address of the subnet — 8 KiB for a /16, 2 MiB for a /8 — marked from `used`
 * and scanned 32 at a time: O(size/32 + used), about a millisecond for a full /16.
 */
export function allocateAddresses(
  pool: AddressPool,
  used: Iterable<number | string>,
  count = 1,
): AddressAllocation | AddressExhausted {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`allocateAddresses: count must be an integer >= 1, got ${count}`);
  const { first, last } = pool.subnet;
  const size = last - first + 1;
  const words = new Uint32Array(Math.ceil(size / 32));
  const mark = (a: number) => {
    if (a < first || a > last) return;
    const o = a - first;
    words[o >>> 5] = (words[o >>> 5] as number) | (1 << (o & 31));
  };
  mark(first); // network address
  mark(last); // broadcast address
  if (pool.gateway !== null) mark(pool.gateway);
  for (const u of used) {
    const a = typeof u === 'number' ? u : parseIpv4(u);
    if (a === null) throw new TypeError(`allocateAddresses: used address '${String(u)}' is not an IPv4 address`);
    mark(a);
  }
  // Bits past the end of the last word are not addresses: mark them so the scan skips them.
  for (let o = size; o < words.length * 32; o++) words[o >>> 5] = (words[o >>> 5] as number) | (1 << (o & 31));

  const addresses: number[] = [];
  for (let w = 0; w < words.length && addresses.length < count; w++) {
    const bits = words[w] as number;
    if (bits === 0xffffffff) continue; // all 32 used
    for (let b = 0; b < 32 && addresses.length < count; b++) {
      if ((bits & (1 << b)) === 0) addresses.push(first + w * 32 + b);
    }
  }
  if (addresses.length < count) {
    // The scan ran to the end, so what it found is everything free.
    const free = addresses.length;
    return {
      ok: false,
      reason: 'exhausted',
      wanted: count,
      free,
      message:
        `subnet ${formatCidr(pool.subnet)} has ${free === 0 ? 'no free address' : `only ${free} free address${free === 1 ? '' : 'es'}`}` +
        ` (${poolSize(pool)} in all), ${count} needed`,
    };
  }
  return { ok: true, addresses };
}

/** Why a network's own subnet cannot be used, naming what it collides with. */
export interface SubnetProblem {
  ok: false;
  /** malformed: not a CIDR block; area: overlaps an area's subnet; network: overlaps another network of the workspace. */
  kind: 'malformed' | 'area' | 'network';
  /** The area or network it overlaps. */
  conflictsWith?: { name: string; subnet: string };
  message: string;
}

/**
 * Check the optional own subnet of a new (or renamed) network: a CIDR block (/8–/30, no host
 * bits) that lies outside every area's subnet — so it can never shadow the area's routed
 * addresses — and overlaps no other network of the same workspace (overlap rather than equality:
 * two overlapping subnets in one workspace would make the same address ambiguous between them).
 * Networks without their own subnet (null) share their area's and are skipped. Pass the checked
 * network's own entry out of `workspaceNetworks`, or give its name in `exceptNetwork`.
 */
export function checkNetworkSubnet(
  subnet: string,
  areas: Iterable<{ name: string; subnet: string }>,
  workspaceNetworks: Iterable<{ name: string; subnet: string | null }>,
  exceptNetwork?: string,
): { ok: true; subnet: Cidr } | SubnetProblem {
  const c = parseCidr(subnet);
  if ('error' in c) return { ok: false, kind: 'malformed', message: c.error };
  for (const a of areas) {
    const ac = parseCidr(a.subnet);
    if ('error' in ac) continue; // stored areas are validated on write; a bad one overlaps nothing
    if (cidrsOverlap(c, ac)) {
      return {
        ok: false,
        kind: 'area',
        conflictsWith: { name: a.name, subnet: a.subnet },
        message: `subnet ${subnet} overlaps the subnet ${a.subnet} of area '${a.name}'; a network's own subnet must lie outside every area's`,
      };
    }
  }
  for (const n of workspaceNetworks) {
    if (n.subnet === null || n.name === exceptNetwork) continue;
    const nc = parseCidr(n.subnet);
    if ('error' in nc) continue;
    if (cidrsOverlap(c, nc)) {
      return {
        ok: false,
        kind: 'network',
        conflictsWith: { name: n.name, subnet: n.subnet },
        message: `subnet ${subnet} overlaps ${n.subnet} of network '${n.name}' in this workspace`,
      };
    }
  }
  return { ok: true, subnet: c };
}
