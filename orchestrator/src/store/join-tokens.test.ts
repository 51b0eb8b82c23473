import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { formatJoinToken, hashSecret, parseJoinToken } from './join-tokens.js';

describe('join token strings', () => {
  const fp = 'ab'.repeat(32);
  const secret = Buffer.alloc(32, 7).toString('base64url');

  it('round-trips kjt1.<id: 32 hex>.<secret: 43 base64url>.<fingerprint: 64 hex>', () => {
    const id = randomUUID();
    const t = formatJoinToken(id, secret, fp);
    assert.match(t, /^kjt1\.[0-9a-f]{32}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{64}$/);
    assert.deepEqual(parseJoinToken(t), { id, secret, caFingerprint: fp });
  });

  it('refuses anything else', () => {
    const id = randomUUID().replace(/-/g, '');
    for (const bad of [
      '',
      `kjt2.${id}.${secret}.${fp}`,
      `kjt1.${id.slice(1)}.${secret}.${fp}`,
      `kjt1.${id}.${secret}x.${fp}`,
      `kjt1.${id}.${secret}.${fp.toUpperCase()}`,
      `kjt1.${id}.${secret}.${fp} `,
      `kjt1.${id}.${secret.replace(/.$/, '=')}.${fp}`,
      `kjt1.${id}.${secret}`,
    ]) {
      assert.equal(parseJoinToken(bad), null, bad);
    }
  });

  it('stores SHA-256 of the secret, never the secret', () => {
    assert.match(hashSecret(secret), /^[0-9a-f]{64}$/);
    assert.notEqual(hashSecret(secret), secret);
  });
});
