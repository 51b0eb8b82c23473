// The identity's key pair is replaced through a journal (identity.ts): whatever step a crash
// interrupts, loading gives a key and a certificate that belong together, the old pair or the new.
import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { identityPaths, keyMatchesCert, loadIdentity, recoverKeyPair, replaceKeyPair, saveIdentity, type Identity } from './identity.js';

x509.cryptoProvider.set(webcrypto as never);

/** A self-signed certificate over a fresh P-256 key (the journal only cares that key and certificate match). */
async function pair(cn: string): Promise<{ keyPem: string; certPem: string }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({ serialNumber: '01', name: `CN=${cn}`, notBefore: new Date(), notAfter: new Date(Date.now() + 3600_000), signingAlgorithm: alg, keys: keys as never });
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
  return { keyPem, certPem: cert.toString('pem') + '\n' };
}

describe('identity key pair journal', () => {
  let dir: string;
  let old: { keyPem: string; certPem: string };
  let next: { keyPem: string; certPem: string };
  const id = (p: { keyPem: string; certPem: string }): Identity => ({
    hostId: '7d5e3a1c-0000-4000-8000-000000000001',
    hostName: 'h1',
    orchestrator: '127.0.0.1:1',
    caFingerprint: 'ab'.repeat(32),
    clientKeyPem: p.keyPem,
    clientCertPem: p.certPem,
    caCertPem: old.certPem,
  });

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-identity-'));
    old = await pair('old');
    next = await pair('new');
    await saveIdentity(dir, id(old));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('replaces the pair and loads the new one', async () => {
    await replaceKeyPair(dir, next.keyPem, next.certPem);
    const got = await loadIdentity(dir);
    assert.equal(got?.clientCertPem, next.certPem);
    assert.equal(got?.clientKeyPem, next.keyPem);
    assert.equal(existsSync(identityPaths(dir).newKey), false);
  });

  it('refuses a certificate that is not for the key', async () => {
    await assert.rejects(replaceKeyPair(dir, next.keyPem, old.certPem), /not for this key/);
    assert.equal((await loadIdentity(dir))?.clientCertPem, old.certPem);
  });

  it('a crash after the new files were written: the new pair is completed on load', async () => {
    const p = identityPaths(dir);
    writeFileSync(p.newKey, next.keyPem);
    writeFileSync(p.newCert, next.certPem);
    const got = await loadIdentity(dir);
    assert.equal(got?.clientCertPem, next.certPem);
    assert.ok(keyMatchesCert(got!.clientKeyPem, got!.clientCertPem));
  });

  it('a crash between the two renames (new key, old certificate): completed on load', async () => {
    const p = identityPaths(dir);
    writeFileSync(p.newKey, next.keyPem);
    writeFileSync(p.newCert, next.certPem);
    renameSync(p.newKey, p.key);
    assert.equal(keyMatchesCert(readFileSync(p.key, 'utf8'), readFileSync(p.cert, 'utf8')), false);
    const got = await loadIdentity(dir);
    assert.equal(got?.clientCertPem, next.certPem);
    assert.equal(got?.clientKeyPem, next.keyPem);
  });

  it('a crash before the new certificate was written: the old pair stays', async () => {
    writeFileSync(identityPaths(dir).newKey, next.keyPem);
    assert.equal(await recoverKeyPair(dir), 'dropped');
    const got = await loadIdentity(dir);
    assert.equal(got?.clientCertPem, old.certPem);
    assert.equal(existsSync(identityPaths(dir).newKey), false);
  });

  it('a damaged pair is an error, never a silent identity', async () => {
    writeFileSync(identityPaths(dir).key, next.keyPem);
    await assert.rejects(loadIdentity(dir), /do not belong together/);
  });

  it('keeps the join token id in identity.json', async () => {
    await saveIdentity(dir, { ...id(old), joinTokenId: 'f'.repeat(32) });
    assert.equal((await loadIdentity(dir))?.joinTokenId, 'f'.repeat(32));
    const rec = JSON.parse(readFileSync(identityPaths(dir).json, 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(rec).sort(), ['caFingerprint', 'hostId', 'hostName', 'joinTokenId', 'orchestrator']);
    // Keys stay out of identity.json.
    assert.equal(JSON.stringify(rec).includes('PRIVATE KEY'), false);
  });
});
