import test from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { allocateVlan } from './vlan.js';

function vlan(range: { first: number; last: number }, used: Iterable<number>): number {
  const r = allocateVlan(range, used);
  if (!r.ok) assert.fail(r.message);
  return r.vlan;
}

test('the lowest free id of the range; freed ids are reused first', () => {
  assert.equal(vlan({ first: 100, last: 199 }, []), 100);
  assert.equal(vlan({ first: 100, last: 199 }, [100, 101, 103]), 102);
  assert.equal(vlan({ first: 100, last: 199 }, new Set([100, 101, 102, 103])), 104);
  // Ids of other ranges (another area's, stale ones) do not matter.
  assert.equal(vlan({ first: 100, last: 199 }, [5, 99, 200, 4095, -1, 1.5]), 100);
});

test('never 0, 1 or 4095, even if the range includes them', () => {
  assert.equal(vlan({ first: 0, last: 10 }, []), 2);
  assert.equal(vlan({ first: 1, last: 10 }, [2]), 3);
  assert.equal(vlan({ first: 4094, last: 4095 }, []), 4094);
  const r = allocateVlan({ first: 4094, last: 4095 }, [4094]);
  assert.ok(!r.ok);
  assert.equal(r.size, 1);
  const none = allocateVlan({ first: 0, last: 1 }, []);
  assert.ok(!none.ok);
  assert.equal(none.message, "the area's VLAN range 0-1 has no usable id (2-4094)");
});

test('exhaustion is a typed result naming the range', () => {
  const r = allocateVlan({ first: 100, last: 102 }, [100, 101, 102]);
  assert.ok(!r.ok);
  assert.deepEqual([r.reason, r.size], ['exhausted', 3]);
  assert.equal(r.message, "all 3 VLAN ids of the area's range 100-102 are in use");
});

test('property: the allocated id is in range, usable, unused, and no lower one is free', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 4095 }), fc.integer({ min: 0, max: 60 }), fc.array(fc.integer({ min: 0, max: 4095 }), { maxLength: 80 }), (first, span, used) => {
      const last = Math.min(4095, first + span);
      const set = new Set(used);
      const r = allocateVlan({ first, last }, set);
      const free: number[] = [];
      for (let v = first; v <= last; v++) if (v >= 2 && v <= 4094 && !set.has(v)) free.push(v);
      if (free.length === 0) assert.ok(!r.ok);
      else assert.deepEqual(r, { ok: true, vlan: free[0] });
    }),
    { numRuns: 1000 },
  );
});
