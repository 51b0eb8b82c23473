// Baseline for list.bench: the least an HTTP server can do to answer "the first 1,000 templates
// as JSON" from the same database — node:http, one raw SQL query through the bare driver (`pg`
// pool or PGlite), the same row → JSON mapping as the API, JSON.stringify. No router, no auth, no
// validation, no ORM, no logging, no metrics. Runs as its own process, like the orchestrator, so
// both are loaded the same way by the same load generator.
//
// Environment (set by list.bench.js):
//   BASELINE_PORT        port on 127.0.0.1
//   DATABASE_URL         PostgreSQL database to read; when empty, BASELINE_PGLITE_DIR is opened
//   BASELINE_PGLITE_DIR  PGlite data directory (the one the orchestrator used, after it stopped)
//   BASELINE_POOL_SIZE   pg pool size (default 10, the orchestrator's)
//
// GET /templates?limit=N → {"items":[…],"nextCursor":…}; GET /readyz → 200 once the database is open.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

/** `timestamp(3)` (without time zone) holds UTC, as Prisma writes it. */
const TIMESTAMP_OID = 1114;
const parseUtcTimestamp = (s: string): Date => new Date(`${s.replace(' ', 'T')}Z`);

const SQL =
  'SELECT id, name, os, description, cpu, "ramMb", "diskGb", image, "bootKernel", "bootInitrd", "bootCmdline", "createdAt" FROM "Template" ORDER BY name ASC LIMIT $1';

interface Row {
  id: string;
  name: string;
  os: string;
  description: string;
  cpu: number;
  ramMb: number;
  diskGb: number;
  image: string;
  bootKernel: string | null;
  bootInitrd: string | null;
  bootCmdline: string | null;
  createdAt: Date;
}

interface Source {
  rows(limit: number): Promise<Row[]>;
  close(): Promise<void>;
}

async function openSource(): Promise<Source> {
  const url = process.env['DATABASE_URL'] ?? '';
  if (url) {
    const pool = new pg.Pool({
      connectionString: url,
      max: Number(process.env['BASELINE_POOL_SIZE'] ?? 10),
      types: {
        getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
          oid === TIMESTAMP_OID ? parseUtcTimestamp : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
      },
    });
    pool.on('error', () => undefined);
    await pool.query('SELECT 1');
    return {
      rows: async (limit) => (await pool.query<Row>(SQL, [limit])).rows,
      close: () => pool.end(),
    };
  }
  const dir = process.env['BASELINE_PGLITE_DIR'];
  if (!dir) throw new Error('set DATABASE_URL or BASELINE_PGLITE_DIR');
  const lite = new PGlite(dir, { parsers: { [TIMESTAMP_OID]: parseUtcTimestamp } });
  await lite.waitReady;
  return {
    rows: async (limit) => (await lite.query<Row>(SQL, [limit])).rows,
    close: () => lite.close(),
  };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function main(): Promise<void> {
  const source = await openSource();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname === '/readyz') return send(res, 200, { status: 'ready' });
    if (u.pathname !== '/templates') return send(res, 404, { error: 'not found' });
    const limit = Math.min(Math.max(Number(u.searchParams.get('limit') ?? 100) || 100, 1), 1000);
    // Same shape as the API's page: fetch limit + 1 to know whether there is a next page.
    source.rows(limit + 1).then(
      (rows) => {
        const items = rows.slice(0, limit);
        const last = items[items.length - 1];
        send(res, 200, {
          items: items.map((t) => ({
            id: t.id,
            name: t.name,
            os: t.os,
            description: t.description,
            cpu: t.cpu,
            ramMb: t.ramMb,
            diskGb: t.diskGb,
            image: t.image,
            boot: t.bootKernel && t.bootInitrd ? { kernel: t.bootKernel, initrd: t.bootInitrd, cmdline: t.bootCmdline ?? '' } : null,
            createdAt: t.createdAt.toISOString(),
          })),
          nextCursor: rows.length > limit && last !== undefined ? last.name : null,
        });
      },
      (err: unknown) => send(res, 500, { error: String(err) }),
    );
  });
  server.keepAliveTimeout = 65_000; // as the orchestrator's server
  await new Promise<void>((resolve) => server.listen(Number(process.env['BASELINE_PORT'] ?? 0), '127.0.0.1', resolve));
  const stop = () => {
    server.closeAllConnections();
    server.close();
    source.close().finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err: unknown) => {
  console.error('list-baseline-server: fatal:', err);
  process.exit(1);
});
