// PostgreSQL connections and statements have timeouts: a slow statement is cancelled by the server,
// and a server that accepts connections but never answers (stopped, partitioned) fails the request
// in bounded time instead of holding it, and a pool connection, forever.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { freshDatabase, type FreshDatabase } from '@kloudak/testkit';
import { openDatabase, type Database } from '../src/index.js';

describe('PostgreSQL timeouts', () => {
  const closers: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
  });

  it('cancels a statement that runs past the statement timeout', async () => {
    const fresh: FreshDatabase = await freshDatabase('kloudak_timeouts');
    closers.push(() => fresh.drop());
    const db: Database = await openDatabase({ url: fresh.url, statementTimeoutMs: 300 });
    closers.push(() => db.close());
    const t0 = Date.now();
    await assert.rejects(db.client.$queryRaw`SELECT pg_sleep(5)`, /statement timeout|canceling statement/i);
    assert.ok(Date.now() - t0 < 3000, `cancelled after ${Date.now() - t0} ms`);
    // The connection is fine afterwards.
    assert.deepEqual(await db.client.$queryRaw`SELECT 1 AS one`, [{ one: 1 }]);
  });

  it('fails a request in bounded time when the server accepts but never answers', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    closers.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    });
    const port = (silent.address() as { port: number }).port;
    const db = await openDatabase({ url: `postgresql://kloudak@127.0.0.1:${port}/none`, connectTimeoutMs: 300, statementTimeoutMs: 300 });
    closers.push(() => db.close());
    const t0 = Date.now();
    await assert.rejects(db.client.$queryRaw`SELECT 1`);
    assert.ok(Date.now() - t0 < 3000, `failed after ${Date.now() - t0} ms`);
  });
});
