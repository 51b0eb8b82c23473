// A PostgreSQL connection lost while the readiness check holds it (the server restarted, the
// network cut) fails that check, never the process. The check takes a connection of its own
// from the pool (pending(): two statements on one session); a client checked out of pg's pool has
// no listener of the pool's, and pg emits 'error' on an unexpected end even when a query was
// running: without a listener of ours that was an uncaught exception, which killed the
// orchestrator (and failed grpc/health.test as a whole file when its database stopped at that
// moment of a 100 ms health poll).
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { freshDatabase, waitFor, withPg, type FreshDatabase } from '@kloudak/testkit';
import pg from 'pg';
import { openDatabase, type Database } from '../src/index.js';

describe('a lost PostgreSQL connection', () => {
  const closers: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
  });

  it('fails the readiness check that held it, not the process, and the next check works', async () => {
    const fresh: FreshDatabase = await freshDatabase('kloudak_lostconn');
    closers.push(() => fresh.drop());
    // The orchestrator's connections go through a TCP relay, so that they can be cut as a network
    // would cut them: the socket ends in the middle of a statement, with no word from the server.
    const target = new URL(fresh.url);
    const pairs = new Set<[Socket, Socket]>();
    const relay: Server = createServer((down) => {
      const up = connect(Number(target.port || 5432), target.hostname);
      const pair: [Socket, Socket] = [down, up];
      pairs.add(pair);
      for (const s of pair) s.on('error', () => undefined).on('close', () => pairs.delete(pair));
      down.pipe(up).pipe(down);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    closers.push(async () => {
      for (const p of pairs) for (const s of p) s.destroy();
      await new Promise((r) => relay.close(r));
    });
    const relayed = new URL(fresh.url);
    relayed.hostname = '127.0.0.1';
    relayed.port = String((relay.address() as { port: number }).port);
    const db: Database = await openDatabase({ url: relayed.toString() });
    closers.push(() => db.close());
    await db.migrate();

    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    closers.push(async () => void process.off('uncaughtException', onUncaught));

    // The check's second statement reads the migrations table: held there by a lock (taken on a
    // direct connection), its connection is cut while the pool's client is checked out.
    const locker = new pg.Client({ connectionString: fresh.url });
    locker.on('error', () => undefined);
    await locker.connect();
    closers.push(() => locker.end());
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE "_prisma_migrations" IN ACCESS EXCLUSIVE MODE');
    const check = db.pending();
    const result = check.then(
      () => null,
      (err: unknown) => err,
    );
    await waitFor(
      async () => {
        const rows = await withPg(fresh.url, (c) =>
          c.query(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%_prisma_migrations%'`),
        );
        return rows.rows.length > 0;
      },
      10_000,
      'the check waiting on the lock',
    );
    for (const p of pairs) for (const s of p) s.destroy();
    const err = await result;
    assert.ok(err instanceof Error, 'the check fails');
    await new Promise((r) => setTimeout(r, 200)); // the connection's end event comes after the query's error
    assert.deepEqual(uncaught.map(String), [], 'no uncaught exception');

    await locker.query('ROLLBACK');
    assert.deepEqual(await db.pending(), [], 'the next check gets a working connection');
  });
});
