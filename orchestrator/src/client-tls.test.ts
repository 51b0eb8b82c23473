// TLS for clients: REST and gRPC over TLS with a self-signed certificate made here (openssl), the
// plain-text warning on a non-loopback address, and the refusals of a bad configuration.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ConfigError, createLogger } from '@kloudak/common';
import { freshDatabase, TEST_NATS_URL, type FreshDatabase } from '@kloudak/testkit';
import { isLoopback, loadClientTls, warnIfPlainText } from './client-tls.js';
import { systemClock } from './clock.js';
import { configWith } from './config.js';
import { startOrchestrator, type Orchestrator } from './server.js';
import { startHarness } from './testing/harness.js';
import { GrpcTestClient } from './testing/grpc-client.js';

const ADMIN = { username: 'root-admin', password: 'Admin-Passw0rd-Test' };

const dir = mkdtempSync(join(tmpdir(), 'kloudak-tls-test-'));
const certFile = join(dir, 'cert.pem');
const keyFile = join(dir, 'key.pem');

/** A self-signed certificate for localhost and 127.0.0.1. */
function makeCertificate(): void {
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
}

/** A request over HTTPS trusting only `ca` (undefined: the system's roots). */
function https(method: string, url: string, ca: Buffer | undefined, opts: { token?: string; body?: unknown } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (opts.token) headers['authorization'] = `Bearer ${opts.token}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const req = request(url, { method, headers, ...(ca ? { ca } : {}) }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(opts.body === undefined ? undefined : JSON.stringify(opts.body));
  });
}
const httpsGet = (url: string, ca: Buffer | undefined, token?: string) => https('GET', url, ca, token === undefined ? {} : { token });

/** A log sink that keeps every JSON line. */
function capture(): { lines: Record<string, unknown>[]; write(s: string): void } {
  const lines: Record<string, unknown>[] = [];
  return { lines, write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) };
}

describe('TLS for clients', () => {
  let orch: Orchestrator;
  let fresh: FreshDatabase;
  let ca: Buffer;
  let token: string;
  before(async () => {
    makeCertificate();
    ca = readFileSync(certFile);
    fresh = await freshDatabase();
    const config = configWith({
      port: 0,
      grpcPort: 0,
      agentPort: 0,
      agentHost: '127.0.0.1',
      dataDir: join(dir, 'data'),
      databaseUrl: fresh.url,
      adminUser: ADMIN.username,
      adminPassword: ADMIN.password,
      passwordHashCost: 12,
      logLevel: 'silent',
      natsUrl: TEST_NATS_URL,
      tlsCertFile: certFile,
      tlsKeyFile: keyFile,
    });
    orch = await startOrchestrator(config, createLogger({ component: 'tls-test', level: 'silent' }), systemClock);
    const login = await https('POST', `${orch.url}/api/v1/auth/login`, ca, { body: ADMIN });
    assert.equal(login.status, 200, login.body);
    token = (JSON.parse(login.body) as { token: string }).token;
  });
  after(async () => {
    await orch?.close();
    await fresh?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves REST over HTTPS (and refuses plain HTTP on its port)', async () => {
    assert.equal(orch.tls, true);
    assert.match(orch.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await httpsGet(`${orch.url}/healthz`, ca)).status, 200);
    const me = await httpsGet(`${orch.url}/api/v1/me`, ca, token);
    assert.equal(me.status, 200, me.body);
    assert.equal(JSON.parse(me.body).user.username, ADMIN.username);
    const plain = await new Promise<number | Error>((resolve) => {
      const req = httpRequest(orch.url.replace('https', 'http') + '/healthz', (res) => resolve(res.statusCode ?? 0));
      req.on('error', (e) => resolve(e));
      req.end();
    });
    assert.ok(plain instanceof Error || plain !== 200, `plain HTTP answered ${String(plain)}`);
    // A client that does not trust the certificate is refused by its own check.
    await assert.rejects(httpsGet(`${orch.url}/healthz`, undefined), /self[- ]signed|unable to verify|certificate/i);
  });

  it('serves gRPC over TLS to a client trusting the certificate; a plain-text client gets nothing', async () => {
    const tlsClient = new GrpcTestClient(`127.0.0.1:${orch.grpcPort}`, grpc.credentials.createSsl(ca));
    const login = await tlsClient.call('AuthService', 'Login', ADMIN);
    assert.equal(login.code, grpc.status.OK, login.message);
    const list = await tlsClient.call('InventoryService', 'ListAreas', {}, login.value.token);
    assert.equal(list.code, grpc.status.OK, list.message);
    tlsClient.close();
    const plain = new GrpcTestClient(`127.0.0.1:${orch.grpcPort}`);
    const r = await plain.call('AuthService', 'Login', ADMIN);
    assert.equal(r.code, grpc.status.UNAVAILABLE, r.message);
    plain.close();
  });

  it('warns at start when it listens in plain text on a non-loopback address, not on loopback', async () => {
    const sink = capture();
    const open = await startHarness('pglite', { host: '0.0.0.0', logLevel: 'info' }, undefined, { logDestination: sink });
    try {
      assert.equal(open.orch.tls, false);
      const warned = sink.lines.filter((l) => l['level'] === 'warn' && String(l['msg']).includes('plain text'));
      assert.equal(warned.length, 1, JSON.stringify(sink.lines.map((l) => l['msg'])));
      assert.equal(warned[0]!['host'], '0.0.0.0');
    } finally {
      await open.close();
    }
    const quiet = capture();
    assert.equal(warnIfPlainText(createLogger({ component: 't', destination: quiet }), '127.0.0.1', null), false);
    assert.equal(warnIfPlainText(createLogger({ component: 't', destination: quiet }), '0.0.0.0', { cert: ca, key: Buffer.from('') }), false);
    assert.equal(quiet.lines.length, 0);
  });
});

describe('client TLS configuration', () => {
  it('takes both files or neither, and refuses files that hold no certificate or key', () => {
    assert.equal(loadClientTls({ tlsCertFile: '', tlsKeyFile: '' }), null);
    assert.throws(() => loadClientTls({ tlsCertFile: '/x.pem', tlsKeyFile: '' }), ConfigError);
    assert.throws(() => loadClientTls({ tlsCertFile: '/no/such/cert.pem', tlsKeyFile: '/no/such/key.pem' }), /cannot read the TLS certificate/);
    const d = mkdtempSync(join(tmpdir(), 'kloudak-tls-bad-'));
    try {
      writeFileSync(join(d, 'junk.pem'), 'not a pem');
      assert.throws(() => loadClientTls({ tlsCertFile: join(d, 'junk.pem'), tlsKeyFile: join(d, 'junk.pem') }), /holds no PEM certificate/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) assert.equal(isLoopback(h), true, h);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', 'example.org', '192.168.1.1']) assert.equal(isLoopback(h), false, h);
  });
});
