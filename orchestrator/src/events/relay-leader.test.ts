// Several orchestrators, one outbox: with two relays on one real PostgreSQL database and a real
// NATS server, only the holder of the relay lock publishes — every event once (a core NATS
// subscriber sees each publish, so even a copy the stream's dedupe would drop is caught), in
// sequence order — and when the holder closes, or its database session dies, the other takes over
// within a poll interval and goes on with no gap and no duplicate in the stream.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { createLogger } from '@kloudak/common';
import { openDatabase, SessionLock, type Database } from '@kloudak/prisma';
import { freshDatabase, waitFor, withPg, type FreshDatabase } from '@kloudak/testkit';
import { systemClock } from '../clock.js';
import { TestNatsServer } from '../testing/nats-server.js';
import { appendEventsNow } from '../store/outbox.js';
import { EVENT_STREAM, type KloudakEvent } from './event.js';
import { OutboxRelay, RELAY_LOCK } from './relay.js';

const POLL_MS = 100;

describe('one relay publishes among several', () => {
  let nats: TestNatsServer;
  let fresh: FreshDatabase;
  let db: Database;
  let watcher: NatsConnection;
  let jsm: JetStreamManager;
  /** Every publish seen on core NATS (JetStream's dedupe does not hide a second publish from it). */
  const published: number[] = [];
  const conns: NatsConnection[] = [];
  const relays: OutboxRelay[] = [];
  const log = createLogger({ component: 'relay-leader-test', level: 'silent' });

  const relay = async (): Promise<OutboxRelay> => {
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    conns.push(nc);
    const r = await OutboxRelay.start({ db: db.client, nc, log, clock: systemClock, leader: new SessionLock(fresh.url, RELAY_LOCK) }, { maxAgeMs: 3_600_000, pollMs: POLL_MS });
    relays.push(r);
    return r;
  };
  let n = 0;
  /** A change committed, and (as the NOTIFY would) every relay woken. */
  const change = async (): Promise<void> => {
    await appendEventsNow(db.client, [{ workspaceId: null, entity: 'area', entityId: `a${++n}`, event: 'updated' }]);
    for (const r of relays) r.kick();
  };
  const allPublished = () => waitFor(async () => (await db.client.outboxEvent.count({ where: { publishedAt: null } })) === 0, 10_000, 'every row published');
  const rowSeqs = async () => (await db.client.outboxEvent.findMany({ orderBy: { seq: 'asc' }, select: { seq: true } })).map((r) => Number(r.seq));
  const streamSeqs = async (): Promise<number[]> => {
    const info = await jsm.streams.info(EVENT_STREAM);
    const out: number[] = [];
    for (let s = info.state.first_seq; s <= info.state.last_seq && info.state.messages > 0; s++) {
      const m = await jsm.streams.getMessage(EVENT_STREAM, { seq: s });
      if (m) out.push(m.json<KloudakEvent>().seq);
    }
    return out;
  };

  before(async () => {
    nats = await TestNatsServer.start();
    fresh = await freshDatabase('kloudak_relay_leader');
    db = await openDatabase({ url: fresh.url });
    await db.migrate();
    watcher = await connect({ servers: nats.url });
    watcher.subscribe('kloudak.>', {
      callback: (_e, m) => {
        published.push(m.json<KloudakEvent>().seq);
      },
    });
    await watcher.flush();
    jsm = await jetstreamManager(watcher);
  });
  after(async () => {
    for (const r of relays) await r.close();
    for (const c of conns) await c.close();
    await watcher?.close();
    await db?.close();
    await fresh?.drop();
    await nats?.close();
  });

  it('publishes every event once, in order, from the lock holder only', async () => {
    const a = await relay();
    await waitFor(async () => a.publishing, 5000, 'the first relay to take the lock');
    const b = await relay();
    for (let i = 0; i < 40; i++) await change();
    await allPublished();
    await new Promise((r) => setTimeout(r, 3 * POLL_MS));
    assert.equal(a.publishing, true);
    assert.equal(b.publishing, false, 'the second relay stands by');
    const rows = await rowSeqs();
    await waitFor(async () => published.length >= rows.length, 5000, 'every publish seen');
    assert.deepEqual(published, rows, 'each row published once, in sequence order');
    assert.deepEqual(await streamSeqs(), rows);
  });

  it('goes on from the other relay when the holder closes, and when its session dies, with no gap and no duplicate', async () => {
    const [a, b] = relays as [OutboxRelay, OutboxRelay];
    // Changes keep coming during both handovers.
    let writing = true;
    const writer = (async () => {
      while (writing) {
        await change();
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await new Promise((r) => setTimeout(r, 200));
    const closedAt = Date.now();
    await a.close();
    await waitFor(async () => b.publishing, 5000, 'the standby to take over');
    const tookOver = Date.now() - closedAt;
    assert.ok(tookOver < 2000, `took over after ${tookOver} ms`);
    await new Promise((r) => setTimeout(r, 200));
    const beforeCrash = published.length;

    // A third orchestrator stands by; the holder's database session is killed (as when its
    // process dies or is cut off): PostgreSQL frees the lock and the standby takes it.
    const c = await relay();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(c.publishing, false);
    const killed = await withPg(fresh.url, async (pgc) =>
      (await pgc.query<{ n: string }>(`SELECT count(pg_terminate_backend(l.pid))::text AS n FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = $1`, [RELAY_LOCK.toString()])).rows[0]!.n,
    );
    assert.equal(killed, '1');
    await waitFor(async () => c.publishing || b.publishing, 5000, 'a relay holding the lock again');
    await new Promise((r) => setTimeout(r, 300));
    writing = false;
    await writer;
    for (const r of relays) r.kick();
    await allPublished();
    const rows = await rowSeqs();
    assert.ok(rows.length > 100, `${rows.length} events`);
    // JetStream: every row once, in order (a row published twice around the kill is dropped by the dedupe).
    await waitFor(async () => (await jsm.streams.info(EVENT_STREAM)).state.messages >= rows.length, 5000, 'the stream to hold every row');
    assert.deepEqual(await streamSeqs(), rows);
    // Across the clean handover (close), not even a second publish.
    const cleanPart = published.slice(0, beforeCrash);
    assert.equal(new Set(cleanPart).size, cleanPart.length, 'no row published twice across a clean handover');
    assert.deepEqual(cleanPart, [...cleanPart].sort((x, y) => x - y));
  });
});
