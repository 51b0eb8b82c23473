import test from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  addressPoolFor,
  addressScope,
  allocateAddresses,
  checkNetworkSubnet,
  cidrContains,
  cidrContainsAddress,
  defaultGateway,
  formatCidr,
  formatInterfaceAddress,
  formatIpv4,
  parseCidr,
  parseIpv4,
  poolSize,
  type AddressPool,
  type Cidr,
} from './ipam.js';

function cidr(s: string): Cidr {
  const c = parseCidr(s);
  if ('error' in c) throw new Error(c.error);
  return c;
}

function ip(s: string): number {
  const n = parseIpv4(s);
  if (n === null) throw new Error(s);
  return n;
}

function areaPool(subnet: string, gateway: string): AddressPool {
  const p = addressPoolFor({ subnet, gateway }, {});
  if ('error' in p) throw new Error(p.error);
  return p;
}

function first(pool: AddressPool, used: Iterable<number | string>, count = 1): string[] {
  const r = allocateAddresses(pool, used, count);
  if (!r.ok) assert.fail(r.message);
  return r.addresses.map(formatIpv4);
}

test('containment, formatting and the default gateway', () => {
  const c = cidr('10.20.0.0/16');
  assert.equal(formatCidr(c), '10.20.0.0/16');
  assert.ok(cidrContains(c, cidr('10.20.5.0/24')));
  assert.ok(cidrContains(c, c));
  assert.ok(!cidrContains(cidr('10.20.5.0/24'), c));
  assert.ok(!cidrContains(c, cidr('10.21.0.0/24')));
  assert.ok(cidrContainsAddress(c, ip('10.20.255.255')));
  assert.ok(!cidrContainsAddress(c, ip('10.21.0.0')));
  assert.equal(formatIpv4(defaultGateway(cidr('192.168.7.0/24'))), '192.168.7.1');
  assert.equal(formatInterfaceAddress(ip('10.20.0.5'), c), '10.20.0.5/16');
});

test('the pool of a network is its own subnet (gateway .1) or else the area\'s subnet and gateway', () => {
  const own = addressPoolFor({ subnet: '10.0.0.0/24', gateway: '10.0.0.254' }, { subnet: '172.16.4.0/22' });
  assert.ok(!('error' in own));
  assert.deepEqual([formatCidr(own.subnet), own.gateway && formatIpv4(own.gateway)], ['172.16.4.0/22', '172.16.4.1']);
  const area = addressPoolFor({ subnet: '10.0.0.0/24', gateway: '10.0.0.254' }, { subnet: null });
  assert.ok(!('error' in area));
  assert.deepEqual([formatCidr(area.subnet), area.gateway && formatIpv4(area.gateway)], ['10.0.0.0/24', '10.0.0.254']);
  const ownGw = addressPoolFor({ subnet: '10.0.0.0/24', gateway: '10.0.0.254' }, { subnet: '172.16.4.0/22', gateway: '172.16.7.254' });
  assert.ok(!('error' in ownGw));
  assert.equal(ownGw.gateway && formatIpv4(ownGw.gateway), '172.16.7.254');
  assert.match((addressPoolFor({ subnet: '10.0.0.0/24', gateway: '10.0.0.1' }, { subnet: '172.16.4.0/22', gateway: '172.16.8.1' }) as { error: string }).error, /network gateway/);
  assert.match((addressPoolFor({ subnet: '10.0.0.0/24', gateway: 'x' }, {}) as { error: string }).error, /gateway/);
  assert.equal(addressScope('A', { id: 'N', subnet: '172.16.4.0/22' }), 'network:N');
  assert.equal(addressScope('A', { id: 'N', subnet: null }), 'area:A');
  assert.match((addressPoolFor({ subnet: '10.0.0/24', gateway: '10.0.0.1' }, {}) as { error: string }).error, /area subnet/);
  assert.match((addressPoolFor({ subnet: '10.0.0.0/24', gateway: '10.0.0.1' }, { subnet: '10.1.0.1/24' }) as { error: string }).error, /network subnet/);
});

test('allocation skips the network, gateway and broadcast addresses', () => {
  const p = areaPool('10.1.0.0/29', '10.1.0.1'); // .0 network, .1 gateway, .7 broadcast: .2–.6 usable
  assert.equal(poolSize(p), 5);
  assert.deepEqual(first(p, []), ['10.1.0.2']);
  assert.deepEqual(first(p, [], 5), ['10.1.0.2', '10.1.0.3', '10.1.0.4', '10.1.0.5', '10.1.0.6']);
  const gwLast = areaPool('10.1.0.0/29', '10.1.0.6');
  assert.deepEqual(first(gwLast, [], 5), ['10.1.0.1', '10.1.0.2', '10.1.0.3', '10.1.0.4', '10.1.0.5']);
  const r = allocateAddresses(p, [], 6);
  assert.ok(!r.ok);
  assert.deepEqual([r.reason, r.wanted, r.free], ['exhausted', 6, 5]);
  assert.equal(r.message, 'subnet 10.1.0.0/29 has only 5 free addresses (5 in all), 6 needed');
});

test('the lowest free address is handed out, so a freed address is reused first', () => {
  const p = areaPool('10.1.0.0/24', '10.1.0.1');
  assert.deepEqual(first(p, ['10.1.0.2', '10.1.0.3', '10.1.0.5']), ['10.1.0.4']);
  assert.deepEqual(first(p, [ip('10.1.0.2'), ip('10.1.0.3'), ip('10.1.0.5')], 3), ['10.1.0.4', '10.1.0.6', '10.1.0.7']);
  // Addresses outside the pool (another network's) and duplicates are ignored.
  assert.deepEqual(first(p, ['10.2.0.2', '10.1.0.2', '10.1.0.2', '9.255.255.255']), ['10.1.0.3']);
});

test('exhaustion is a typed result, not an exception', () => {
  const p = areaPool('10.1.0.0/30', '10.1.0.1'); // only .2 usable
  assert.deepEqual(first(p, []), ['10.1.0.2']);
  const r = allocateAddresses(p, ['10.1.0.2']);
  assert.ok(!r.ok);
  assert.equal(r.free, 0);
  assert.equal(r.message, 'subnet 10.1.0.0/30 has no free address (1 in all), 1 needed');
});

test('a malformed used address or count throws', () => {
  const p = areaPool('10.1.0.0/24', '10.1.0.1');
  assert.throws(() => allocateAddresses(p, ['10.1.0.x']), TypeError);
  assert.throws(() => allocateAddresses(p, [], 0), RangeError);
});

test('a /16 with 60,000 addresses used: correct and fast', () => {
  const p = areaPool('10.50.0.0/16', '10.50.0.1');
  const used: number[] = [];
  for (let a = p.subnet.first + 2; used.length < 60_000; a++) if (a !== p.subnet.first + 40_000) used.push(a);
  const started = performance.now();
  const r = allocateAddresses(p, used, 2);
  const ms = performance.now() - started;
  assert.ok(r.ok);
  // The hole left at +40000 first, then the first address after the used run.
  assert.deepEqual(r.addresses.map(formatIpv4), [formatIpv4(p.subnet.first + 40_000), formatIpv4(p.subnet.first + 60_003)]);
  assert.ok(ms < 50, `took ${ms.toFixed(1)} ms`);
  // Full /16: every usable address taken.
  const all: number[] = [];
  for (let a = p.subnet.first + 2; a < p.subnet.last; a++) all.push(a);
  const full = allocateAddresses(p, all);
  assert.ok(!full.ok);
  assert.equal(poolSize(p), 65_533);
  assert.equal(full.message, 'subnet 10.50.0.0/16 has no free address (65533 in all), 1 needed');
});

test('property: allocations are the lowest free usable addresses, distinct, never reserved or used', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 24, max: 30 }),
      fc.integer({ min: 0, max: 255 }),
      fc.array(fc.integer({ min: -4, max: 300 })),
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 0, max: 3 }),
      (prefix, third, offsets, count, gwOffset) => {
        const size = 2 ** (32 - prefix);
        const subnet = cidr(`10.9.${third}.${(third * size) % 256}/${prefix}`);
        const gateway = subnet.first + 1 + gwOffset;
        const pool: AddressPool = { subnet, gateway: gateway < subnet.last ? gateway : null };
        const used = new Set(offsets.map((o) => subnet.first + o));
        const expected: number[] = [];
        for (let a = subnet.first + 1; a < subnet.last && expected.length < count; a++) {
          if (a !== pool.gateway && !used.has(a)) expected.push(a);
        }
        const r = allocateAddresses(pool, used, count);
        if (expected.length < count) {
          assert.ok(!r.ok);
          assert.equal(r.free, expected.length);
        } else {
          assert.ok(r.ok);
          assert.deepEqual(r.addresses, expected);
        }
      },
    ),
    { numRuns: 500 },
  );
});

test('a network\'s own subnet must lie outside every area and overlap no network of the workspace', () => {
  const areas = [
    { name: 'paris', subnet: '10.0.0.0/16' },
    { name: 'lyon', subnet: '10.1.0.0/16' },
  ];
  const nets = [
    { name: 'front', subnet: '172.16.0.0/24' },
    { name: 'shared', subnet: null },
  ];
  const ok = checkNetworkSubnet('172.16.1.0/24', areas, nets);
  assert.ok(ok.ok);
  assert.equal(formatCidr(ok.subnet), '172.16.1.0/24');

  const inArea = checkNetworkSubnet('10.1.5.0/24', areas, nets);
  assert.ok(!inArea.ok);
  assert.deepEqual([inArea.kind, inArea.conflictsWith], ['area', { name: 'lyon', subnet: '10.1.0.0/16' }]);
  assert.match(inArea.message, /overlaps the subnet 10\.1\.0\.0\/16 of area 'lyon'/);
  // Containing an area is overlapping it too.
  const around = checkNetworkSubnet('10.0.0.0/8', areas, nets);
  assert.deepEqual(!around.ok && around.kind, 'area');

  const taken = checkNetworkSubnet('172.16.0.0/24', areas, nets);
  assert.ok(!taken.ok);
  assert.deepEqual([taken.kind, taken.conflictsWith?.name], ['network', 'front']);
  assert.match(taken.message, /overlaps 172\.16\.0\.0\/24 of network 'front' in this workspace/);
  const overlapping = checkNetworkSubnet('172.16.0.0/23', areas, nets);
  assert.deepEqual(!overlapping.ok && overlapping.kind, 'network');
  // The network itself (on an update) is not a conflict.
  assert.ok(checkNetworkSubnet('172.16.0.0/24', areas, nets, 'front').ok);

  for (const bad of ['172.16.0.1/24', '172.16.0.0', '172.16.0.0/31', 'x']) {
    const r = checkNetworkSubnet(bad, areas, nets);
    assert.deepEqual(!r.ok && r.kind, 'malformed', bad);
  }
});
