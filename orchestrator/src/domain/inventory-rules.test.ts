import test from 'node:test';
import assert from 'node:assert/strict';
import {
  checkArea,
  cidrsOverlap,
  formatIpv4,
  gatewayProblem,
  overlappingArea,
  parseCidr,
  parseIpv4,
  parseVlanRange,
  type Cidr,
} from './inventory-rules.js';

function cidr(s: string): Cidr {
  const c = parseCidr(s);
  if ('error' in c) throw new Error(c.error);
  return c;
}

test('parseIpv4 accepts dotted quads and refuses everything else', () => {
  assert.equal(parseIpv4('10.0.0.1'), 0x0a000001);
  assert.equal(parseIpv4('255.255.255.255'), 0xffffffff);
  for (const bad of ['256.0.0.1', '10.0.0', '10.0.0.1.2', '010.0.0.1', ' 10.0.0.1', '1e1.0.0.1', '']) {
    assert.equal(parseIpv4(bad), null, bad);
  }
  assert.equal(formatIpv4(0xc0a80101), '192.168.1.1');
});

test('parseCidr validates form, prefix and host bits', () => {
  const c = cidr('10.20.0.0/24');
  assert.equal(formatIpv4(c.first), '10.20.0.0');
  assert.equal(formatIpv4(c.last), '10.20.0.255');
  assert.match((parseCidr('10.20.0.1/24') as { error: string }).error, /host bits.*10\.20\.0\.0\/24/);
  assert.ok('error' in parseCidr('10.20.0.0'));
  assert.ok('error' in parseCidr('10.20.0.0/31'));
  assert.ok('error' in parseCidr('10.0.0.0/7'));
  assert.ok('error' in parseCidr('10.20.0.0/x'));
});

test('cidrsOverlap detects containment and partial overlap, not neighbours', () => {
  assert.ok(cidrsOverlap(cidr('10.0.0.0/16'), cidr('10.0.5.0/24')));
  assert.ok(cidrsOverlap(cidr('10.0.5.0/24'), cidr('10.0.0.0/16')));
  assert.ok(!cidrsOverlap(cidr('10.0.0.0/24'), cidr('10.0.1.0/24')));
  assert.ok(cidrsOverlap(cidr('10.0.0.0/24'), cidr('10.0.0.0/24')));
});

test('gatewayProblem requires an inside, usable address', () => {
  const c = cidr('10.1.0.0/24');
  assert.equal(gatewayProblem(c, '10.1.0.1'), null);
  assert.match(gatewayProblem(c, '10.2.0.1') ?? '', /inside/);
  assert.match(gatewayProblem(c, '10.1.0.0') ?? '', /network or broadcast/);
  assert.match(gatewayProblem(c, '10.1.0.255') ?? '', /network or broadcast/);
  assert.match(gatewayProblem(c, 'gw') ?? '', /IPv4/);
});

test('parseVlanRange keeps ranges within 2-4094 and ordered', () => {
  assert.deepEqual(parseVlanRange('100-199'), { first: 100, last: 199 });
  assert.deepEqual(parseVlanRange('2-4094'), { first: 2, last: 4094 });
  for (const bad of ['1-10', '100-4095', '200-100', '100', '100-', 'a-b', '-5-10']) {
    assert.ok('error' in parseVlanRange(bad), bad);
  }
});

test('checkArea names the field at fault, in order: subnet, gateway, VLAN range', () => {
  assert.deepEqual(checkArea('10.20.0.0/16', '10.20.0.1', '100-199'), { ok: true, cidr: cidr('10.20.0.0/16'), vlanFirst: 100, vlanLast: 199 });
  const bad = (s: string, g: string, v: string) => {
    const c = checkArea(s, g, v);
    return c.ok ? 'ok' : c.field;
  };
  assert.equal(bad('10.20.0.1/16', '10.20.0.1', '1-5000'), '/subnet');
  assert.equal(bad('10.20.0.0/16', '10.21.0.1', '1-5000'), '/gateway');
  assert.equal(bad('10.20.0.0/16', '10.20.0.0', '100-199'), '/gateway');
  assert.equal(bad('10.20.0.0/16', '10.20.0.1', '1-5000'), '/vlanRange');
});

test('overlappingArea finds the first area sharing an address, ignoring unparsable rows', () => {
  const areas = [
    { name: 'a', subnet: 'garbage' },
    { name: 'b', subnet: '10.1.0.0/24' },
    { name: 'c', subnet: '10.2.0.0/16' },
  ];
  assert.equal(overlappingArea(cidr('10.2.5.0/24'), areas)?.name, 'c');
  assert.equal(overlappingArea(cidr('10.0.0.0/8'), areas)?.name, 'b');
  assert.equal(overlappingArea(cidr('10.1.1.0/24'), areas), undefined);
});
