// The agent link end to end: a real orchestrator (PostgreSQL, NATS, gRPC over TLS sockets) and
// simulated agents speaking the real protocol. Timings are shortened (heartbeat 100 ms, lease
// 400 ms, margin 200 ms) so liveness transitions happen within a second.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { connect as natsConnect, type NatsConnection } from '@nats-io/transport-node';
import { createLogger } from '@kloudak/common';
import { TEST_NATS_URL, waitFor } from '@kloudak/testkit';
import * as pb from '@kloudak/proto/agent';
import { startHarness, type Harness } from '../testing/harness.js';
import { freshArea, freshTemplate, freshWorkspace } from '../testing/fixtures.js';
import { createJoinToken } from '../store/join-tokens.js';
import { CertificateAuthority } from './ca.js';
import { enrollSimAgent, PinningError, SimAgent, type SimIdentity } from './testing/sim-agent.js';

const TIMINGS = { heartbeatIntervalMs: 100, agentLeaseMs: 400, agentDownMarginMs: 200 };

/** Everything the orchestrator logged, as text. */
class LogCapture extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

function grpcCode(err: unknown): string {
  const c = (err as { code?: number }).code;
  return c === undefined ? `no code: ${String(err)}` : grpc.status[c] ?? String(c);
}

function statusName(s: grpc.StatusObject | null): string {
  return s ? grpc.status[s.code] ?? String(s.code) : 'none';
}

describe('agent link over TLS on PostgreSQL and NATS', () => {
  let h: Harness;
  let logs: LogCapture;
  let areaId: string;
  let areaName: string;
  let nc: NatsConnection;
  const agents: SimAgent[] = [];
  const secrets: string[] = [];
  let n = 0;

  const db = () => h.orch.db.client;
  const address = () => h.orch.agentUrl;
  const sim = (identity: SimIdentity, opts: Partial<ConstructorParameters<typeof SimAgent>[0]> = {}) => {
    const a = new SimAgent({ address: address(), identity, ...opts });
    agents.push(a);
    return a;
  };
  /** A join token made through the REST API, as an admin would. */
  async function newToken(expiresIn = 600): Promise<{ id: string; token: string }> {
    const r = await h.admin.client.post('/api/v1/hosts/join-tokens', { area: areaName, expiresIn });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    secrets.push(r.body.token, r.body.token.split('.')[2]);
    return r.body;
  }
  async function enrolled(prefix = 'kvm'): Promise<SimIdentity> {
    const t = await newToken();
    const id = await enrollSimAgent({ address: address(), joinToken: t.token, hostName: `${prefix}-${++n}.example.test` });
    secrets.push(id.keyPem.split('\n').slice(1, -2).join(''));
    return id;
  }
  function plainEnroll(req: Partial<pb.EnrollRequest>, caPem: string): Promise<pb.EnrollResponse> {
    const c = new pb.AgentLinkClient(address(), grpc.credentials.createSsl(Buffer.from(caPem)));
    const full: pb.EnrollRequest = { joinToken: '', hostName: `plain-${++n}`, publicKeyPem: '', agentVersion: 't', hostId: '', ...req };
    return new Promise<pb.EnrollResponse>((resolve, reject) =>
      c.enroll(full, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err, r) => (err ? reject(err) : resolve(r))),
    ).finally(() => c.close());
  }
  const publicPem = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();

  before(async () => {
    logs = new LogCapture();
    h = await startHarness('postgres', { ...TIMINGS, logLevel: 'debug' }, undefined, { helloTimeoutMs: 400, livenessTickMs: 25, logDestination: logs });
    ({ id: areaId, name: areaName } = await freshArea(db()));
    nc = await natsConnect({ servers: TEST_NATS_URL });
  });
  after(async () => {
    for (const a of agents) await a.stop();
    await nc?.close();
    await h?.close();
  });

  describe('enrollment', () => {
    it('enrolls a host with a join token: pinned CA, certificate for its id, host in the token\'s area, token used', async () => {
      const t = await newToken();
      assert.match(t.token, /^kjt1\.[0-9a-f]{32}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{64}$/);
      assert.ok(t.token.endsWith(h.orch.ca.fingerprint));
      const id = await enrollSimAgent({ address: address(), joinToken: t.token, hostName: 'first.example.test', agentVersion: '0.4.1' });
      assert.equal(id.caPem, h.orch.ca.caCertPem);
      const host = await db().host.findUniqueOrThrow({ where: { id: id.hostId } });
      assert.deepEqual([host.name, host.areaId, host.state, host.agentVersion], ['first.example.test', areaId, 'unknown', '0.4.1']);
      assert.ok(host.certSerial && host.certExpiresAt);
      const row = await db().joinToken.findUniqueOrThrow({ where: { id: t.id } });
      assert.equal(row.usedByHostId, id.hostId);
      assert.ok(row.usedAt);
      // What is stored is SHA-256 of the secret, and no column holds the secret or the token.
      const secret = t.token.split('.')[2] as string;
      assert.equal(row.secretHash, createHash('sha256').update(secret, 'utf8').digest('hex'));
      const stored = JSON.stringify(row);
      assert.ok(!stored.includes(secret) && !stored.includes(t.token), 'neither the secret nor the token is stored');
      const list = await h.admin.client.get('/api/v1/hosts/join-tokens?limit=1000');
      assert.equal(list.status, 200);
      const mine = list.body.items.find((x: { id: string }) => x.id === t.id);
      assert.deepEqual([mine.used, mine.usedByHostId, mine.revoked, mine.expired], [true, id.hostId, false, false]);
      assert.ok(!JSON.stringify(list.body).includes(t.token.split('.')[2] as string), 'no secret in the list');
      // And it connects with what it got.
      const a = sim(id);
      const ack = await a.start();
      assert.equal(ack.hostId, id.hostId);
      await a.stop();
    });

    it('refuses a reused, an expired, a revoked and a wrong-secret token with UNAUTHENTICATED, without echoing it', async () => {
      const used = await newToken();
      await enrollSimAgent({ address: address(), joinToken: used.token, hostName: `used-${++n}` });
      const expired = await createJoinToken(db(), { areaId, expiresAt: new Date(Date.now() - 1000), createdById: null, caFingerprint: h.orch.ca.fingerprint });
      secrets.push(expired.token);
      const revoked = await newToken();
      assert.equal((await h.admin.client.del(`/api/v1/hosts/join-tokens/${revoked.id}`)).status, 204);
      assert.equal((await h.admin.client.del(`/api/v1/hosts/join-tokens/${revoked.id}`)).status, 204, 'revoking twice is fine');
      assert.equal((await h.admin.client.del(`/api/v1/hosts/join-tokens/${used.id}`)).status, 409, 'a used token cannot be revoked');
      const good = await newToken();
      const wrongSecret = good.token.replace(/\.([A-Za-z0-9_-]{43})\./, (_m, s: string) => `.${s[0] === 'A' ? 'B' : 'A'}${s.slice(1)}.`);
      for (const [what, token] of [
        ['reused', used.token],
        ['expired', expired.token],
        ['revoked', revoked.token],
        ['wrong secret', wrongSecret],
        ['garbage', 'kjt1.nope'],
      ] as const) {
        const err = await plainEnroll({ joinToken: token, publicKeyPem: publicPem() }, h.orch.ca.caCertPem).then(
          () => assert.fail(`${what} token accepted`),
          (e: unknown) => e,
        );
        assert.equal(grpcCode(err), 'UNAUTHENTICATED', `${what}: ${String(err)}`);
        const details = (err as { details?: string }).details ?? '';
        assert.ok(!details.includes(token.split('.')[2] ?? token), `${what}: the token is not echoed`);
      }
      // The wrong-secret attempt did not burn the token.
      const ok = await enrollSimAgent({ address: address(), joinToken: good.token, hostName: `good-${++n}` });
      assert.ok(ok.hostId);
    });

    it('refuses a taken host name (ALREADY_EXISTS, token still usable) and a malformed key or name (INVALID_ARGUMENT)', async () => {
      const t = await newToken();
      const err = await plainEnroll({ joinToken: t.token, hostName: 'first.example.test', publicKeyPem: publicPem() }, h.orch.ca.caCertPem).catch((e: unknown) => e);
      assert.equal(grpcCode(err), 'ALREADY_EXISTS');
      for (const [hostName, publicKeyPem] of [
        [`ok-${++n}`, 'not a key'],
        [`ok-${++n}`, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString()],
        ['bad name!', publicPem()],
        ['', publicPem()],
        ['a'.repeat(300), publicPem()],
      ] as const) {
        const e = await plainEnroll({ joinToken: t.token, hostName, publicKeyPem }, h.orch.ca.caCertPem).catch((x: unknown) => x);
        assert.equal(grpcCode(e), 'INVALID_ARGUMENT', `${hostName.slice(0, 20)} / ${publicKeyPem.slice(0, 30)}`);
      }
      assert.equal((await db().joinToken.findUniqueOrThrow({ where: { id: t.id } })).usedAt, null);
      const r = await plainEnroll({ joinToken: t.token, hostName: `renamed-${++n}`, publicKeyPem: publicPem() }, h.orch.ca.caCertPem);
      assert.ok(r.hostId);
    });

    it('one token enrolls one host even when two agents race for it', async () => {
      const t = await newToken();
      const results = await Promise.allSettled([1, 2, 3, 4].map(() => plainEnroll({ joinToken: t.token, publicKeyPem: publicPem() }, h.orch.ca.caCertPem)));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      for (const r of results) if (r.status === 'rejected') assert.equal(grpcCode(r.reason), 'UNAUTHENTICATED');
    });

    it('pins the CA: a token made for another orchestrator fails before anything is sent', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'kloudak-other-ca-'));
      try {
        const other = await CertificateAuthority.open({ dataDir: dir, extraNames: [], clock: { now: () => Date.now() }, log: createLogger({ component: 't', level: 'silent' }) });
        const t = await newToken();
        const forged = t.token.replace(/[0-9a-f]{64}$/, other.fingerprint);
        await assert.rejects(enrollSimAgent({ address: address(), joinToken: forged, hostName: `pin-${++n}` }), PinningError);
        assert.equal((await db().joinToken.findUniqueOrThrow({ where: { id: t.id } })).usedAt, null, 'the token was not sent');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('transport and session security', () => {
    it('refuses a plaintext client', async () => {
      const c = new pb.AgentLinkClient(address(), grpc.credentials.createInsecure());
      const err = await new Promise<unknown>((resolve) =>
        c.enroll({ joinToken: 'x', hostName: 'y', publicKeyPem: '', agentVersion: '', hostId: '' }, new grpc.Metadata(), { deadline: Date.now() + 3000 }, (e) => resolve(e)),
      );
      c.close();
      assert.ok(err, 'a plaintext call must fail');
      assert.ok(['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'INTERNAL'].includes(grpcCode(err)), grpcCode(err));
    });

    it('ends Connect with UNAUTHENTICATED for no certificate, a foreign CA\'s or an expired one', async () => {
      const id = await enrolled();
      const dir = mkdtempSync(join(tmpdir(), 'kloudak-other-ca-'));
      try {
        const silent = createLogger({ component: 't', level: 'silent' });
        const other = await CertificateAuthority.open({ dataDir: dir, extraNames: [], clock: { now: () => Date.now() }, log: silent });
        const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
        const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
        const spki = publicKey.export({ type: 'spki', format: 'pem' }).toString();
        const foreign = await other.signClient(id.hostId, spki);
        // Signed by OUR CA (same directory), but back in time: expired a year ago.
        const past = await CertificateAuthority.open({ dataDir: h.config.dataDir, extraNames: [], clock: { now: () => Date.now() - 2 * 366 * 86_400_000 }, log: silent });
        const expired = await past.signClient(id.hostId, spki);
        const ca = Buffer.from(id.caPem);
        for (const [what, creds] of [
          ['no certificate', grpc.credentials.createSsl(ca)],
          ['foreign CA', grpc.credentials.createSsl(ca, Buffer.from(keyPem), Buffer.from(foreign.certPem))],
          ['expired', grpc.credentials.createSsl(ca, Buffer.from(keyPem), Buffer.from(expired.certPem))],
        ] as const) {
          const a = sim(id, { credentials: creds, reconnect: false });
          const err = await a.start().then(() => assert.fail(`${what}: accepted`), (e: unknown) => e);
          assert.equal(grpcCode(err), 'UNAUTHENTICATED', `${what}: ${String(err)}`);
          assert.equal(a.stats.helloAcks, 0);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('refuses a deleted host (PERMISSION_DENIED), and ends the session of a host deleted while connected', async () => {
      const id = await enrolled();
      const a = sim(id, { reconnect: false });
      await a.start();
      const ended = new Promise<grpc.StatusObject>((resolve) => a.once('end', resolve));
      assert.equal((await h.admin.client.del(`/api/v1/hosts/${id.hostId}`)).status, 204);
      assert.equal(statusName(await ended), 'PERMISSION_DENIED');
      const again = sim(id, { reconnect: false });
      const err = await again.start().then(() => assert.fail('deleted host accepted'), (e: unknown) => e);
      assert.equal(grpcCode(err), 'PERMISSION_DENIED');
    });

    it('ends a session without Hello in time, or with a Hello for another host, with INVALID_ARGUMENT', async () => {
      const id = await enrolled();
      const silent = sim(id, { skipHello: true, reconnect: false });
      const started = Date.now();
      const e1 = await silent.start().then(() => assert.fail('no Hello accepted'), (e: unknown) => e);
      assert.equal(grpcCode(e1), 'INVALID_ARGUMENT');
      assert.ok(Date.now() - started >= 350, 'not before the Hello timeout');
      const other = await enrolled();
      const liar = sim(id, { hello: { hostId: other.hostId }, reconnect: false });
      assert.equal(grpcCode(await liar.start().catch((e: unknown) => e)), 'INVALID_ARGUMENT');
      const wrongName = sim(id, { hello: { hostName: 'someone-else' }, reconnect: false });
      assert.equal(grpcCode(await wrongName.start().catch((e: unknown) => e)), 'INVALID_ARGUMENT');
    });

    it('keeps one session per host: a newer Connect replaces the older one with ABORTED', async () => {
      const id = await enrolled();
      const a = sim(id, { reconnect: false });
      await a.start();
      const ended = new Promise<grpc.StatusObject>((resolve) => a.once('end', resolve));
      const b = sim(id, { reconnect: false });
      await b.start();
      const s = await ended;
      assert.equal(statusName(s), 'ABORTED');
      assert.match(s.details, /replaced by a newer session/);
      assert.equal(h.orch.agentLink.status(id.hostId).connected, true);
      await b.stop();
    });
  });

  describe('session', () => {
    it('answers HelloAck with the interval and a lease, every heartbeat with a LeaseGrant of its sequence, and reconciles the host', async () => {
      const id = await enrolled();
      const grants: pb.LeaseGrant[] = [];
      const a = sim(id, {
        capacity: { cpuCount: 24, memoryBytes: 3n * (1n << 40n), diskBytes: 1n << 53n },
        hello: { agentVersion: '9.9.9', inventory: { domains: [{ name: 'kloudak-x', uuid: 'u', vmId: 'x', state: pb.DomainState.DOMAIN_STATE_RUNNING, vcpus: 2, memoryBytes: 1n << 30n }], volumes: [], ovsPorts: [] } },
      });
      a.on('lease', (g: pb.LeaseGrant) => grants.push(g));
      const ack = await a.start();
      assert.deepEqual([ack.heartbeatIntervalMs, ack.lease?.durationMs, ack.lease?.heartbeatSequence], [100, 400, 0n]);
      await waitFor(async () => grants.length >= 5, 5000, 'five lease grants');
      assert.deepEqual(grants.slice(0, 5).map((g) => g.heartbeatSequence), [1n, 2n, 3n, 4n, 5n]);
      assert.ok(grants.every((g) => g.durationMs === 400 && g.grantedAt instanceof Date));
      const host = await db().host.findUniqueOrThrow({ where: { id: id.hostId } });
      assert.deepEqual([host.cpuCount, host.memoryBytes, host.diskBytes, host.ramMb, host.agentVersion], [24, 3n * (1n << 40n), 1n << 53n, 3 * 1024 * 1024, '9.9.9']);
      assert.ok(host.lastHelloAt && host.agentStartedAt);
      assert.equal(h.orch.agentLink.inventory(id.hostId)?.domains[0]?.vmId, 'x');
      await a.stop();
    });

    it('drives liveness up → suspect → down → up, writes Host.state and publishes each change on NATS', async () => {
      const id = await enrolled();
      // The enrollment's transaction wrote the host's creation to the outbox.
      const created = await db().outboxEvent.findFirst({ where: { entityId: id.hostId, event: 'created' } });
      assert.equal(created?.subject, 'kloudak.infra.host.created');
      assert.equal(created?.state, 'unknown');
      const seen: { hostId: string; name: string; from: string; to: string; at: string }[] = [];
      const sub = nc.subscribe('kloudak.infra.host.state');
      void (async () => {
        // The relay publishes the outbox rows the state changes wrote: the event shape of every interface.
        for await (const m of sub) {
          const e = m.json<{ id: string; name: string; state: string; data: { from: string; at: string } }>();
          if (e.id === id.hostId) seen.push({ hostId: e.id, name: e.name, from: e.data.from, to: e.state, at: e.data.at });
        }
      })();
      await nc.flush();
      const a = sim(id, { reconnect: false });
      await a.start();
      await waitFor(async () => seen.some((e) => e.to === 'up'), 5000, 'up on NATS');
      assert.equal((await db().host.findUniqueOrThrow({ where: { id: id.hostId } })).state, 'up');
      const cutAt = Date.now();
      await a.stop();
      await waitFor(async () => seen.some((e) => e.to === 'down'), 5000, 'down on NATS');
      const downAfter = Date.now() - cutAt;
      // Never down before the last lease (400 ms) + margin (200 ms) has passed.
      assert.ok(downAfter >= 550, `down after ${downAfter} ms`);
      assert.deepEqual(seen.map((e) => `${e.from}>${e.to}`), ['unknown>up', 'up>suspect', 'suspect>down']);
      assert.equal(seen[0]?.name, id.hostName);
      assert.ok(!Number.isNaN(Date.parse(seen[2]?.at ?? '')));
      await h.orch.agentLink.settled();
      const row = await db().host.findUniqueOrThrow({ where: { id: id.hostId } });
      assert.equal(row.state, 'down');
      assert.ok(row.lastHeartbeatAt);
      const b = sim(id, { reconnect: false });
      await b.start();
      await waitFor(async () => seen.length === 4, 5000, 'up again');
      assert.equal(seen[3]?.from, 'down');
      assert.equal(seen[3]?.to, 'up');
      await b.stop();
      sub.unsubscribe();
    });

    it('stores and publishes fence reports, and publishes domain events', async () => {
      const id = await enrolled();
      const sub = nc.subscribe('kloudak.infra.fence.reported', { max: 1 });
      const got = (async () => {
        for await (const m of sub) return m.json<Record<string, unknown>>();
        return null;
      })();
      const evSub = nc.subscribe('kloudak.infra.vm.domain', { max: 1 });
      const domainEvent = (async () => {
        for await (const m of evSub) return m.json<Record<string, unknown>>();
        return null;
      })();
      await nc.flush();
      // Two VMs placed on this host: what an agent reports counts only for its own host's VMs.
      const [tpl, ws] = await Promise.all([freshTemplate(db()), freshWorkspace(db(), [])]);
      const vmRow = () => db().vm.create({ data: { name: `vm-${++n}`, workspaceId: ws.id, areaId, templateId: tpl.id, hostId: id.hostId, cpu: 1, ramMb: 256, diskGb: 1, state: 'running' } });
      const [v9, v1] = [(await vmRow()).id, (await vmRow()).id];
      const a = sim(id);
      await a.start();
      a.send({ body: { $case: 'domainEvent', domainEvent: { vmId: v9, domainName: `kloudak-${v9}`, event: pb.DomainEventType.DOMAIN_EVENT_TYPE_CRASHED, detail: 'crashed', occurredAt: new Date() } } });
      const de = await domainEvent;
      assert.deepEqual([(de?.['data'] as Record<string, unknown>)['hostId'], de?.['id'], de?.['state']], [id.hostId, v9, 'crashed']);
      const fencedAt = new Date(Date.now() - 5000);
      a.send({ body: { $case: 'fenceReport', fenceReport: { domains: [{ domainName: `kloudak-${v1}`, vmId: v1 }], fencedAt, leaseExpiredAt: fencedAt, reason: 'lease expired' } } });
      const ev = await got;
      const data = ev?.['data'] as Record<string, unknown>;
      assert.equal(data['hostId'], id.hostId);
      assert.equal(ev?.['name'], id.hostName);
      assert.equal(data['reason'], 'lease expired');
      assert.deepEqual(data['domains'], [{ domainName: `kloudak-${v1}`, vmId: v1 }]);
      const rows = await db().fenceReport.findMany({ where: { hostId: id.hostId } });
      assert.equal(rows.length, 1);
      assert.equal(rows[0]?.fencedAt.getTime(), fencedAt.getTime());
      await a.stop();
    });

    it('keeps usage in memory for GET /hosts/{id} and downsamples it to one row per minute', async () => {
      const id = await enrolled();
      let cpu = 0;
      const a = sim(id, { heartbeatMs: 20, usage: () => ({ cpuPercent: (cpu = (cpu + 10) % 100), memoryUsedBytes: 3n << 30n, memoryTotalBytes: 8n << 30n }) });
      await a.start();
      await waitFor(async () => a.stats.leaseGrants >= 40, 10_000, '40 heartbeats answered');
      await a.stop();
      const got = await h.admin.client.get(`/api/v1/hosts/${id.hostId}`);
      assert.equal(got.status, 200);
      assert.equal(got.body.state, 'up');
      assert.equal(got.body.capacity.memoryBytes, 32 * 2 ** 30);
      assert.equal(got.body.usage.memoryUsedBytes, 3 * 2 ** 30);
      assert.equal(got.body.usage.memoryTotalBytes, 8 * 2 ** 30);
      assert.ok(got.body.lastHeartbeatAt);
      await h.orch.agentLink.usage.flushDue(true);
      const rows = await db().hostUsageSample.findMany({ where: { hostId: id.hostId } });
      const total = rows.reduce((s, r) => s + r.samples, 0);
      assert.ok(rows.length >= 1 && rows.length <= 2, `${rows.length} rows for ${total} heartbeats`);
      assert.ok(total >= 40, `${total} samples`);
      assert.ok(rows.every((r) => r.resolution === 60 && r.at.getUTCSeconds() === 0 && r.at.getUTCMilliseconds() === 0));
      assert.ok(rows.every((r) => r.memUsedMb === 3072 && r.memTotalMb === 8192));
      const series = await h.admin.client.get(`/api/v1/hosts/${id.hostId}/usage?from=${new Date(Date.now() - 600_000).toISOString()}`);
      assert.equal(series.status, 200, JSON.stringify(series.body));
      assert.equal(series.body.resolution, 60);
      assert.equal(series.body.points.reduce((s: number, p: { samples: number }) => s + p.samples, 0), total);
      for (const bad of ['from=yesterday', 'to=2026-13-45T00:00:00Z', `from=${new Date().toISOString()}&to=${new Date(Date.now() - 1000).toISOString()}`, 'from=2020-01-01T00:00:00Z', 'x=1']) {
        const r = await h.admin.client.get(`/api/v1/hosts/${id.hostId}/usage?${bad}`);
        assert.equal(r.status, 400, `${bad}: ${r.status}`);
      }
      assert.equal((await h.admin.client.get('/api/v1/hosts/00000000-0000-4000-8000-000000000000/usage')).status, 404);
    });
  });

  describe('commands', () => {
    const vm = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

    it('delivers a command and its result (with payload)', async () => {
      const id = await enrolled();
      const a = sim(id, {
        onCommand: (c) =>
          c.action?.$case === 'getInventory'
            ? { ok: true, payload: { $case: 'inventory', inventory: { domains: [{ name: 'kloudak-a', uuid: 'u', vmId: 'a', state: pb.DomainState.DOMAIN_STATE_SHUTOFF, vcpus: 1, memoryBytes: 5n }], volumes: [], ovsPorts: [] } } }
            : { ok: false, error: { code: pb.ErrorCode.ERROR_CODE_NOT_FOUND, message: 'no domain' } },
      });
      await a.start();
      const r = await h.orch.agents.sendCommand(id.hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 5000 });
      assert.equal(r.ok, true);
      assert.deepEqual(r.inventory?.domains, [{ name: 'kloudak-a', uuid: 'u', vmId: 'a', state: 'shutoff', vcpus: 1, memoryBytes: 5 }]);
      const f = await h.orch.agents.sendCommand(id.hostId, { vmId: vm(1), action: { kind: 'startVm' } }, { deadline: Date.now() + 5000 });
      assert.deepEqual([f.ok, f.error?.code, f.error?.message], [false, 'not_found', 'no domain']);
      await a.stop();
    });

    it('sends a pending command again on the next session after the stream is cut, and gets its one result', async () => {
      const id = await enrolled();
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const a = sim(id, {
        reconnectDelayMs: 50,
        onCommand: async () => {
          await gate;
          return { ok: true };
        },
      });
      await a.start();
      const received = new Promise<pb.Command>((resolve) => a.once('command', resolve));
      const result = h.orch.agents.sendCommand(id.hostId, { vmId: vm(2), action: { kind: 'stopVm', timeoutMs: 0, force: true } }, { deadline: Date.now() + 10_000 });
      const first = await received;
      const resent = new Promise<pb.Command>((resolve) => a.once('command', resolve));
      a.cut();
      const again = await resent;
      assert.equal(again.commandId, first.commandId, 'the same command id');
      release();
      const r = await result;
      assert.equal(r.ok, true);
      assert.equal(r.commandId, first.commandId);
      assert.deepEqual([a.stats.commandsReceived, a.stats.commandsRun, a.stats.sessions >= 2], [2, 1, true]);
      await a.stop();
    });

    it('waits for a session when the host has none, and never has two commands of one VM in flight', async () => {
      const id = await enrolled();
      const running = new Map<string, number>();
      const log: string[] = [];
      let maxPerVm = 0;
      const a = sim(id, {
        onCommand: async (c) => {
          const k = c.vmId;
          running.set(k, (running.get(k) ?? 0) + 1);
          maxPerVm = Math.max(maxPerVm, running.get(k) ?? 0);
          log.push(`start ${k.slice(-1)}`);
          await new Promise((r) => setTimeout(r, 80));
          log.push(`end ${k.slice(-1)}`);
          running.set(k, (running.get(k) ?? 1) - 1);
          return { ok: true };
        },
      });
      const deadline = Date.now() + 10_000;
      const send = (v: string) => h.orch.agents.sendCommand(id.hostId, { vmId: v, action: { kind: 'rebootVm' } }, { deadline });
      // Sent before the agent connects: they wait for its session.
      const all = [send(vm(3)), send(vm(3)), send(vm(3)), send(vm(4))];
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(a.stats.commandsReceived, 0);
      await a.start();
      const results = await Promise.all(all);
      assert.ok(results.every((r) => r.ok));
      assert.equal(new Set(results.map((r) => r.commandId)).size, 4);
      assert.equal(maxPerVm, 1, log.join(', '));
      // VM 4's command ran beside VM 3's first one, not after all of them.
      assert.ok(log.indexOf('start 4') < log.indexOf('end 3'), log.join(', '));
      await a.stop();
    });

    it('answers DEADLINE_EXCEEDED when no result comes in time, then lets the next command of that VM go', async () => {
      const id = await enrolled();
      let calls = 0;
      const a = sim(id, {
        onCommand: async () => {
          calls += 1;
          if (calls === 1) await new Promise(() => undefined); // never answers
          return { ok: true };
        },
      });
      await a.start();
      const started = Date.now();
      const stuck = h.orch.agents.sendCommand(id.hostId, { vmId: vm(5), action: { kind: 'startVm' } }, { deadline: Date.now() + 300 });
      const next = h.orch.agents.sendCommand(id.hostId, { vmId: vm(5), action: { kind: 'startVm' } }, { deadline: Date.now() + 5000 });
      const r = await stuck;
      assert.deepEqual([r.ok, r.error?.code], [false, 'deadline_exceeded']);
      assert.ok(Date.now() - started >= 290);
      assert.equal((await next).ok, true);
      // No session at all: the deadline still answers.
      const nobody = await enrolled();
      const none = await h.orch.agents.sendCommand(nobody.hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 200 });
      assert.equal(none.error?.code, 'deadline_exceeded');
      await a.stop();
    });
  });

  it('stops gracefully: sessions end with UNAVAILABLE, the agent port closes, pending commands are answered', async () => {
    const own = await startHarness('postgres', TIMINGS);
    try {
      const area = await freshArea(own.orch.db.client);
      const r = await own.admin.client.post('/api/v1/hosts/join-tokens', { area: area.id });
      const id = await enrollSimAgent({ address: own.orch.agentUrl, joinToken: r.body.token, hostName: 'leaving' });
      const a = new SimAgent({ address: own.orch.agentUrl, identity: id, reconnect: false, onCommand: () => new Promise(() => undefined) });
      agents.push(a);
      await a.start();
      const ended = new Promise<grpc.StatusObject>((resolve) => a.once('end', resolve));
      const pending = own.orch.agents.sendCommand(id.hostId, { action: { kind: 'getInventory' } }, { deadline: Date.now() + 60_000 });
      await waitFor(async () => a.stats.commandsReceived === 1, 5000, 'the command reached the agent');
      const started = Date.now();
      await own.close();
      assert.ok(Date.now() - started < 5000, 'close does not wait for the streams to end by themselves');
      assert.equal(statusName(await ended), 'UNAVAILABLE');
      assert.equal((await pending).error?.code, 'unavailable');
      const again = new SimAgent({ address: own.orch.agentUrl, identity: id, reconnect: false });
      agents.push(again);
      assert.equal(grpcCode(await again.start().catch((e: unknown) => e)), 'UNAVAILABLE');
    } finally {
      await own.close();
    }
  });

  it('never logs join token secrets or private keys', async () => {
    await h.orch.agentLink.settled();
    assert.match(logs.text, /"msg":"host enrolled"/, 'enrollments are logged');
    assert.match(logs.text, /"msg":"enrollment refused"/, 'refusals are logged');
    assert.match(logs.text, /"component":"agent-link"/);
    const caDir = join(h.config.dataDir, 'ca');
    const keyBodies = ['ca.key', 'server.key'].map((f) => readFileSync(join(caDir, f), 'utf8').split('\n').slice(1, -2).join(''));
    for (const s of [...secrets, ...keyBodies]) {
      assert.ok(s.length >= 40, 'a real secret');
      assert.ok(!logs.text.includes(s), `the log contains a secret: ${s.slice(0, 8)}…`);
      // PEM bodies are split in 64-character lines: look for any line of it, too.
      for (const line of s.match(/.{64}/g) ?? []) assert.ok(!logs.text.includes(line), `the log contains part of a key: ${line.slice(0, 8)}…`);
    }
  });
});
