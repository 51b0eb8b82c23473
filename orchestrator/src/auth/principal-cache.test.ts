import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Clock } from '../clock.js';
import { PrincipalCache } from './principal-cache.js';
import type { Principal } from '../app/principal.js';

function fakeClock(start = 1_000_000_000_000): Clock & { advance(ms: number): void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

function principal(userId: string, expMs: number): Principal {
  return { userId, username: `u-${userId}`, email: `${userId}@example.test`, isAdmin: false, jti: `jti-${userId}`, exp: Math.floor(expMs / 1000) };
}

describe('PrincipalCache', () => {
  it('keeps a principal for its TTL, never past the token expiry', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 5000);
    c.put('a', principal('1', clock.now() + 3_600_000), c.generation);
    c.put('b', principal('2', clock.now() + 2000), c.generation);
    assert.equal(c.get('a')?.userId, '1');
    assert.equal(c.get('b')?.userId, '2');
    clock.advance(2000);
    assert.equal(c.get('b'), undefined, 'the token expired');
    assert.equal(c.get('a')?.userId, '1');
    clock.advance(3000);
    assert.equal(c.get('a'), undefined, 'the TTL passed');
    assert.equal(c.get('never'), undefined);
  });

  it('hands out a frozen copy', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 5000);
    const p = principal('1', clock.now() + 60_000);
    c.put('a', p, c.generation);
    p.isAdmin = true;
    const got = c.get('a')!;
    assert.equal(got.isAdmin, false);
    assert.ok(Object.isFrozen(got));
  });

  it('forgets the tokens of the users named, and only those', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 5000);
    const exp = clock.now() + 60_000;
    c.put('a1', principal('1', exp), c.generation);
    c.put('a2', principal('1', exp), c.generation);
    c.put('b', principal('2', exp), c.generation);
    c.forgetUsers(['1']);
    assert.equal(c.get('a1'), undefined);
    assert.equal(c.get('a2'), undefined);
    assert.equal(c.get('b')?.userId, '2');
    c.clear();
    assert.equal(c.get('b'), undefined);
  });

  it('does not store what a lookup read before an invalidation', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 5000);
    const exp = clock.now() + 60_000;
    const before = c.generation;
    c.forgetUsers(['other']); // any invalidation during the lookup, whoever it names
    c.put('a', principal('1', exp), before);
    assert.equal(c.get('a'), undefined);
    c.put('a', principal('1', exp), c.generation);
    assert.equal(c.get('a')?.userId, '1');
  });

  it('caches nothing while paused, and again once resumed', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 5000);
    const exp = clock.now() + 60_000;
    c.put('a', principal('1', exp), c.generation);
    c.pause();
    assert.equal(c.get('a'), undefined, 'pausing forgets everything');
    c.put('b', principal('2', exp), c.generation);
    assert.equal(c.get('b'), undefined);
    const during = c.generation;
    c.resume();
    c.put('b', principal('2', exp), during);
    assert.equal(c.get('b'), undefined, 'a lookup begun while paused is not stored');
    c.put('b', principal('2', exp), c.generation);
    assert.equal(c.get('b')?.userId, '2');
  });

  it('is off with a TTL of 0', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 0);
    c.put('a', principal('1', clock.now() + 60_000), c.generation);
    assert.equal(c.get('a'), undefined);
    assert.equal(c.size, 0);
  });

  it('holds at most maxEntries, dropping expired entries first, then the oldest', () => {
    const clock = fakeClock();
    const c = new PrincipalCache<Principal>(clock, 5000, 3);
    const exp = clock.now() + 60_000;
    c.put('short', principal('0', clock.now() + 1000), c.generation);
    c.put('a', principal('1', exp), c.generation);
    c.put('b', principal('2', exp), c.generation);
    clock.advance(1000);
    c.put('c', principal('3', exp), c.generation);
    assert.equal(c.size, 3);
    assert.deepEqual(['a', 'b', 'c'].map((t) => c.get(t)?.userId), ['1', '2', '3']);
    c.put('d', principal('4', exp), c.generation);
    assert.equal(c.size, 3);
    assert.equal(c.get('a'), undefined, 'the oldest went');
    assert.deepEqual(['b', 'c', 'd'].map((t) => c.get(t)?.userId), ['2', '3', '4']);
  });
});
