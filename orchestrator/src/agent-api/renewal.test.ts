// Certificate renewal, revocation (re-key) and re-enrollment on the orchestrator's side, over the
// real agent link (gRPC over mutual TLS) on PostgreSQL, with simulated agents that speak the real
// protocol: the grace of a replaced certificate, the serial checked on every Connect and on
// renewal, a re-key ending the session at once, re-enrollment keeping the host's id and VMs, and
// the REST and gRPC answers to bad input. The real agent's renewal is in test/e2e (certs.e2e).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as pb from '@kloudak/proto/agent';
import { createLogger } from '@kloudak/common';
import { systemClock } from '../clock.js';
import { configWith } from '../config.js';
import { startOrchestrator, type Orchestrator } from '../server.js';
import { startHarness, type Harness } from '../testing/harness.js';
import { createWorld, freshVm, type World } from '../testing/fixtures.js';
import { GrpcTestClient } from '../testing/grpc-client.js';
import { enrollSimAgent, SimAgent, type SimIdentity } from './testing/sim-agent.js';

/** A new P-256 key pair, PEM. */
function newKey(): { keyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

/** A Hello or renewal outcome in words (a SimAgent does not stringify). */
const say = (r: { ok: boolean; code?: number; details?: string }) => (r.ok ? 'ok' : `${grpc.status[r.code ?? 2]} ${r.details}`);

const serialOf = (pem: string) => new X509Certificate(pem).serialNumber.toLowerCase().replace(/^0+(?=.)/, '');

describe('certificate renewal, re-key and re-enrollment (agent link, PostgreSQL)', { timeout: 120_000 }, () => {
  let h: Harness;
  let w: World;
  let n = 0;
  const open: SimAgent[] = [];
  const address = () => `127.0.0.1:${h.orch.agentPort}`;
  const db = () => h.orch.db.client;

  async function token(body: Record<string, unknown>): Promise<string> {
    const r = await h.admin.client.post('/api/v1/hosts/join-tokens', { expiresIn: 600, ...body });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.token as string;
  }

  async function enrolled(): Promise<SimIdentity> {
    return enrollSimAgent({ address: address(), joinToken: await token({ area: w.area.name }), hostName: `renew-${++n}.example.test` });
  }

  /** Say Hello with `id`'s certificate: the HelloAck, or the gRPC error that ended the session. */
  async function hello(id: SimIdentity, at = address()): Promise<{ ok: true; agent: SimAgent } | { ok: false; code: number; details: string }> {
    const agent = new SimAgent({ address: at, identity: id, heartbeatMs: 200, reconnect: false });
    try {
      await agent.start();
      open.push(agent);
      return { ok: true, agent };
    } catch (err) {
      await agent.stop();
      const e = err as { code: number; details: string };
      return { ok: false, code: e.code, details: e.details };
    }
  }

  /** RenewCertificate with `id`'s certificate for a new key: the new identity, or the gRPC error. */
  async function renew(id: SimIdentity, publicKeyPem?: string): Promise<{ ok: true; id: SimIdentity } | { ok: false; code: number; details: string }> {
    const key = newKey();
    const c = new pb.AgentLinkClient(address(), grpc.credentials.createSsl(Buffer.from(id.caPem), Buffer.from(id.keyPem), Buffer.from(id.certPem)), {
      'grpc.use_local_subchannel_pool': 1,
    });
    try {
      const res = await new Promise<pb.RenewCertificateResponse>((resolve, reject) =>
        c.renewCertificate({ publicKeyPem: publicKeyPem ?? key.publicKeyPem }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))),
      );
      return { ok: true, id: { ...id, keyPem: key.keyPem, certPem: res.clientCertificatePem, certificateExpiresAt: res.certificateExpiresAt ?? new Date(0) } };
    } catch (err) {
      const e = err as grpc.ServiceError;
      return { ok: false, code: e.code, details: e.details };
    } finally {
      c.close();
    }
  }

  before(async () => {
    // Short certificates (the minimum, 10 s) and a grace long enough for the test's steps.
    h = await startHarness('postgres', { agentCertLifetimeSeconds: 10, agentCertRenewGraceSeconds: 60, heartbeatIntervalMs: 200, agentLeaseMs: 2000 });
    w = await createWorld(db());
  });
  after(async () => {
    for (const a of open) await a.stop();
    await h?.close();
  });

  it('issues certificates of the configured lifetime', async () => {
    const id = await enrolled();
    const c = new X509Certificate(id.certPem);
    const span = Date.parse(c.validTo) - Date.now();
    assert.ok(span > 5_000 && span <= 11_000, `lifetime ${span} ms`);
    // Back-dated by a tenth of the lifetime only, so the agent does not find it due at once.
    assert.ok(Date.now() - Date.parse(c.validFrom) < 3_000, `validFrom ${c.validFrom}`);
  });

  it('renews for the same host; the replaced certificate stays valid until the new one connects, then is refused', async () => {
    const old = await enrolled();
    const r = await renew(old);
    assert.ok(r.ok, say(r));
    const next = r.id;
    assert.equal(/CN=(.+)/.exec(new X509Certificate(next.certPem).subject)?.[1], old.hostId, 'same host id');
    let row = await db().host.findUniqueOrThrow({ where: { id: old.hostId } });
    assert.equal(row.certSerial, serialOf(next.certPem));
    assert.equal(row.prevCertSerial, serialOf(old.certPem));
    assert.ok(row.certExpiresAt && Math.abs(row.certExpiresAt.getTime() - Date.parse(new X509Certificate(next.certPem).validTo)) < 1000);

    // A crash before the agent saved the new identity: it comes back with the old one, accepted.
    const a = await hello(old);
    assert.ok(a.ok, `old certificate within its grace: ${say(a)}`);
    await a.agent.stop();
    // The new certificate connects, and from then on only it.
    const b = await hello(next);
    assert.ok(b.ok, say(b));
    row = await db().host.findUniqueOrThrow({ where: { id: old.hostId } });
    assert.equal(row.prevCertSerial, null, 'the replaced serial is retired once the new one connected');
    const c = await hello(old);
    assert.ok(!c.ok && c.code === grpc.status.UNAUTHENTICATED && /revoked or replaced/.test(c.details), say(c));
    const d = await renew(old);
    assert.ok(!d.ok && d.code === grpc.status.UNAUTHENTICATED && /revoked or replaced/.test(d.details), say(d));
    await b.agent.stop();
  });

  it('spaces renewals of one host and refuses a bad key with INVALID_ARGUMENT', async () => {
    const id = await enrolled();
    const bad = await renew(id, '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n');
    assert.ok(!bad.ok && bad.code === grpc.status.INVALID_ARGUMENT, say(bad));
    const first = await renew(id);
    assert.ok(first.ok);
    const again = await renew(first.id);
    assert.ok(!again.ok && again.code === grpc.status.RESOURCE_EXHAUSTED, say(again));
  });

  it('refuses renewal without a client certificate', async () => {
    const id = await enrolled();
    const c = new pb.AgentLinkClient(address(), grpc.credentials.createSsl(Buffer.from(id.caPem)));
    const err = await new Promise<grpc.ServiceError | null>((resolve) =>
      c.renewCertificate({ publicKeyPem: newKey().publicKeyPem }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e) => resolve(e)),
    );
    c.close();
    assert.equal(err?.code, grpc.status.UNAUTHENTICATED);
  });

  it('re-key: the session ends at once, the certificate is refused on Connect and on renewal', async () => {
    const id = await enrolled();
    const s = await hello(id);
    assert.ok(s.ok);
    const ended = new Promise<grpc.StatusObject>((resolve) => s.agent.once('end', resolve));
    const t0 = Date.now();
    const r = await h.admin.client.post(`/api/v1/hosts/${id.hostId}/rekey`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.id, id.hostId);
    assert.equal(r.body.certificateExpiresAt, null);
    const st = await ended;
    assert.equal(st.code, grpc.status.UNAUTHENTICATED, st.details);
    assert.ok(Date.now() - t0 < 2000, 'ended at once');
    const c = await hello(id);
    assert.ok(!c.ok && c.code === grpc.status.UNAUTHENTICATED && /revoked or replaced/.test(c.details), say(c));
    const d = await renew(id);
    assert.ok(!d.ok && d.code === grpc.status.UNAUTHENTICATED, say(d));
    const ev = await db().outboxEvent.findFirst({ where: { entityId: id.hostId, event: 'rekeyed' } });
    assert.ok(ev, 'a host.rekeyed event');
  });

  it('re-enrollment with a token made for the host: same id, VMs kept, new certificate, the old one revoked', async () => {
    const id = await enrolled();
    const vm = await freshVm(db(), w, id.hostId);
    const before = await h.admin.client.get(`/api/v1/hosts/${id.hostId}`);
    const s = await hello(id);
    assert.ok(s.ok);
    const ended = new Promise<grpc.StatusObject>((resolve) => s.agent.once('end', resolve));

    const t = await h.admin.client.post('/api/v1/hosts/join-tokens', { host: id.hostId, expiresIn: 600 });
    assert.equal(t.status, 201, JSON.stringify(t.body));
    assert.equal(t.body.hostId, id.hostId);
    assert.equal(t.body.areaId, w.area.id, "the host's area");
    const listed = await h.admin.client.get('/api/v1/hosts/join-tokens?limit=1000');
    assert.equal((listed.body.items as Array<{ id: string; hostId: string | null }>).find((x) => x.id === t.body.id)?.hostId, id.hostId);

    // Mismatches are refused and leave the token unused.
    const wrongName = await enrollSimAgent({ address: address(), joinToken: t.body.token as string, hostName: 'someone-else.example.test' }).catch((e: unknown) => e as grpc.ServiceError);
    assert.equal((wrongName as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED, String((wrongName as Error).message));
    assert.match((wrongName as Error).message, /re-enrolls the host named/);

    const again = await enrollSimAgent({ address: address(), joinToken: t.body.token as string, hostName: id.hostName });
    assert.equal(again.hostId, id.hostId, 'same host id');
    assert.notEqual(serialOf(again.certPem), serialOf(id.certPem));
    const st = await ended;
    assert.equal(st.code, grpc.status.UNAUTHENTICATED, 'the old session ends at once');
    const old = await hello(id);
    assert.ok(!old.ok && old.code === grpc.status.UNAUTHENTICATED, 'the old certificate is revoked');
    const fresh = await hello(again);
    assert.ok(fresh.ok, say(fresh));
    const after = await h.admin.client.get(`/api/v1/hosts/${id.hostId}`);
    assert.equal(after.body.name, before.body.name);
    assert.equal(after.body.vms, 1);
    assert.equal(after.body.createdAt, before.body.createdAt, 'the same host row');
    assert.ok((await db().vm.findUnique({ where: { id: vm.id } }))?.hostId === id.hostId);
    // The token is used now.
    const reuse = await enrollSimAgent({ address: address(), joinToken: t.body.token as string, hostName: id.hostName }).catch((e: unknown) => e as grpc.ServiceError);
    assert.equal((reuse as grpc.ServiceError).code, grpc.status.UNAUTHENTICATED);
    if (fresh.ok) await fresh.agent.stop();
  });

  it('a token for a new host cannot take an existing name; a re-enrollment token refuses another host id', async () => {
    const id = await enrolled();
    const plain = await enrollSimAgent({ address: address(), joinToken: await token({ area: w.area.name }), hostName: id.hostName }).catch((e: unknown) => e as grpc.ServiceError);
    assert.equal((plain as grpc.ServiceError).code, grpc.status.ALREADY_EXISTS);
    assert.match((plain as Error).message, /join token made for that host/);

    const t = await token({ host: id.hostName });
    const key = newKey();
    const c = new pb.AgentLinkClient(address(), grpc.credentials.createSsl(Buffer.from(id.caPem)));
    const call = (hostId: string) =>
      new Promise<grpc.ServiceError | null>((resolve) =>
        c.enroll({ joinToken: t, hostName: id.hostName, publicKeyPem: key.publicKeyPem, agentVersion: 't', hostId }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e) => resolve(e)),
      );
    assert.equal((await call('00000000-0000-4000-8000-000000000000'))?.code, grpc.status.PERMISSION_DENIED);
    assert.equal((await call('not-a-uuid'))?.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(await call(id.hostId), null, 'the right id enrolls (the refusals left the token unused)');
    c.close();
  });

  it('two orchestrators: a re-key or re-enrollment served by one ends the session held by the other, not the new one', async () => {
    // A second instance of the deployment: same database, data directory (the agent CA) and NATS.
    const other: Orchestrator = await startOrchestrator(configWith({ ...h.config, port: 0, agentPort: 0 }), createLogger({ component: 'orchestrator-2', level: 'silent' }), systemClock);
    try {
      const there = `127.0.0.1:${other.agentPort}`;
      // Re-key on the first; the session is on the second.
      const a = await enrolled();
      const s = await hello(a, there);
      assert.ok(s.ok, say(s));
      const ended = new Promise<grpc.StatusObject>((resolve) => s.agent.once('end', resolve));
      const t0 = Date.now();
      assert.equal((await h.admin.client.post(`/api/v1/hosts/${a.hostId}/rekey`)).status, 200);
      const st = await ended;
      assert.equal(st.code, grpc.status.UNAUTHENTICATED, st.details);
      assert.ok(Date.now() - t0 < 3000, `ended on the other instance within ${Date.now() - t0} ms`);

      // Re-enrollment on the first while the old session is on the second; the agent at once
      // connects to the second with its new certificate: that session survives the event.
      const b = await enrolled();
      const old = await hello(b, there);
      assert.ok(old.ok, say(old));
      const again = await enrollSimAgent({ address: address(), joinToken: await token({ host: b.hostId }), hostName: b.hostName });
      const fresh = await hello(again, there);
      assert.ok(fresh.ok, say(fresh));
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(other.agentLink.status(b.hostId).connected, true, 'the session on the new certificate is still open');
      if (fresh.ok) await fresh.agent.stop();
    } finally {
      await other.close();
    }
  });

  it('answers bad input with 4xx JSON errors (REST) and the matching gRPC statuses', async () => {
    const cases: Array<[string, string, unknown, number]> = [
      ['POST', '/api/v1/hosts/join-tokens', { host: 'no-such-host' }, 400],
      ['POST', '/api/v1/hosts/join-tokens', {}, 400],
      ['POST', '/api/v1/hosts/join-tokens', { host: '' }, 400],
      ['POST', '/api/v1/hosts/join-tokens', { host: w.host.id, area: 'no-such-area' }, 400],
      ['POST', '/api/v1/hosts/00000000-0000-4000-8000-000000000000/rekey', undefined, 404],
      ['POST', '/api/v1/hosts/not-a-uuid/rekey', undefined, 400],
    ];
    const other = await createWorld(db());
    cases.push(['POST', '/api/v1/hosts/join-tokens', { host: w.host.id, area: other.area.name }, 400]);
    for (const [method, path, body, status] of cases) {
      const r = await h.admin.client.req(method, path, body);
      assert.equal(r.status, status, `${method} ${path} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
      assert.equal(typeof r.body?.error?.code, 'string', 'a JSON error body');
    }
    const g = new GrpcTestClient(`127.0.0.1:${h.orch.grpcPort}`);
    try {
      const token = h.admin.token;
      assert.equal((await g.call('InventoryService', 'RekeyHost', { id: 'not-a-uuid' }, token)).code, grpc.status.INVALID_ARGUMENT);
      assert.equal((await g.call('InventoryService', 'RekeyHost', { id: '00000000-0000-4000-8000-000000000000' }, token)).code, grpc.status.NOT_FOUND);
      assert.equal((await g.call('InventoryService', 'CreateJoinToken', { host: 'no-such-host' }, token)).code, grpc.status.INVALID_ARGUMENT);
      const ok = await g.call('InventoryService', 'CreateJoinToken', { host: w.host.id }, token);
      assert.equal(ok.code, grpc.status.OK, ok.message);
      assert.equal((ok.value as { hostId?: string }).hostId, w.host.id);
      const rk = await g.call('InventoryService', 'RekeyHost', { id: w.host.id }, token);
      assert.equal(rk.code, grpc.status.OK, rk.message);
    } finally {
      g.close();
    }
  });
});
