import test from 'node:test';
import assert from 'node:assert/strict';
import { MAC_CANDIDATES, MAC_FIRST_OCTET, deriveMac, isLocalUnicastMac, macCandidates, pickMac } from './mac.js';

const VM = '6f1c2a3e-9b7d-4c51-8e2f-0a1b2c3d4e5f';

test('the same VM and NIC index always give the same MAC (a retried step reuses it)', () => {
  assert.equal(deriveMac(VM, 0), deriveMac(VM, 0));
  assert.equal(deriveMac(VM.toUpperCase(), 1), deriveMac(VM, 1));
  // Pinned: changing the derivation would give running VMs new MACs on their next retried step.
  assert.equal(deriveMac(VM, 0), GOLDEN_0);
  assert.equal(deriveMac(VM, 1), GOLDEN_1);
});

test('a VM\'s NICs differ, other VMs differ, and a salt gives another MAC', () => {
  const macs = new Set([0, 1, 2, 3, 4, 5, 6, 7].map((i) => deriveMac(VM, i)));
  assert.equal(macs.size, 8);
  assert.notEqual(deriveMac(VM, 0), deriveMac('6f1c2a3e-9b7d-4c51-8e2f-0a1b2c3d4e50', 0));
  assert.notEqual(deriveMac(VM, 0, 1), deriveMac(VM, 0));
  assert.notEqual(deriveMac(VM, 0, 1), deriveMac(VM, 0, 2));
});

test('every derived MAC is locally administered unicast with the fixed first octet', () => {
  for (let i = 0; i < 1000; i++) {
    const mac = deriveMac(`vm-${i}`, i % 4);
    assert.match(mac, /^0a(:[0-9a-f]{2}){5}$/);
    assert.ok(isLocalUnicastMac(mac), mac);
    assert.equal(parseInt(mac.slice(0, 2), 16), MAC_FIRST_OCTET);
  }
  assert.ok(!isLocalUnicastMac('00:16:3e:12:34:56'), 'a vendor OUI (Xen) is universally administered');
  assert.ok(isLocalUnicastMac('52:54:00:12:34:56'), "QEMU's 52:54:00 is itself a locally administered prefix");
  assert.ok(!isLocalUnicastMac('03:00:00:00:00:01'), 'multicast');
  assert.ok(!isLocalUnicastMac('0a:00:00:00:00'), 'too short');
  assert.ok(isLocalUnicastMac('0A:BC:DE:F0:12:34'));
});

test('the 40 hashed bits spread: no collision among 200,000 NICs of 100,000 VMs is the likely case, and the bits are balanced', () => {
  // Expected collisions ≈ n²/2⁴¹ ≈ 0.018 for n = 200,000; seeing one would point at a weak hash.
  const seen = new Set<string>();
  const ones = new Array<number>(40).fill(0);
  const n = 200_000;
  for (let v = 0; v < n / 2; v++) {
    const id = `00000000-0000-4000-8000-${v.toString(16).padStart(12, '0')}`;
    for (let i = 0; i < 2; i++) {
      const mac = deriveMac(id, i);
      seen.add(mac);
      const hex = mac.slice(3).replaceAll(':', '');
      const hi = parseInt(hex.slice(0, 2), 16);
      const lo = parseInt(hex.slice(2), 16);
      for (let b = 0; b < 32; b++) if ((lo >>> b) & 1) ones[b] = (ones[b] as number) + 1;
      for (let b = 0; b < 8; b++) if ((hi >>> b) & 1) ones[32 + b] = (ones[32 + b] as number) + 1;
    }
  }
  assert.equal(seen.size, n);
  for (let b = 0; b < 40; b++) {
    // Each bit set in half the MACs: ±1 % is ~9 standard deviations at n = 200,000.
    assert.ok(Math.abs((ones[b] as number) / n - 0.5) < 0.01, `bit ${b}: ${ones[b]} of ${n}`);
  }
});

test('bad indexes are programming errors', () => {
  assert.throws(() => deriveMac(VM, -1), RangeError);
  assert.throws(() => deriveMac(VM, 1.5), RangeError);
  assert.throws(() => deriveMac(VM, 0, -1), RangeError);
});

const GOLDEN_0 = '0a:38:e8:18:9e:ae';
const GOLDEN_1 = '0a:1d:70:c3:aa:ce';

test('a NIC whose MAC is held by another takes the next salted candidate, and null when all are held', () => {
  const c = macCandidates(VM, 2);
  assert.equal(c.length, MAC_CANDIDATES);
  assert.equal(c[0], deriveMac(VM, 2));
  assert.equal(new Set(c).size, c.length);
  assert.equal(pickMac(VM, 2, new Set()), c[0]);
  assert.equal(pickMac(VM, 2, new Set([c[0]!])), c[1]);
  assert.equal(pickMac(VM, 2, new Set([c[0]!, c[1]!, deriveMac(VM, 3)])), c[2]);
  assert.equal(pickMac(VM, 2, new Set(c)), null);
});
