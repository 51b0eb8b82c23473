// Leadership and instance registrations on a real database (PostgreSQL and PGlite): one leader at
// a time, handover on release and on expiry, deposal on the leader's own clock.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createLogger } from '@kloudak/common';
import { openDatabase, type Database } from '@kloudak/prisma';
import { freshDatabase, waitFor, type FreshDatabase } from '@kloudak/testkit';
import { leaderOf } from '../store/instances.js';
import { InstanceRegistration } from './instance.js';
import { Leader } from './leader.js';

const log = createLogger({ component: 'test', level: 'silent' });

for (const engine of ['postgres', 'pglite'] as const) describe(`leadership on ${engine}`, () => {
  let fresh: FreshDatabase | undefined;
  let db: Database;
  before(async () => {
    if (engine === 'postgres') fresh = await freshDatabase();
    db = await openDatabase(fresh ? { url: fresh.url } : { inMemory: true });
    await db.migrate();
  });
  after(async () => {
    await db?.close();
    await fresh?.drop();
  });

  it('elects exactly one of three; a released leadership goes to another at its next attempt', async () => {
    const name = `t-${randomUUID()}`;
    const ls = [0, 1, 2].map(() => new Leader({ db: db.client, log }, randomUUID(), { ttlMs: 2000, name }));
    const events: string[] = [];
    ls.forEach((l, i) => {
      l.onElected((t) => events.push(`${i} elected ${t}`));
      l.onDeposed(() => events.push(`${i} deposed`));
    });
    for (const l of ls) await l.tryOnce();
    assert.deepEqual(ls.map((l) => l.isLeader()), [true, false, false]);
    assert.equal((await leaderOf(db.client, name))?.instanceId, ls[0]!.instanceId);
    for (const l of ls) await l.tryOnce();
    assert.deepEqual(ls.map((l) => l.isLeader()), [true, false, false], 'renewal keeps it');
    await ls[0]!.close();
    for (const l of ls.slice(1)) await l.tryOnce();
    assert.deepEqual(ls.map((l) => l.isLeader()), [false, true, false]);
    assert.deepEqual(events, ['0 elected 1', '0 deposed', '1 elected 2']);
    for (const l of ls) await l.close();
  });

  it('a leader that stops renewing (killed) is replaced only once its lease expired, and deposes itself by then', async () => {
    const name = `t-${randomUUID()}`;
    const ttl = 600;
    const dead = new Leader({ db: db.client, log }, randomUUID(), { ttlMs: ttl, name });
    const next = new Leader({ db: db.client, log }, randomUUID(), { ttlMs: ttl, name });
    const t0 = performance.now();
    await dead.tryOnce();
    assert.ok(dead.isLeader());
    let deposedAt = 0;
    dead.onDeposed(() => (deposedAt = performance.now()));
    // `dead` never renews again; `next` keeps trying.
    await waitFor(async () => {
      await next.tryOnce();
      return next.isLeader();
    }, 5000, 'the next leader');
    const took = performance.now() - t0;
    assert.ok(took >= ttl, `taken over after ${took} ms, before the ${ttl} ms lease ended`);
    assert.ok(deposedAt > 0 && deposedAt - t0 <= took, 'the old leader deposed itself before the next one was elected');
    assert.ok(!dead.isLeader());
    await dead.close();
    await next.close();
  });

  it('an instance registration is valid after start, renews, and expires its row on close', async () => {
    const r = new InstanceRegistration({ db: db.client, log }, { ttlMs: 5000, renewMs: 100 });
    await r.start();
    assert.ok(r.valid());
    const row = await db.client.orchestratorInstance.findUniqueOrThrow({ where: { id: r.id } });
    assert.equal(row.subject, `kloudak.internal.agent.${r.id}`);
    await waitFor(async () => (await db.client.orchestratorInstance.findUniqueOrThrow({ where: { id: r.id } })).expiresAt > row.expiresAt, 3000, 'a renewal');
    await r.close();
    assert.ok(!r.valid());
    const closed = await db.client.orchestratorInstance.findUniqueOrThrow({ where: { id: r.id } });
    assert.ok(closed.expiresAt.getTime() <= Date.now() + 1000);
  });

  it('a registration that cannot renew lapses at the end of its TTL, counted from the last renewal sent', async () => {
    let mono = 0;
    const clock = { now: () => Date.now(), monotonic: () => mono };
    const r = new InstanceRegistration({ db: db.client, log, clock }, { ttlMs: 10_000, renewMs: 3600_000 });
    await r.start();
    mono = 9999;
    assert.ok(r.valid());
    mono = 10_000;
    assert.ok(!r.valid(), 'no lease may be granted past the TTL');
    await r.renew();
    assert.ok(r.valid(), 'valid again after a renewal');
    await r.close();
  });
});
