import test from 'node:test';
import assert from 'node:assert/strict';
import { RateLimiter } from './rate-limit.js';

test('RateLimiter blocks after max hits within the window and frees after it', () => {
  let now = 1_000_000;
  const rl = new RateLimiter({ now: () => now }, 3, 60_000);
  for (let i = 0; i < 3; i++) {
    assert.equal(rl.retryAfter('u'), 0);
    rl.hit('u');
  }
  assert.equal(rl.retryAfter('u'), 60);
  assert.equal(rl.retryAfter('other'), 0);
  now += 30_000;
  assert.equal(rl.retryAfter('u'), 30);
  now += 30_000;
  assert.equal(rl.retryAfter('u'), 0);
  rl.hit('u');
  rl.reset('u');
  assert.equal(rl.retryAfter('u'), 0);
});
