// The event outbox and its relay, on PostgreSQL and PGlite, with a real NATS server of the test's
// own (so it can be stopped): events are written in the transaction of their change (none when
// it rolls back), published to JetStream in sequence order exactly once (a relay that published
// but did not mark publishes again; the stream drops the duplicates), requests go on while NATS
// is down and their events go out when it returns, and no payload carries a secret.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import WebSocket from 'ws';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { waitFor } from '@kloudak/testkit';
import { ENGINES, PASSWORD, startHarness, type Harness } from '../testing/harness.js';
import { TestNatsServer } from '../testing/nats-server.js';
import { uniq } from '../testing/fixtures.js';
import { transaction } from '../store/db.js';
import { appendEvents } from '../store/outbox.js';
import { EVENT_STREAM, secretKeyIn, toEvent, type KloudakEvent } from './event.js';

/** Every event of the stream, in stream order. */
async function streamEvents(jsm: JetStreamManager): Promise<KloudakEvent[]> {
  const info = await jsm.streams.info(EVENT_STREAM);
  const out: KloudakEvent[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(EVENT_STREAM, { seq }).catch(() => null);
    if (m) out.push(m.json<KloudakEvent>());
  }
  return out;
}

for (const engine of ENGINES) {
  describe(`event outbox and relay on ${engine}`, () => {
    let nats: TestNatsServer;
    let h: Harness;
    let nc: NatsConnection;
    let jsm: JetStreamManager;
    const db = () => h.orch.db.client;

    before(async () => {
      nats = await TestNatsServer.start();
      h = await startHarness(engine, { natsUrl: nats.url, eventPollMs: 200 });
      nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
      jsm = await jetstreamManager(nc);
    });
    after(async () => {
      await nc?.close();
      await h?.close();
      await nats?.close();
    });

    it('creates the stream with the configured retention and publishes every change in sequence order', async () => {
      const info = await jsm.streams.info(EVENT_STREAM);
      assert.equal(info.config.max_age, 86400 * 1e9);
      assert.deepEqual([...info.config.subjects].sort(), ['kloudak.infra.>', 'kloudak.ws.>']);
      const name = uniq('ws');
      const r = await h.admin.client.post('/api/v1/workspaces', { name });
      assert.equal(r.status, 201);
      await h.admin.client.patch(`/api/v1/workspaces/${name}`, { description: 'x' });
      const last = await db().outboxEvent.findFirstOrThrow({ orderBy: { seq: 'desc' } });
      await waitFor(async () => (await db().outboxEvent.count({ where: { publishedAt: null } })) === 0, 5000, 'everything published');
      const events = await streamEvents(jsm);
      const seqs = events.map((e) => e.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'stream order is sequence order');
      assert.equal(new Set(seqs).size, seqs.length, 'no duplicates');
      const rows = await db().outboxEvent.findMany({ orderBy: { seq: 'asc' } });
      assert.deepEqual(seqs, rows.map((x) => Number(x.seq)), 'every row once');
      const mine = events.filter((e) => e.entity === 'workspace' && e.name === name);
      assert.deepEqual(mine.map((e) => e.event), ['created', 'updated']);
      assert.equal(mine[0]?.workspace, mine[0]?.id);
      assert.deepEqual(events.at(-1), toEvent(last));
    });

    it('writes nothing when the change rolls back', async () => {
      const before = await db().outboxEvent.count();
      await assert.rejects(
        transaction(db(), async (tx) => {
          await appendEvents(tx, [{ workspaceId: null, entity: 'area', entityId: 'x', event: 'created' }]);
          throw new Error('rolled back');
        }),
        /rolled back/,
      );
      // Through a use case: a second workspace of the same name fails at its insert, with its event.
      const name = uniq('ws');
      assert.equal((await h.admin.client.post('/api/v1/workspaces', { name })).status, 201);
      assert.equal((await h.admin.client.post('/api/v1/workspaces', { name })).status, 409);
      const rows = await db().outboxEvent.findMany({ where: { seq: { gt: BigInt(0) } }, orderBy: { seq: 'asc' } });
      assert.equal(rows.length, before + 1);
      assert.equal(rows.filter((r) => r.entity === 'workspace' && (r.payload as { name?: string }).name === name).length, 1);
    });

    it('publishes again what was published but not marked, and the stream keeps it once', async () => {
      await waitFor(async () => (await db().outboxEvent.count({ where: { publishedAt: null } })) === 0, 5000, 'everything published');
      const before = (await jsm.streams.info(EVENT_STREAM)).state.messages;
      // A relay that crashed between JetStream's acknowledgement and the mark.
      const n = await db().outboxEvent.updateMany({ data: { publishedAt: null } });
      assert.ok(n.count > 0);
      h.orch.relay.kick();
      await waitFor(async () => (await db().outboxEvent.count({ where: { publishedAt: null } })) === 0, 5000, 'published again');
      assert.equal((await jsm.streams.info(EVENT_STREAM)).state.messages, before, 'duplicates dropped by Nats-Msg-Id');
    });

    it('keeps serving requests while NATS is down, and publishes their events when it returns', async () => {
      await nats.stop();
      const name = uniq('ws');
      const t0 = Date.now();
      const r = await h.admin.client.post('/api/v1/workspaces', { name });
      assert.equal(r.status, 201);
      assert.ok(Date.now() - t0 < 2000, 'the request did not wait for NATS');
      const row = await db().outboxEvent.findFirstOrThrow({ where: { entity: 'workspace', entityId: r.body.id as string } });
      await new Promise((res) => setTimeout(res, 500));
      assert.equal((await db().outboxEvent.findUniqueOrThrow({ where: { seq: row.seq } })).publishedAt, null, 'not published while NATS is down');
      await nats.start();
      await waitFor(async () => (await db().outboxEvent.findUniqueOrThrow({ where: { seq: row.seq } })).publishedAt !== null, 15_000, 'published after NATS returned');
      await waitFor(async () => (await streamEvents(jsm)).some((e) => e.seq === Number(row.seq)), 5000, 'in the stream');
      const events = await streamEvents(jsm);
      const seqs = events.map((e) => e.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    });

    it('keeps an open event stream going while NATS is down (the hub reads the outbox), and it resumes after', async () => {
      const name = uniq('ws');
      assert.equal((await h.admin.client.post('/api/v1/workspaces', { name })).status, 201);
      const got: KloudakEvent[] = [];
      const sock = new WebSocket(`${h.url.replace(/^http/, 'ws')}/api/v1/workspaces/${name}/events`, { headers: { authorization: `Bearer ${h.admin.token}` } });
      sock.on('message', (d: Buffer) => got.push(JSON.parse(d.toString('utf8')) as KloudakEvent));
      await new Promise((r) => sock.once('open', r));
      await nats.stop();
      try {
        assert.equal((await h.admin.client.patch(`/api/v1/workspaces/${name}`, { description: 'while down' })).status, 200);
        await waitFor(async () => got.some((e) => e.event === 'updated'), 5000, 'the change, through the poll');
      } finally {
        await nats.start();
      }
      assert.equal((await h.admin.client.patch(`/api/v1/workspaces/${name}`, { description: 'after' })).status, 200);
      await waitFor(async () => got.filter((e) => e.event === 'updated').length === 2, 15_000, 'the change after NATS returned');
      const seqs = got.map((e) => e.seq);
      assert.deepEqual(seqs, [...new Set(seqs)].sort((x, y) => x - y), 'in order, once each');
      sock.close();
    });

    it('prunes published rows older than the retention', async () => {
      const old = new Date(Date.now() - 2 * 86400 * 1000);
      await transaction(db(), (tx) => appendEvents(tx, [{ workspaceId: null, entity: 'area', entityId: 'old', event: 'created' }]));
      await db().outboxEvent.updateMany({ where: { entityId: 'old' }, data: { time: old } });
      await waitFor(async () => (await db().outboxEvent.count({ where: { entityId: 'old', publishedAt: null } })) === 0, 5000, 'published');
      const fresh = await db().outboxEvent.count({ where: { entityId: { not: 'old' } } });
      assert.ok((await h.orch.relay.prune()) >= 1);
      assert.equal(await db().outboxEvent.count({ where: { entityId: 'old' } }), 0);
      assert.equal(await db().outboxEvent.count({ where: { entityId: { not: 'old' } } }), fresh, 'rows within the retention stay');
    });

    it('never carries a password, key, token or user-data', async () => {
      const u = await h.user('secrets');
      const ws = uniq('ws');
      assert.equal((await u.client.post('/api/v1/workspaces', { name: ws })).status, 201);
      const other = await h.user('other');
      assert.equal((await u.client.post(`/api/v1/workspaces/${ws}/members`, { username: other.username })).status, 201);
      assert.equal((await u.client.req('POST', '/api/v1/auth/password', { currentPassword: PASSWORD, newPassword: 'An0ther-Str0ng-Passphrase' })).status, 204);
      const area = await h.admin.client.post('/api/v1/areas', { name: uniq('area'), subnet: '10.250.0.0/24', gateway: '10.250.0.1', vlanRange: '100-199' });
      assert.equal(area.status, 201);
      const jt = await h.admin.client.post('/api/v1/hosts/join-tokens', { area: area.body.name, expiresIn: 600 });
      assert.equal(jt.status, 201);
      await h.admin.client.post('/api/v1/auth/logout');
      const secrets = [PASSWORD, 'An0ther-Str0ng-Passphrase', u.token, other.token, h.admin.token, jt.body.token as string, (jt.body.token as string).split('.')[2]!];
      const rows = await db().outboxEvent.findMany();
      assert.ok(rows.some((r) => r.entity === 'join-token') && rows.some((r) => r.entity === 'user' && r.event === 'revoked'));
      for (const r of rows) {
        const text = JSON.stringify(toEvent(r));
        for (const s of secrets) assert.ok(!text.includes(s), `event ${r.subject} carries a secret`);
        assert.equal(secretKeyIn(r.payload), null, `event ${r.subject} has a secret-named field`);
      }
      // And a change that tries to record one fails as a whole.
      await assert.rejects(
        transaction(db(), (tx) => appendEvents(tx, [{ workspaceId: null, entity: 'vm', entityId: 'v', event: 'created', data: { spec: { userData: '#cloud-config' } } }])),
        /secret-named field \(\/spec\/userData\)/,
      );
    });
  });
}
