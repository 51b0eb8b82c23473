import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, X509Certificate, createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@kloudak/common';
import { CertificateAuthority } from './ca.js';

const log = createLogger({ component: 'test', level: 'silent' });
const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'kloudak-ca-'));
  dirs.push(d);
  return d;
}
const ecPublicPem = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
const HOST = '3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b';

describe('agent CA', () => {
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('creates a P-256 CA once, keeps its key owner-only, and reopens the same one', async () => {
    const dir = tmp();
    const clock = { now: () => Date.now() };
    const a = await CertificateAuthority.open({ dataDir: dir, extraNames: ['orch.example.test', '10.9.8.7'], clock, log });
    const b = await CertificateAuthority.open({ dataDir: dir, extraNames: ['orch.example.test', '10.9.8.7'], clock, log });
    assert.equal(a.fingerprint, b.fingerprint);
    assert.equal(statSync(join(dir, 'ca', 'ca.key')).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, 'ca', 'server.key')).mode & 0o777, 0o600);
    const ca = new X509Certificate(readFileSync(join(dir, 'ca', 'ca.crt')));
    assert.equal(ca.ca, true);
    assert.equal(a.fingerprint, createHash('sha256').update(ca.raw).digest('hex'));
    assert.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    const years = (new Date(ca.validTo).getTime() - Date.now()) / (365 * 86_400_000);
    assert.ok(years > 9.9 && years < 10.1, `CA valid ${years} years`);
    // The server chain is [server, CA]; the server certificate names every address.
    const pair = a.serverKeyPair();
    const certs = pair.chainPem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
    assert.equal(certs.length, 2);
    const server = new X509Certificate(certs[0] as string);
    assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey));
    for (const n of ['DNS:localhost', 'DNS:orch.example.test', 'IP Address:127.0.0.1', 'IP Address:10.9.8.7']) assert.ok(server.subjectAltName?.includes(n), `${n} in ${server.subjectAltName}`);
    assert.equal(b.serverKeyPair().chainPem, pair.chainPem, 'a valid server certificate is reused');
  });

  it('two instances starting together on one directory agree on one CA', async () => {
    const dir = tmp();
    const clock = { now: () => Date.now() };
    const all = await Promise.all([1, 2, 3].map(() => CertificateAuthority.open({ dataDir: dir, extraNames: [], clock, log })));
    assert.equal(new Set(all.map((c) => c.fingerprint)).size, 1);
  });

  it('signs client certificates (CN = host id, clientAuth, 1 year, 128-bit serial) and verifies them', async () => {
    const ca = await CertificateAuthority.open({ dataDir: tmp(), extraNames: [], clock: { now: () => Date.now() }, log });
    const issued = await ca.signClient(HOST, ecPublicPem());
    const cert = new X509Certificate(issued.certPem);
    assert.match(cert.subject, new RegExp(`CN=${HOST}`));
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.2']);
    assert.ok(cert.serialNumber.length >= 31, cert.serialNumber);
    const days = (issued.notAfter.getTime() - Date.now()) / 86_400_000;
    assert.ok(days > 364 && days < 366);
    const id = ca.verifyClient(cert.raw);
    assert.equal(id.hostId, HOST);
    assert.equal(id.serial, issued.serial);
  });

  it('refuses malformed and non-P-256 public keys', async () => {
    const ca = await CertificateAuthority.open({ dataDir: tmp(), extraNames: [], clock: { now: () => Date.now() }, log });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    for (const bad of ['', 'garbage', rsa, p384, '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n']) {
      await assert.rejects(ca.signClient(HOST, bad), (e: Error & { code?: string }) => e.code === 'validation_failed');
    }
  });

  it('refuses certificates of another CA, expired ones, server certificates and garbage', async () => {
    let now = Date.now();
    const clock = { now: () => now };
    const ours = await CertificateAuthority.open({ dataDir: tmp(), extraNames: [], clock, log });
    const other = await CertificateAuthority.open({ dataDir: tmp(), extraNames: [], clock, log });
    const foreign = await other.signClient(HOST, ecPublicPem());
    assert.throws(() => ours.verifyClient(new X509Certificate(foreign.certPem).raw), /not signed by this orchestrator/);
    const server = ours.serverKeyPair().chainPem.split('-----END CERTIFICATE-----')[0] + '-----END CERTIFICATE-----\n';
    assert.throws(() => ours.verifyClient(new X509Certificate(server).raw), /not for client authentication|does not name a host/);
    assert.throws(() => ours.verifyClient(Buffer.from('not a certificate')), /unreadable/);
    const mine = await ours.signClient(HOST, ecPublicPem());
    now += 366 * 86_400_000;
    assert.throws(() => ours.verifyClient(new X509Certificate(mine.certPem).raw), /expired/);
  });
});
