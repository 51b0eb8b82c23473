import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Liveness } from './liveness.js';

describe('liveness (fake clock)', () => {
  const H = 'h1';
  function setup() {
    let now = 1_000_000;
    const clock = { now: () => now };
    const l = new Liveness(clock, { heartbeatIntervalMs: 1000, downMarginMs: 5000 });
    return { l, advance: (ms: number) => (now += ms), at: () => now };
  }

  it('goes up on the first heartbeat, suspect after 3 intervals, down only when the last lease surely ended, up again on reconnect', () => {
    const { l, advance } = setup();
    assert.deepEqual(l.alive(H)?.to, 'up');
    l.granted(H, 15_000);
    assert.equal(l.alive(H), null, 'no transition while up');
    advance(2999);
    assert.deepEqual(l.tick(), []);
    advance(1);
    assert.deepEqual(l.tick().map((t) => [t.from, t.to]), [['up', 'suspect']]);
    assert.equal(l.state(H), 'suspect');
    // Lease granted at t0 for 15 s, margin 5 s: down at t0 + 20 s, not a millisecond before.
    advance(20_000 - 3000 - 1);
    assert.deepEqual(l.tick(), []);
    advance(1);
    assert.deepEqual(l.tick().map((t) => [t.from, t.to]), [['suspect', 'down']]);
    assert.deepEqual(l.tick(), [], 'down stays down');
    assert.deepEqual([l.alive(H)?.from, l.state(H)], ['down', 'up']);
  });

  it('measures down from the LAST grant: heartbeats that keep coming keep the host up', () => {
    const { l, advance } = setup();
    l.alive(H);
    for (let i = 0; i < 100; i++) {
      advance(1000);
      l.alive(H);
      l.granted(H, 15_000);
      assert.deepEqual(l.tick(), []);
    }
    advance(19_999);
    assert.deepEqual(l.tick().map((t) => t.to), ['suspect']);
    advance(1);
    assert.deepEqual(l.tick().map((t) => t.to), ['down']);
  });

  it('a suspect host whose heartbeats resume is up again without being down', () => {
    const { l, advance } = setup();
    l.alive(H);
    l.granted(H, 15_000);
    advance(3500);
    assert.deepEqual(l.tick().map((t) => t.to), ['suspect']);
    assert.equal(l.alive(H)?.to, 'up');
    l.granted(H, 15_000);
    advance(1000);
    assert.deepEqual(l.tick(), []);
  });

  it('a lease shorter than 3 intervals makes the host down without passing through suspect', () => {
    const { l, advance } = setup();
    l.alive(H);
    l.granted(H, 1500);
    advance(1500 + 5000);
    assert.deepEqual(l.tick().map((t) => [t.from, t.to]), [['up', 'down']]);
  });

  it('adopted hosts (left up by an earlier run) keep the benefit of a full lease from now', () => {
    const { l, advance } = setup();
    l.adopt(H, 'up', 15_000);
    advance(3000);
    assert.deepEqual(l.tick().map((t) => t.to), ['suspect']);
    advance(16_999);
    assert.deepEqual(l.tick(), []);
    advance(1);
    assert.deepEqual(l.tick().map((t) => t.to), ['down']);
    l.forget(H);
    assert.equal(l.state(H), 'unknown');
  });

  it('measures leases on the monotonic clock: a wall-clock step of an hour (NTP) marks no host down or suspect', () => {
    let wall = 1_000_000;
    let mono = 5_000;
    const l = new Liveness({ now: () => wall, monotonic: () => mono }, { heartbeatIntervalMs: 1000, downMarginMs: 5000 });
    l.alive(H);
    l.granted(H, 15_000);
    wall += 3_600_000;
    assert.deepEqual(l.tick(), [], 'a forward step decides nothing');
    wall -= 7_200_000;
    mono += 2_000;
    l.alive(H);
    l.granted(H, 15_000);
    assert.equal(l.lastHeartbeatAt(H), wall, 'the wall time of the heartbeat is what is shown');
    assert.equal(l.downAt(H), wall + 20_000, 'the lease ends 20 s from now on the wall clock too');
    wall += 3_600_000;
    assert.equal(l.leaseLeftMs(H), 15_000, 'what is left of the lease: monotonic, whatever the wall clock does');
    wall -= 3_600_000;
    mono += 20_000 - 1;
    assert.deepEqual(l.tick().map((t) => t.to), ['suspect']);
    mono += 1;
    assert.deepEqual(l.tick().map((t) => [t.to, t.at]), [['down', wall]], 'down exactly when the lease and margin ran out, monotonic');
  });
});
