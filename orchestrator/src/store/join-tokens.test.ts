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

  it('stores SHA-256 of the secret (hex), never the secret', () => {
    // Known answers, computed outside Node (python3 hashlib.sha256): a change of algorithm, encoding
    // or input (say, hashing the whole token, or a truncated secret) fails here.
    assert.equal(secret, 'BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc');
    assert.equal(hashSecret(secret), 'dc4bf80c77473d130fa0de86ba4018fe98bb214005e6a5891d12ba91446f9e81');
    assert.equal(hashSecret('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    // Secrets one character apart hash to unrelated values: nothing of the secret shows in its hash.
    const near = hashSecret(secret.slice(0, -1) + 'd');
    const same = [...near].filter((c, i) => c === hashSecret(secret)[i]).length;
    assert.ok(same < 16, `${same} of 64 hex digits in common`);
  });
});
