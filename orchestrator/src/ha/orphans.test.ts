import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { OrphanWatch } from './orphans.js';

describe('orphan watch (fake clock)', () => {
  const lease = 15_000;
  const margin = 5000;
  function setup() {
    let wall = 1_700_000_000_000;
    let mono = 1000;
    const clock = { now: () => wall, monotonic: () => mono };
    const w = new OrphanWatch(clock, { leaseMs: lease, downMarginMs: margin });
    return { w, advance: (ms: number) => ((wall += ms), (mono += ms)), stepWall: (ms: number) => (wall += ms) };
  }
  const A = '00000000-0000-4000-8000-00000000000a';
  const H = '00000000-0000-4000-8000-000000000001';

  it('is due exactly lease + margin after the first sight of the vanished owner, never earlier', () => {
    const { w, advance } = setup();
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]), []);
    advance(lease + margin - 1);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]), [], 'a millisecond early');
    advance(1);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]).map((d) => [d.hostId, d.ownerInstanceId]), [[H, A]]);
  });

  it('forgets a host claimed meanwhile, and restarts the count for a different owner', () => {
    const { w, advance } = setup();
    w.observe([{ hostId: H, ownerInstanceId: A }]);
    advance(10_000);
    assert.deepEqual(w.observe([]), [], 'claimed by a live instance: no longer a candidate');
    assert.equal(w.size, 0);
    w.observe([{ hostId: H, ownerInstanceId: A }]);
    advance(lease + margin - 1);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: null }]), [], 'another owner: counted again from now');
    advance(lease + margin - 1);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: null }]), []);
    advance(1);
    assert.equal(w.observe([{ hostId: H, ownerInstanceId: null }]).length, 1);
  });

  it('reset (a new leader) counts from its own first sight: later, never earlier', () => {
    const { w, advance } = setup();
    w.observe([{ hostId: H, ownerInstanceId: A }]);
    advance(lease);
    w.reset();
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]), []);
    advance(margin);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]), [], 'the earlier count is not inherited');
    advance(lease);
    assert.equal(w.observe([{ hostId: H, ownerInstanceId: A }]).length, 1);
  });

  it('counts on the monotonic clock: a wall-clock step of an hour makes nothing due', () => {
    const { w, stepWall } = setup();
    w.observe([{ hostId: H, ownerInstanceId: A }]);
    stepWall(3600_000);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]), []);
    stepWall(-7200_000);
    assert.deepEqual(w.observe([{ hostId: H, ownerInstanceId: A }]), []);
  });
});
